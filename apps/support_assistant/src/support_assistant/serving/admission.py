"""Admission control at the ingress: refuse at the door what the pipeline cannot answer soon.

Serve's own limits stay in place (each deployment's max_ongoing_requests and max_queued_requests,
whose refusals the ingress answers as 503 `stage_unavailable` naming the stage), but they act
where a request is already inside the pipeline: a request refused by the Generator's queue has
already cost a retriever and a reranker call, and on a small machine those wasted calls
eat the capacity the admitted requests need. This gate refuses before any stage runs, as cheaply
as the ingress can answer, with a JSON 503 that names the stage most requests are waiting on and
a Retry-After. Its limit (Ingress user_config max_in_flight) is Little's law: measured throughput
times the latency the pipeline should keep under overload (docs/reliability.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from support_assistant.errors import StageError


class Admission:
    """Requests inside this ingress replica's pipeline, in total and per stage."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting_on: Counter[str] = Counter()

    def refuse_if_full(self, limit: int, retry_after_s: float) -> None:
        """Raises StageError 503 naming the busiest stage when no place is free now; holds nothing.

        The ingress asks this before it reads the body: under overload most requests are refused,
        and on Serve reading a body costs a call back to the proxy that sent it, so a refusal that
        skips it is answered several times faster. A request let through still reads and parses its
        body before admit() holds a place, so a slow upload never keeps a place in the pipeline."""
        if self.in_flight < limit:
            return
        stage, waiting = max(self.waiting_on.items(), key=lambda item: item[1], default=("ingress", 0))
        if waiting <= 0:
            stage = "ingress"
        raise StageError(stage, "unavailable",
                         f"the pipeline is full ({self.in_flight} requests in flight, the limit is {limit}; "
                         f"{waiting} waiting on the {stage}); retry after {retry_after_s:g}s",
                         status=503, retry_after_s=retry_after_s)

    @contextmanager
    def admit(self, limit: int, retry_after_s: float) -> Iterator[Counter[str]]:
        """Holds a place for one request, or raises StageError 503 naming the busiest stage."""
        self.refuse_if_full(limit, retry_after_s)
        self.in_flight += 1
        try:
            yield self.waiting_on
        finally:
            self.in_flight -= 1
