"""A gate in Serve's HTTP proxy, in front of the ingress replica, installed through Serve's proxy
callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=support_assistant.serving.proxy_gate:middlewares,
set on every Ray container of the RayService).

It does two things the ingress replica cannot do for itself:

- **Refuses before forwarding.** A proxy forwards at most SUPPORT_ASSISTANT_PROXY_MAX_IN_FLIGHT
  POST requests at once and answers the rest at once with the pipeline's JSON 503 `stage_unavailable`
  and Retry-After. A refusal by the ingress replica still costs the proxy an actor call and the
  replica a call back to the proxy for the body (Serve 2.60); one here costs neither, so a burst of
  refusals no longer queues behind the requests that were let in (docs/reliability.md).
- **Answers for a dead ingress.** When the ingress replica dies holding a request, or none is
  running, Serve's proxy answers with its own plain-text 500 or 503. Those become the same JSON 503
  `stage_unavailable` naming the ingress, with Retry-After, which a client retries. The app's own
  errors are JSON and pass untouched.

GET requests (probes, /readyz, Serve's /-/ routes) always pass. A request still uploading its body
stops holding a place after FRESH_READER_S, as at the ingress, so slow uploads can never keep the
gate shut for the others; it counts again once its body is in. The ingress keeps its own gate
(serving/admission.py): it is the limit per ingress replica and names the stage that is full; this
one is a limit per proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware

from support_assistant.api import error_body
from support_assistant.config import APP_NAME
from support_assistant.errors import StageError
from support_assistant.serving.admission import FRESH_READER_S

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_IN_FLIGHT_ENV = "SUPPORT_ASSISTANT_PROXY_MAX_IN_FLIGHT"
RETRY_AFTER_ENV = "SUPPORT_ASSISTANT_PROXY_RETRY_AFTER_S"
STAGE = "ingress"
# Serve's own last-resort answers (ray/serve/_private/http_util.py get_http_response_status): 500 when
# the ingress replica died or raised past the app, 503 when no replica is running. The app's answers
# are all JSON, so a plain-text one with these statuses is Serve's.
SERVE_FAILURE_STATUSES = (500, 503)

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ProxyGateConfig:
    max_in_flight: int | None  # None: forward everything (only the dead-ingress answers apply)
    retry_after_s: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProxyGateConfig:
        env = os.environ if env is None else env
        raw_limit = env.get(MAX_IN_FLIGHT_ENV, "").strip()
        return cls(max_in_flight=_positive_int(MAX_IN_FLIGHT_ENV, raw_limit) if raw_limit else None,
                   retry_after_s=_positive_int(RETRY_AFTER_ENV, env.get(RETRY_AFTER_ENV, "1").strip()))


def _positive_int(name: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive whole number, got {raw!r}")
    return int(raw)


class ProxyRefusals:
    """ray_support_assistant_proxy_refusals_total{application, reason}: the requests this gate
    answered instead of the ingress (reason "full" or "ingress_unavailable"). Created on first use:
    Ray metrics must be made inside a Ray worker, and the unit tests run without one."""

    def __init__(self) -> None:
        self._counter: Any = None

    def inc(self, reason: str) -> None:
        if self._counter is None:
            from ray.util import metrics

            self._counter = metrics.Counter(
                "support_assistant_proxy_refusals",
                description="Answer requests that Serve's proxy refused (reason full) or answered for a "
                            "failed ingress (reason ingress_unavailable) with a JSON 503.",
                tag_keys=("application", "reason"),
            )
        self._counter.inc(tags={"application": APP_NAME, "reason": reason})


class ProxyGate:
    def __init__(self, app: ASGIApp, config: ProxyGateConfig | None = None,
                 refusals: ProxyRefusals | None = None, fresh_reader_s: float = FRESH_READER_S) -> None:
        self.app = app
        self.config = ProxyGateConfig.from_env() if config is None else config
        self.refusals = ProxyRefusals() if refusals is None else refusals
        self.fresh_reader_s = fresh_reader_s
        self.in_flight = 0  # forwarded requests holding a place

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.config.max_in_flight
        if limit is not None and self.in_flight >= limit:
            self.refusals.inc("full")
            await self._send_unavailable(send, f"the pipeline is full: {self.in_flight} requests in flight "
                                               f"through this proxy (limit {limit})", [])
            return
        self.in_flight += 1
        answer = _ForwardedRequest(receive, send, on_body_complete=lambda: self._hold(answer),
                                   on_answered=lambda: self._release(answer))
        slow_upload = asyncio.get_running_loop().call_later(self.fresh_reader_s, self._release_slow, answer)
        try:
            await self.app(scope, answer.receive, answer.send)
        except Exception:
            if answer.started:
                raise
            logger.warning("proxy gate: the ingress failed before answering; a JSON 503 goes instead",
                           exc_info=True)
        finally:
            slow_upload.cancel()
            self._release(answer)
        # Serve's proxy returns without a word when the ingress replica died holding the request
        # (Ray 2.60 sends nothing for a RayActorError, and uvicorn then answers a plain 500), and also
        # when the client went away, which needs no answer.
        if answer.replaced_status is not None or not (answer.started or answer.client_gone):
            self.refusals.inc("ingress_unavailable")
            reason = (f"Serve answered {answer.replaced_status}" if answer.replaced_status is not None
                      else "no answer from it")
            await self._send_unavailable(send, f"the ingress replica failed or cannot take requests ({reason})",
                                         answer.request_id)

    def _hold(self, answer: _ForwardedRequest) -> None:
        if not answer.holds_place and not answer.answered:
            answer.holds_place = True
            self.in_flight += 1

    def _release(self, answer: _ForwardedRequest) -> None:
        if answer.holds_place:
            answer.holds_place = False
            self.in_flight -= 1

    def _release_slow(self, answer: _ForwardedRequest) -> None:
        if not answer.body_complete:
            self._release(answer)

    async def _send_unavailable(self, send: Send, message: str, extra_headers: list[tuple[bytes, bytes]]) -> None:
        refusal = StageError(STAGE, "unavailable", message, status=503)
        body = json.dumps(error_body(refusal)).encode()
        await send({"type": "http.response.start", "status": refusal.status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.config.retry_after_s).encode()),
            *extra_headers,
        ]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _ForwardedRequest:
    """One forwarded request: watches its body come in, passes the app's answer through, and holds
    back Serve's own plain-text 500/503 (and its body) so the gate can answer in JSON instead."""

    def __init__(self, receive: Receive, send: Send, on_body_complete: Callable[[], None],
                 on_answered: Callable[[], None]) -> None:
        self._receive = receive
        self._send = send
        self._on_body_complete = on_body_complete
        self._on_answered = on_answered
        self.holds_place = True  # counted in the gate's in_flight (see ProxyGate._release_slow)
        self.body_complete = False
        self.answered = False  # the last part of the app's answer went to the client
        self.started = False
        self.client_gone = False
        self.replaced_status: int | None = None
        self.request_id: list[tuple[bytes, bytes]] = []

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.client_gone = True
        elif message["type"] == "http.request" and not message.get("more_body", False) and not self.body_complete:
            self.body_complete = True
            self._on_body_complete()
        return message

    async def send(self, message: Message) -> None:
        if self.replaced_status is not None:
            return  # the rest of Serve's plain-text body
        if message["type"] == "http.response.start" and _is_serve_failure(message):
            self.replaced_status = message["status"]
            self.request_id = [(k, v) for k, v in message.get("headers", []) if k.lower() == b"x-request-id"]
            return
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            # The place is free once the answer is out, not when Serve's proxy returns (it still
            # waits on the replica's call after the last byte): a client that sends its next request
            # on that answer must find the place free, or a closed loop of max_in_flight clients
            # would be refused.
            self.answered = True
            self._on_answered()
        await self._send(message)


def _is_serve_failure(start: Message) -> bool:
    if start.get("status") not in SERVE_FAILURE_STATUSES:
        return False
    content_type = next((v for k, v in start.get("headers", []) if k.lower() == b"content-type"), b"")
    return not content_type.startswith(b"application/json")


def middlewares() -> list[Middleware]:
    """What Serve's proxy calls at start (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH). A malformed
    setting stops the proxy with a message naming the variable."""
    config = ProxyGateConfig.from_env()
    logger.info("proxy gate: at most %s answer requests in flight per proxy, Retry-After %ss",
                config.max_in_flight or "unlimited", config.retry_after_s)
    return [Middleware(ProxyGate, config=config)]
