"""serving/proxy_gate.py without Ray: the gate around a stand-in for Serve's proxy app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support_assistant.serving import proxy_gate
from support_assistant.serving.proxy_gate import (
    MAX_IN_FLIGHT_ENV,
    RETRY_AFTER_ENV,
    ProxyGate,
    ProxyGateConfig,
)


class Refusals:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def inc(self, reason: str) -> None:
        self.reasons.append(reason)


def post(path: str = "/v1/answer") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


async def call(gate: ProxyGate, scope: dict[str, Any], incoming: list[dict[str, Any]] | None = None) -> list[dict]:
    sent: list[dict[str, Any]] = []
    pending = list(incoming or [{"type": "http.request", "body": b"{}", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    return sent


def answered(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


async def reply(send: Any, status: int, body: bytes, content_type: bytes, *extra: tuple[bytes, bytes]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), *extra]})
    await send({"type": "http.response.body", "body": body[:3], "more_body": True})
    await send({"type": "http.response.body", "body": body[3:], "more_body": False})


def gate_around(app: Any, limit: int | None = 2, retry_after_s: int = 3) -> tuple[ProxyGate, Refusals]:
    refusals = Refusals()
    return ProxyGate(app, ProxyGateConfig(max_in_flight=limit, retry_after_s=retry_after_s), refusals), refusals


def test_refuses_posts_over_the_limit_at_once_and_lets_probes_through() -> None:
    release = asyncio.Event()
    reached = 0

    async def slow_pipeline(scope: Any, receive: Any, send: Any) -> None:
        nonlocal reached
        reached += 1
        if scope["method"] == "POST":
            await receive()  # the whole body: the request keeps its place
            await release.wait()
        await reply(send, 200, b'{"answer": "ok"}', b"application/json")

    gate, refusals = gate_around(slow_pipeline, limit=2)

    async def scenario() -> None:
        held = [asyncio.create_task(call(gate, post())) for _ in range(2)]
        await asyncio.sleep(0)
        assert gate.in_flight == 2
        status, headers, body = answered(await call(gate, post()))
        assert status == 503 and headers[b"retry-after"] == b"3"
        assert headers[b"content-type"] == b"application/json"
        error = json.loads(body)["error"]
        assert error["code"] == "stage_unavailable" and error["stage"] == "ingress"
        assert "limit 2" in error["message"]
        # A probe is never refused, full or not.
        status, _, _ = answered(await call(gate, {"type": "http", "method": "GET", "path": "/readyz", "headers": []}))
        assert status == 200
        release.set()
        for task in held:
            assert answered(await task)[0] == 200
        assert gate.in_flight == 0
        assert answered(await call(gate, post()))[0] == 200  # room again

    asyncio.run(scenario())
    assert refusals.reasons == ["full"]
    assert reached == 4  # the refused request never reached the app


def test_a_slow_upload_stops_holding_a_place_and_counts_again_once_its_body_is_in() -> None:
    body_in, release = asyncio.Event(), asyncio.Event()

    async def pipeline(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await release.wait()
        await reply(send, 200, b'{"answer": "ok"}', b"application/json")

    refusals = Refusals()
    gate = ProxyGate(pipeline, ProxyGateConfig(max_in_flight=1, retry_after_s=1), refusals, fresh_reader_s=0.05)
    trickled: list[dict[str, Any]] = []

    async def trickle() -> dict[str, Any]:
        if not trickled:
            trickled.append({"type": "http.request", "body": b'{"question": ', "more_body": True})
            return trickled[-1]
        await body_in.wait()
        return {"type": "http.request", "body": b'"x"}', "more_body": False}

    async def nowhere(message: dict[str, Any]) -> None:
        pass

    async def scenario() -> None:
        slow = asyncio.create_task(gate(post(), trickle, nowhere))
        await asyncio.sleep(0.01)
        assert gate.in_flight == 1  # a fresh upload holds its place
        assert answered(await call(gate, post()))[0] == 503
        await asyncio.sleep(0.1)
        assert gate.in_flight == 0  # past fresh_reader_s: the slow upload no longer blocks others
        fast = asyncio.create_task(call(gate, post()))
        await asyncio.sleep(0.01)
        assert gate.in_flight == 1
        body_in.set()
        await asyncio.sleep(0.01)
        assert gate.in_flight == 2  # its body is in: it counts again (the ingress's own gate decides)
        release.set()
        await slow
        assert answered(await fast)[0] == 200
        assert gate.in_flight == 0

    asyncio.run(scenario())
    assert refusals.reasons == ["full"]


def test_the_place_is_free_once_the_answer_is_out_though_the_proxy_has_not_returned() -> None:
    # Serve's proxy still waits on the replica's call after sending the last byte; a client that
    # sends its next request on that answer must be let in (a closed loop of max_in_flight clients).
    answer_out, proxy_done = asyncio.Event(), asyncio.Event()

    async def lingering_proxy(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await reply(send, 200, b'{"answer": "ok"}', b"application/json")
        answer_out.set()
        await proxy_done.wait()

    gate, refusals = gate_around(lingering_proxy, limit=1)

    async def scenario() -> None:
        first = asyncio.create_task(call(gate, post()))
        await answer_out.wait()
        assert gate.in_flight == 0
        answer_out.clear()
        second = asyncio.create_task(call(gate, post()))
        await answer_out.wait()  # forwarded, not refused
        proxy_done.set()
        assert [answered(await t)[0] for t in (first, second)] == [200, 200]
        assert gate.in_flight == 0

    asyncio.run(scenario())
    assert refusals.reasons == []


def test_a_place_freed_by_the_answer_is_not_taken_again_by_a_late_end_of_body() -> None:
    in_flight_seen: list[int] = []

    async def answers_before_reading(scope: Any, receive: Any, send: Any) -> None:
        await reply(send, 413, b'{"error": {}}', b"application/json")  # e.g. refused on its length
        in_flight_seen.append(gate.in_flight)
        await receive()  # the end of the body comes after the answer
        in_flight_seen.append(gate.in_flight)

    gate, _ = gate_around(answers_before_reading, limit=1)
    assert answered(asyncio.run(call(gate, post())))[0] == 413
    assert in_flight_seen == [0, 0]
    assert gate.in_flight == 0


def test_serves_plain_text_500_becomes_a_retryable_json_503_keeping_the_request_id() -> None:
    async def dead_ingress(scope: Any, receive: Any, send: Any) -> None:
        await reply(send, 500, b"Internal Server Error", b"text/plain; charset=utf-8", (b"x-request-id", b"abc"))

    gate, refusals = gate_around(dead_ingress)
    sent = asyncio.run(call(gate, post()))
    status, headers, body = answered(sent)
    assert status == 503 and headers[b"retry-after"] == b"3" and headers[b"x-request-id"] == b"abc"
    assert json.loads(body)["error"]["stage"] == "ingress"
    assert b"Internal Server Error" not in body
    assert sum(m["type"] == "http.response.start" for m in sent) == 1
    assert refusals.reasons == ["ingress_unavailable"]
    assert gate.in_flight == 0


@pytest.mark.parametrize("status", [200, 400, 500, 503])
def test_the_apps_own_json_answers_pass_untouched(status: int) -> None:
    body = json.dumps({"error": {"code": "internal", "request_id": "r1"}}).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await reply(send, status, body, b"application/json")

    gate, refusals = gate_around(app)
    assert answered(asyncio.run(call(gate, post()))) == (status, {b"content-type": b"application/json"}, body)
    assert refusals.reasons == []


def test_a_proxy_that_returns_without_answering_gets_a_json_503_unless_the_client_left() -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect" and scope.get("wait_for_disconnect"):
            pass

    gate, refusals = gate_around(silent)
    status, _, body = answered(asyncio.run(call(gate, post())))
    assert status == 503 and json.loads(body)["error"]["code"] == "stage_unavailable"
    # The client went away: nothing to answer and nothing to count.
    left = asyncio.run(call(gate, {**post(), "wait_for_disconnect": True}, [{"type": "http.disconnect"}]))
    assert left == []
    assert refusals.reasons == ["ingress_unavailable"]


def test_an_exception_before_the_answer_is_a_json_503_and_after_it_propagates() -> None:
    async def raises_early(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("replica died")

    async def raises_late(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    gate, _ = gate_around(raises_early)
    assert answered(asyncio.run(call(gate, post())))[0] == 503
    gate, _ = gate_around(raises_late)
    with pytest.raises(RuntimeError, match="stream broke"):
        asyncio.run(call(gate, post()))
    assert gate.in_flight == 0


def test_config_from_the_environment() -> None:
    assert ProxyGateConfig.from_env({}) == ProxyGateConfig(max_in_flight=None, retry_after_s=1)
    assert ProxyGateConfig.from_env({MAX_IN_FLIGHT_ENV: "32", RETRY_AFTER_ENV: "2"}) == ProxyGateConfig(32, 2)
    for name, bad in ((MAX_IN_FLIGHT_ENV, "0"), (MAX_IN_FLIGHT_ENV, "many"), (RETRY_AFTER_ENV, "-1")):
        with pytest.raises(ValueError, match=name):
            ProxyGateConfig.from_env({name: bad})


def test_middlewares_is_what_serves_proxy_callback_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    monkeypatch.setenv(MAX_IN_FLIGHT_ENV, "7")
    (middleware,) = validate_http_proxy_callback_return(proxy_gate.middlewares())
    assert middleware.cls is ProxyGate
    assert middleware.kwargs["config"] == ProxyGateConfig(max_in_flight=7, retry_after_s=1)
