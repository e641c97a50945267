"""Bounded closed-loop load on the simulated cluster's Serve proxy (127.0.0.1 only).

A Load runs `clients` threads in the background, each sending POST /v1/answer one at a time until
stop() or its deadline; `set_clients` changes how many send (a ramp). Every request ends as exactly
one Outcome (an HTTP status, a connection error or a client timeout), so nothing can go missing
from the counts. A client refused with 503/429 waits its Retry-After (capped) before it sends
again, as a well-behaved client does. It measures; the scenarios decide what passes.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from repoctl.local_run import LOAD_QUESTIONS

RETRYABLE = (429, 503)


@dataclass
class Outcome:
    sent: float  # seconds since the simulation's clock started
    seconds: float
    status: int | None  # None: no HTTP answer (see error)
    code: str | None = None  # error.code of a JSON error body
    stage: str | None = None
    retry_after: str | None = None
    error: str | None = None  # connection_error: <type> | client_timeout | not_json

    @property
    def retryable(self) -> bool:
        """A JSON 503/429 naming the stage with Retry-After: what a client is told to retry."""
        return (self.status in RETRYABLE and self.code == "stage_unavailable" and bool(self.stage)
                and self.retry_after is not None)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


class Load:
    def __init__(self, port: int, clock_zero: float, max_clients: int, deadline_s: float,
                 timeout_s: float = 60.0, max_wait_s: float = 2.0) -> None:
        self.port, self.zero, self.timeout_s, self.max_wait_s = port, clock_zero, timeout_s, max_wait_s
        self.max_clients = max_clients
        self.deadline = time.monotonic() + deadline_s  # the load stops by itself, whatever happens
        self.outcomes: list[Outcome] = []
        self._active = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._questions = itertools.cycle(LOAD_QUESTIONS)
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(max_clients)]
        for thread in self._threads:
            thread.start()

    def set_clients(self, n: int) -> None:
        self._active = max(0, min(n, self.max_clients))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)

    def now(self) -> float:
        return time.monotonic() - self.zero

    def _client(self, index: int) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            if index >= self._active:
                time.sleep(0.1)
                continue
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            with self._lock:
                question = next(self._questions)
            outcome = self._one(connection, question)
            if outcome.status is None:
                connection.close()
                connection = None
            with self._lock:
                self.outcomes.append(outcome)
            if outcome.status in RETRYABLE:
                try:
                    wait = float(outcome.retry_after or 1)
                except ValueError:
                    wait = 1.0
                self._stop.wait(min(wait, self.max_wait_s))
            elif outcome.status is None:
                self._stop.wait(0.2)
        if connection is not None:
            connection.close()

    def _one(self, connection: http.client.HTTPConnection, question: str) -> Outcome:
        sent = self.now()
        started = time.perf_counter()
        body = json.dumps({"question": question, "top_k": 3})
        try:
            connection.request("POST", "/v1/answer", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            raw = response.read()
        except TimeoutError:
            return Outcome(sent, time.perf_counter() - started, None, error="client_timeout")
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(sent, time.perf_counter() - started, None, error=f"connection_error: {type(exc).__name__}")
        outcome = Outcome(sent, time.perf_counter() - started, response.status,
                          retry_after=response.getheader("Retry-After"))
        if response.status != 200:
            try:
                error = json.loads(raw)["error"]
                outcome.code, outcome.stage = error.get("code"), error.get("stage")
            except (ValueError, KeyError, TypeError):
                outcome.error = "not_json"
        return outcome

    def between(self, start: float, end: float) -> list[Outcome]:
        """The requests sent in [start, end)."""
        with self._lock:
            return [o for o in self.outcomes if start <= o.sent < end]

    def ended_between(self, start: float, end: float) -> list[Outcome]:
        """The requests whose answer (or failure) came in [start, end)."""
        with self._lock:
            return [o for o in self.outcomes if start <= o.sent + o.seconds < end]


def summarize(outcomes: Sequence[Outcome], seconds: float) -> dict:
    """Counts, answers/s and latency of a window of outcomes."""
    ok = [o.seconds for o in outcomes if o.status == 200]
    statuses = Counter(str(o.status) if o.status is not None else o.error for o in outcomes)
    unretryable = [o for o in outcomes if o.status != 200 and not o.retryable]
    return {
        "requests": len(outcomes), "answered": len(ok),
        "answers_per_s": round(len(ok) / seconds, 2) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(ok, 50) * 1000, 1), "p99_ms": round(percentile(ok, 99) * 1000, 1),
        "statuses": dict(sorted(statuses.items())),
        "retryable_503_by_stage": dict(Counter(o.stage for o in outcomes if o.retryable)),
        "not_retryable": len(unretryable),
        "not_retryable_examples": [o.as_dict() for o in unretryable[:5]],
    }
