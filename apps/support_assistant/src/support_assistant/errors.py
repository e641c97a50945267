"""Errors that cross stage boundaries. Each names the stage (or field) so a caller can answer
with the right HTTP status and a message an operator can act on."""

from __future__ import annotations


class InvalidInput(ValueError):
    """The request is wrong; the client can fix it. Maps to HTTP 4xx."""

    def __init__(self, field: str, message: str, status: int = 400, code: str = "invalid_input") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status
        self.code = code


class StageError(RuntimeError):
    """A pipeline stage failed, overran its budget or could not take the request. Maps to HTTP 5xx
    naming the stage; `retry_after_s` is set when the client should retry (503 + Retry-After)."""

    def __init__(self, stage: str, reason: str, message: str, status: int = 502,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        # timeout | unavailable | model_error | internal (the stage_errors metric's reason tag)
        self.reason = reason
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s


class StageUnavailable(RuntimeError):
    """The stage could not take the request now (its queue is full, its replica died or none is
    running); retrying later can succeed. The serving layer raises it from what Ray raised, so
    the pipeline needs no Ray types; `retry_after_s` is the stage's own hint when it has one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BudgetExpired(RuntimeError):
    """A replica got a request after the caller's budget for it had run out; it is dropped before
    it takes a place in a batch, since nobody would receive the answer."""
