"""A small closed-loop HTTP/1.1 load generator: N clients, each with one keep-alive connection to a
127.0.0.1 server the bench started, sending the next request when the previous answer arrives.

asyncio on raw streams rather than a thread per client: on a 2-core machine the client shares the
CPUs with the server under test, and a thread pool of urllib clients would cost the server more
CPU than the requests themselves. Bounded in time (warm-up + measured seconds) and per request
(timeout); it stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from common import latency_summary, percentile

LOCALHOST = "127.0.0.1"


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    # The response's own timings_ms per stage (measured inside the ingress / pipeline.answer), so
    # the table can say where the time goes: stage work, hops, or the HTTP front.
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    # Tokens each answer's language model generated (the response's generation.tokens; 0 when extractive).
    tokens: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = self.statuses.get("200", 0)
        errors = sum(n for s, n in self.statuses.items() if s != "200")
        return {
            "concurrency": self.concurrency,
            "requests_per_s": round(ok / self.seconds, 2) if self.seconds else 0.0,
            **latency_summary(self.latencies_ms),
            "ok": ok,
            "errors": errors,
            "statuses": dict(self.statuses),
            "stage_p50_ms": {stage: round(percentile(v, 50), 2) for stage, v in self.stage_ms.items()},
            "mean_tokens": round(sum(self.tokens) / len(self.tokens), 1) if self.tokens else 0.0,
        }


class _Connection:
    def __init__(self, port: int, timeout_s: float) -> None:
        self.port, self.timeout_s = port, timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._post(path, body), self.timeout_s)

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(LOCALHOST, self.port)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {LOCALHOST}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                parts.append((await self.reader.readexactly(size + 2))[:size])
                if size == 0:
                    break
            payload = b"".join(parts)
        else:
            payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload


async def _client(port: int, bodies: list[bytes], offset: int, warm_until: float, stop_at: float,
                  result: LevelResult, timeout_s: float) -> None:
    connection = _Connection(port, timeout_s)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            payload = b""
            try:
                code, payload = await connection.post("/v1/answer", body)
                status = str(code)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__
                await connection.close()
            t1 = time.perf_counter()
            if t0 >= warm_until and t1 <= stop_at:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == "200":
                    result.latencies_ms.append((t1 - t0) * 1000)
                    answered = json.loads(payload)
                    for stage, ms in answered.get("timings_ms", {}).items():
                        result.stage_ms.setdefault(stage, []).append(float(ms))
                    result.tokens.append(int(answered.get("generation", {}).get("tokens", 0)))
    finally:
        await connection.close()


async def run_level(port: int, questions: list[str], concurrency: int, warmup_s: float, seconds: float,
                    timeout_s: float = 60.0, top_k: int = 3) -> LevelResult:
    """`concurrency` clients for warmup_s + seconds; only requests that start after the warm-up and
    finish inside the window are counted."""
    bodies = [json.dumps({"question": q, "top_k": top_k}).encode() for q in questions]
    now = time.perf_counter()
    result = LevelResult(concurrency=concurrency, seconds=seconds)
    await asyncio.gather(*(_client(port, bodies, c * 7, now + warmup_s, now + warmup_s + seconds, result, timeout_s)
                           for c in range(concurrency)))
    return result


def sweep(port: int, questions: list[str], levels: list[int], warmup_s: float, seconds: float) -> list[dict[str, Any]]:
    return [asyncio.run(run_level(port, questions, c, warmup_s, seconds)).summary() for c in levels]
