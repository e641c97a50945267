"""What the ingress tells a timed-out request about its stage: gone (503, retry) when a replica of
the stage vanished from the GCS and the stage has not answered since, or when it has no replica at
all; otherwise slow (504). The watcher reads only the replica actors' names, never serve.status()."""

from __future__ import annotations

import asyncio

import pytest
from support_assistant.serving import availability
from support_assistant.serving.availability import StageAvailability

APP = "support-assistant"


def replica(deployment: str, suffix: str) -> dict[str, str]:
    return {"name": f"SERVE_REPLICA::{APP}#{deployment}#{suffix}", "namespace": "serve"}


@pytest.fixture
def named_actors(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    actors = [replica("Ingress", "a"), replica("Retriever", "b"), replica("Reranker", "c"),
              {"name": "SERVE_CONTROLLER_ACTOR", "namespace": "serve"}]
    monkeypatch.setattr(availability.ray.util, "list_named_actors", lambda all_namespaces=False: list(actors))

    def no_status() -> None:
        raise AssertionError("the background watcher must not call serve.status()")

    monkeypatch.setattr(availability.serve, "status", no_status)
    return actors


def test_a_vanished_replica_marks_its_stage_gone_until_it_answers(named_actors):
    watch = StageAvailability(APP, refresh_s=1.0)
    asyncio.run(watch.watch_replicas())
    assert not watch.coming_back("reranker")
    named_actors.remove(replica("Reranker", "c"))
    asyncio.run(watch.watch_replicas())
    assert watch.coming_back("reranker")
    named_actors.append(replica("Reranker", "d"))  # the replacement has started
    asyncio.run(watch.watch_replicas())
    assert watch.coming_back("reranker"), "gone until the stage has answered again"
    watch.answered("reranker")
    assert not watch.coming_back("reranker")
    assert not watch.coming_back("retriever")


def test_a_stage_without_any_replica_is_gone(named_actors):
    watch = StageAvailability(APP, refresh_s=1.0)
    assert not watch.coming_back("generator"), "nothing known before the first watch"
    asyncio.run(watch.watch_replicas())
    assert watch.coming_back("generator")  # no Generator replica among the named actors


def test_another_apps_replicas_do_not_count(named_actors):
    named_actors.append({"name": "SERVE_REPLICA::other-app#Generator#x", "namespace": "serve"})
    watch = StageAvailability(APP, refresh_s=1.0)
    asyncio.run(watch.watch_replicas())
    assert watch.coming_back("generator")
