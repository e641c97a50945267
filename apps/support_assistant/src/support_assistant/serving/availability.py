"""Whether each stage is serving, as this ingress knows it: Serve's view of the stage's replicas
(refreshed in the background) and the replica deaths this ingress saw itself.

It tells "slow" from "gone". When a stage's replica dies (SIGKILL, OOM, ray.kill, node loss), the
requests it held and those sent to it before Serve notices wait until the stage's budget ends
(Ray 2.60's handle does not fail them as soon as the process is gone), and the requests after
them wait in the handle for the replacement replica. Such a timeout is not "the stage is slow"
(504 stage_timeout) but "retry, the stage is coming back" (503 stage_unavailable + Retry-After).

The Serve controller notices a dead replica only at its next health check (health_check_period_s,
measured at about 9 s after a SIGKILL on the dev config), but Ray's GCS drops the replica actor's
name as soon as the raylet reports the process gone, so the refresher also watches the replica
actors' names: one that disappears marks its stage as gone until the stage answers again (a
rollout that replaces replicas is marked the same way, which only turns its timeouts into 503s).
A stage with no replica actor at all has nothing running either.

The background refresher asks only the GCS for the actor names (about 0.2 ms). Serve's own view,
serve.status(), costs about 20 ms of CPU in the caller, most of it Python holding the GIL, so it
stalls this replica's event loop while it runs; asked once a second, it delayed every request
that arrived meanwhile. Only /readyz asks for it, at most once per refresh period however many
callers ask.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import serve

logger = logging.getLogger("ray.serve")

# serveConfigV2 deployment name -> the stage it runs.
STAGE_OF = {"Ingress": "ingress", "Retriever": "retriever", "Reranker": "reranker", "Generator": "generator"}
# A deployment in one of these states still has replicas serving (a rollout or a scale step).
_SERVING_STATES = {"HEALTHY", "UPDATING", "UPSCALING", "DOWNSCALING"}


class StageAvailability:
    def __init__(self, app_name: str, refresh_s: float) -> None:
        self.app_name = app_name
        self.refresh_s = refresh_s
        self.stages: dict[str, dict[str, Any]] = {}
        self._died: dict[str, float] = {}
        self._answered: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._status: asyncio.Future[dict[str, dict[str, Any]]] | None = None
        self._status_asked_at = float("-inf")
        self._replicas: dict[str, str] | None = None  # replica actor name -> stage; None until watched

    async def watch_replicas(self) -> None:
        """Marks a stage gone when one of its replica actors disappears from the GCS."""
        prefix = f"SERVE_REPLICA::{self.app_name}#"
        named = await asyncio.to_thread(ray.util.list_named_actors, True)
        now: dict[str, str] = {}
        for actor in named:
            name = actor["name"] if isinstance(actor, dict) else actor
            if name.startswith(prefix):
                now[name] = STAGE_OF.get(name[len(prefix):].split("#")[0], "")
        for name, stage in (self._replicas or {}).items():
            if name not in now:
                self.died(stage)
        self._replicas = now

    async def refresh(self) -> dict[str, dict[str, Any]]:
        """Serve's view of every stage (for /readyz: see the module docstring), asked at most once
        per refresh_s: callers in the meantime, or while it is being asked, share that answer, so a
        flood of /readyz costs the controller and this replica one serve.status() per refresh_s."""
        asked = self._status
        stale = time.monotonic() - self._status_asked_at >= self.refresh_s
        if asked is None or (asked.done() and (stale or asked.cancelled() or asked.exception() is not None)):
            self._status_asked_at = time.monotonic()
            self._status = asked = asyncio.ensure_future(self._ask_controller())
        # Shielded: a caller that gives up (its client went away) does not cancel the others' answer.
        return await asyncio.shield(asked)

    async def _ask_controller(self) -> dict[str, dict[str, Any]]:
        # serve.status() is a blocking call to the Serve controller, hence the thread.
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        deployments = app.deployments if app is not None else {}
        self.stages = {
            STAGE_OF.get(name, name): {
                "status": str(getattr(d.status, "value", d.status)),
                "running_replicas": d.replica_states.get("RUNNING", 0),
                "message": d.message,
            }
            for name, d in deployments.items()
        }
        return self.stages

    def start(self) -> None:
        """Keeps watching the replica names (called from a request, where an event loop runs)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch_forever())

    async def _watch_forever(self) -> None:
        while True:
            try:
                await self.watch_replicas()
            except Exception as exc:  # the GCS restarting; keep the last names
                logger.warning("stage availability: watching the replica names failed: %s", exc)
            await asyncio.sleep(self.refresh_s)

    def ready(self) -> bool:
        return bool(self.stages) and all(
            s["running_replicas"] > 0 and s["status"] in _SERVING_STATES for s in self.stages.values())

    def died(self, stage: str) -> None:
        self._died[stage] = time.monotonic()

    def answered(self, stage: str) -> None:
        self._answered[stage] = time.monotonic()

    def coming_back(self, stage: str) -> bool:
        """One of the stage's replicas died and it has not answered since, or it has no replica."""
        if self._died.get(stage, float("-inf")) > self._answered.get(stage, float("-inf")):
            return True
        return self._replicas is not None and stage not in self._replicas.values()
