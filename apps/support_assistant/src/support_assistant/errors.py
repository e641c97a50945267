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
    """A pipeline stage failed or overran its budget. Maps to HTTP 5xx naming the stage."""

    def __init__(self, stage: str, reason: str, message: str, status: int = 502) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.reason = reason  # timeout | model_error | internal (the stage_errors metric's reason tag)
        self.message = message
        self.status = status
