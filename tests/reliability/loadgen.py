"""A bounded closed-loop HTTP load generator for the local server (127.0.0.1 only).

`concurrency` clients each send one request at a time until `total` have been sent. A client that
gets a 503/429 waits what its Retry-After says, plus a random jitter of up to as long again,
before its next request, as a well-behaved client does: one that ignored Retry-After would only
turn the server's CPU into more refusals, and clients refused together that retry after exactly
the same delay come back together, as a burst. Every
request ends as exactly one outcome: an HTTP status, a connection error or a client timeout, so
nothing can go missing from the counts. Used by the load tests and by full_size.py; it measures
and reports, the tests decide what passes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from repoctl.local_run import LOAD_QUESTIONS

LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer (see error)
    seconds: float
    retry_after: str | None = None
    code: str | None = None  # error.code of a JSON error body
    stage: str | None = None
    error: str | None = None  # connection_error | client_timeout | not_json
    sent_at: float = 0.0  # seconds from the start of the run to sending the request


@dataclass
class Report:
    concurrency: int
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def statuses(self) -> Counter:
        return Counter(o.status if o.status is not None else o.error for o in self.outcomes)

    def latencies(self, status: int) -> list[float]:
        return sorted(o.seconds for o in self.outcomes if o.status == status)

    @property
    def goodput(self) -> float:
        """200s per second of wall time."""
        return sum(o.status == 200 for o in self.outcomes) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        lines = [f"{len(self.outcomes)} requests at concurrency {self.concurrency} in {self.seconds:.1f}s: "
                 f"{dict(sorted(self.statuses().items(), key=str))}; goodput {self.goodput:.2f} answers/s"]
        for status in sorted({o.status for o in self.outcomes if o.status is not None}):
            lat = self.latencies(status)
            lines.append(f"  {status}: n={len(lat)} p50={percentile(lat, 50) * 1000:.0f}ms "
                         f"p90={percentile(lat, 90) * 1000:.0f}ms p99={percentile(lat, 99) * 1000:.0f}ms "
                         f"max={lat[-1] * 1000:.0f}ms")
        refused = [o for o in self.outcomes if o.status in (429, 503)]
        if refused:
            lines.append(f"  refusals by stage: {dict(Counter(o.stage or o.code or 'proxy' for o in refused))}; "
                         f"without Retry-After: {sum(o.retry_after is None for o in refused)}")
        return "\n".join(lines)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"{url}: load is only ever sent to a server on this machine's loopback")


async def _one(session: aiohttp.ClientSession, url: str, question: str, timeout_s: float) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.post(url, json={"question": question}, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            raw = await r.read()
            outcome = Outcome(r.status, time.perf_counter() - started, r.headers.get("Retry-After"))
    except TimeoutError:
        return Outcome(None, time.perf_counter() - started, error="client_timeout")
    except aiohttp.ClientError as exc:
        return Outcome(None, time.perf_counter() - started, error=f"connection_error: {type(exc).__name__}")
    if outcome.status != 200:
        try:
            error = json.loads(raw)["error"]
            outcome.code, outcome.stage = error.get("code"), error.get("stage")
        except (ValueError, KeyError, TypeError):
            outcome.code = "not_json"  # Serve's proxy refuses in plain text
    return outcome


async def run_load(base_url: str, total: int, concurrency: int, *, timeout_s: float = 90.0,
                   questions: Sequence[str] = LOAD_QUESTIONS, max_wait_s: float = 5.0, seed: int = 11) -> Report:
    """Send `total` POST /v1/answer requests from `concurrency` closed-loop clients."""
    require_loopback(base_url)
    url = f"{base_url}/v1/answer"
    report = Report(concurrency)
    tickets = iter(range(total))
    picks = itertools.cycle(questions)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    jitter = random.Random(seed)
    started = time.perf_counter()

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in tickets:
            sent_at = time.perf_counter() - started
            outcome = await _one(session, url, next(picks), timeout_s)
            outcome.sent_at = sent_at
            report.outcomes.append(outcome)
            if outcome.status in (429, 503):
                try:
                    wait = float(outcome.retry_after or 1)
                except ValueError:
                    wait = 1.0
                wait = min(wait, max_wait_s)
                await asyncio.sleep(wait + jitter.uniform(0, wait))

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    report.seconds = time.perf_counter() - started
    return report
