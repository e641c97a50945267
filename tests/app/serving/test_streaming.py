"""Streaming answers without Ray: the ingress's SSE body over the in-process stages, the test
decoder in a real decode loop (the Serve hop between them is Ray's; tests/e2e streams through it).
A client that goes away must stop the decode and free its admission place."""

from __future__ import annotations

import asyncio
import json

import pytest
from support_assistant.api import ParsedRequest, wants_event_stream
from support_assistant.assemble import build_stages, in_process
from support_assistant.runtime.decode_loop import DecodeLoop
from support_assistant.serving.admission import Admission
from support_assistant.serving.ingress import Ingress

QUESTION = "worker pod Pending, no free nvidia.com/gpu"


@pytest.fixture(scope="module")
def stages(test_bundle, base_config):
    """The test bundle (MiniLM + the tiny test decoder) with a budget far longer than a test waits."""
    config = base_config.model_copy(update={"generator": base_config.generator.model_copy(
        update={"max_new_tokens": 1500, "max_prompt_tokens": 400})})
    return build_stages(test_bundle.root, config)


def _ingress(stages, loop: DecodeLoop):
    """The Ingress class's own methods on a bare instance (no Serve replica behind it)."""
    # The class under Serve's ASGI wrapper (the wrapper's own __del__ expects a running replica).
    cls = Ingress.func_or_class.__mro__[1]
    assert "events" in vars(cls)
    ingress = object.__new__(cls)
    ingress.stages = in_process(stages, loop)
    ingress.admission = Admission()
    ingress.config = stages.config.ingress
    ingress.info = {"app": {"name": "support-assistant", "version": "test"}, "bundle_version": "b", "models": []}
    return ingress


def _parse(chunk: bytes) -> tuple[str, dict]:
    event, data = chunk.decode().rstrip("\n").split("\n")
    assert event.startswith("event: ") and data.startswith("data: ")
    return event[len("event: "):], json.loads(data[len("data: "):])


def test_tokens_then_one_answer_event(stages, base_config):
    config = base_config.generator.model_copy(update={"max_new_tokens": 12})
    from support_assistant.assemble import configure_generator

    loop = DecodeLoop(stages.generator.decoder)
    ingress = _ingress(stages, loop)

    async def main():
        configure_generator(stages.generator, config)
        try:
            response = await ingress._stream(ParsedRequest(question=QUESTION, top_k=2, stream=True), ingress.config)
            assert response.media_type == "text/event-stream"
            return [_parse(chunk) async for chunk in response.body_iterator]
        finally:
            configure_generator(stages.generator, stages.config.generator)

    try:
        events = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        loop.close()
    kinds = [kind for kind, _ in events]
    # Tokens decoded between two wake-ups of the event loop arrive as one piece.
    assert kinds[-1] == "answer" and set(kinds[:-1]) == {"token"} and len(kinds) >= 2
    answer = events[-1][1]
    draft = "".join(data["text"] for _, data in events[:-1])
    assert answer["generation"]["tokens"] == 12 and draft  # the draft streamed, the guarded answer last
    assert answer["generator_mode"] in ("abstractive", "extractive_fallback") and answer["sources"]
    assert set(answer["timings_ms"]) >= {"reranker", "generator", "total"} and answer["bundle_version"] == "b"
    assert ingress.admission.in_flight == 0


def test_a_client_that_goes_away_stops_the_decode_and_frees_its_place(stages):
    loop = DecodeLoop(stages.generator.decoder)
    ingress = _ingress(stages, loop)

    async def main():
        response = await ingress._stream(ParsedRequest(question=QUESTION, top_k=2, stream=True), ingress.config)
        assert ingress.admission.in_flight == 1
        body = response.body_iterator
        first = _parse(await anext(body))
        assert first[0] == "token" and loop.active == 1
        # What Starlette does when the client disconnects: the body's iterator is closed mid-stream.
        await body.aclose()
        assert ingress.admission.in_flight == 0
        for _ in range(200):  # the loop takes the row out at its next step
            if loop.active == 0:
                break
            await asyncio.sleep(0.01)
        return loop.active, loop.steps

    try:
        active, steps = asyncio.run(asyncio.wait_for(main(), 120))
        steps_after = loop.steps
    finally:
        loop.close()
    assert active == 0 and steps_after == steps < 1500  # no step ran for it after it left


def test_accept_header_asks_for_a_stream():
    assert wants_event_stream("text/event-stream")
    assert wants_event_stream("application/json, text/event-stream;q=0.5")
    assert not wants_event_stream("text/event-stream;q=0")
    assert not wants_event_stream("application/json") and not wants_event_stream(None)
