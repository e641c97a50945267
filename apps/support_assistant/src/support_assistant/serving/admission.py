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

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from support_assistant.errors import StageError

# How long a request that is reading its body counts against the limit in refuse_if_full. A body
# that arrived whole is read in one call back to the proxy (milliseconds, ~0.1 s when a burst
# queues them); a slow upload stops counting after this, so it never keeps the gate shut for others.
FRESH_READER_S = 1.0


class Admission:
    """Requests inside this ingress replica's pipeline, in total and per stage, and those reading
    their body on the way in."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.in_flight = 0
        self.waiting_on: Counter[str] = Counter()
        self._readers: dict[int, float] = {}  # id -> when it started reading its body
        self._next_reader = 0
        self._clock = clock

    def fresh_readers(self) -> int:
        since = self._clock() - FRESH_READER_S
        return sum(started > since for started in self._readers.values())

    def refuse_if_full(self, limit: int, retry_after_s: float, *, count_readers: bool = False) -> None:
        """Raises StageError 503 naming the busiest stage when no place is free now; holds nothing.

        With `count_readers` (the check before the body is read) the requests that have just started
        reading their body count too: under overload most requests are refused, and on Serve reading
        a body waits for a call back to the proxy that sent it, so when a burst arrives at once the
        requests beyond the limit are refused before any of them reads its body, not after all of
        them have. A request let through still reads and parses its body before admit() holds a
        place, so a slow upload never keeps a place in the pipeline."""
        taken = self.in_flight + (self.fresh_readers() if count_readers else 0)
        if taken < limit:
            return
        stage, waiting = max(self.waiting_on.items(), key=lambda item: item[1], default=("ingress", 0))
        if waiting <= 0:
            stage = "ingress"
        raise StageError(stage, "unavailable",
                         f"the pipeline is full ({self.in_flight} requests in flight, the limit is {limit}; "
                         f"{waiting} waiting on the {stage}); retry after {retry_after_s:g}s",
                         status=503, retry_after_s=retry_after_s)

    @contextmanager
    def reading(self, limit: int, retry_after_s: float) -> Iterator[None]:
        """Refuses at once when the pipeline and the fresh readers fill `limit`, else counts this
        request as a reader while its body is read."""
        self.refuse_if_full(limit, retry_after_s, count_readers=True)
        reader, self._next_reader = self._next_reader, self._next_reader + 1
        self._readers[reader] = self._clock()
        try:
            yield
        finally:
            del self._readers[reader]

    @contextmanager
    def admit(self, limit: int, retry_after_s: float) -> Iterator[Counter[str]]:
        """Holds a place for one request, or raises StageError 503 naming the busiest stage."""
        self.refuse_if_full(limit, retry_after_s)
        self.in_flight += 1
        try:
            yield self.waiting_on
        finally:
            self.in_flight -= 1
