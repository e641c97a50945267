"""What the ingress tells a timed-out request about its stage: gone (503, retry) when a replica of
the stage vanished from the GCS and the stage has not answered since, or when it has no replica at
all; otherwise slow (504). The watcher reads only the replica actors' names, never serve.status(),
which only /readyz asks for, at most once per period however many callers ask."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

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


class FakeStatus:
    """serve.status() as /readyz sees it, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self) -> object:
        self.calls += 1
        if self.fail:
            raise ConnectionError("controller restarting")
        time.sleep(0.05)  # a call takes a while: callers meanwhile must share it
        deployment = SimpleNamespace(status="HEALTHY", replica_states={"RUNNING": 1}, message="")
        app = SimpleNamespace(deployments={"Reranker": deployment})
        return SimpleNamespace(applications={APP: app})


def test_readyz_floods_cost_one_controller_call_per_period(monkeypatch: pytest.MonkeyPatch):
    status = FakeStatus()
    monkeypatch.setattr(availability.serve, "status", status)
    watch = StageAvailability(APP, refresh_s=0.5)

    async def flood() -> list[dict]:
        return await asyncio.gather(*(watch.refresh() for _ in range(20)))

    async def scenario() -> None:
        answers = await flood()
        assert status.calls == 1 and all(a == {"reranker": {"status": "HEALTHY", "running_replicas": 1,
                                                            "message": ""}} for a in answers)
        await flood()
        assert status.calls == 1, "answered from the last call within refresh_s"
        await asyncio.sleep(0.5)
        await flood()
        assert status.calls == 2
        assert watch.ready()

    asyncio.run(scenario())


def test_a_failed_controller_call_is_not_kept(monkeypatch: pytest.MonkeyPatch):
    status = FakeStatus()
    status.fail = True
    monkeypatch.setattr(availability.serve, "status", status)
    watch = StageAvailability(APP, refresh_s=60)

    async def scenario() -> None:
        with pytest.raises(ConnectionError):
            await watch.refresh()
        status.fail = False
        assert await watch.refresh()  # asked again at once, not after refresh_s
        assert status.calls == 2

    asyncio.run(scenario())
