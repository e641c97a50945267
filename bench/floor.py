"""What Serve itself costs on this machine: an app with the pipeline's shape and no work in it.

The `floor` section serves `POST /v1/answer` three ways, each answering with the request's own JSON:
uvicorn + Starlette in one process (the baseline's front, nothing else), Serve's proxy in front of
one ingress replica (no hops), and that ingress calling three do-nothing deployments in turn (the
pipeline's three hops: Retriever, Reranker, Generator). Serve runs with the overlay's own settings
(the RayService's RAY_SERVE_* and proxy-gate variables), as the pipeline section does. The
difference between these and the real servers is what the stages' work and this repository's code
add; what is left is Serve's floor, which no tuning of the stages can go below.

Serve imports this module in its replicas (`floor:build`), so the bench puts bench/ on PYTHONPATH
before Ray starts.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

HOPS = ("Retriever", "Reranker", "Generator")  # the deployments a request crosses in the pipeline


def _serve_deployments() -> Any:
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
    class Hop:
        async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
            return payload

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
    class FloorIngress:
        def __init__(self, *hops: DeploymentHandle) -> None:
            self.hops = hops

        async def __call__(self, request: Request) -> Response:
            if request.method != "POST":  # the bench's readiness probe, GET /healthz
                return JSONResponse({"status": "ok"})
            payload = json.loads(await request.body())
            for hop in self.hops:
                payload = await hop.remote(payload)
            return JSONResponse(payload)

    return Hop, FloorIngress


def build(args: dict[str, Any]) -> Any:
    """The Serve application (import path `floor:build`); args: {"hops": 0 to 3}."""
    hop, ingress = _serve_deployments()
    return ingress.bind(*(hop.options(name=name).bind() for name in HOPS[: int(args["hops"])]))


def serve_config(overlay_config: dict[str, Any], hops: int) -> dict[str, Any]:
    """The overlay's Serve config (HTTP options, proxy location) with the floor app in place of the
    pipeline."""
    return {"http_options": overlay_config["http_options"], "proxy_location": overlay_config["proxy_location"],
            "applications": [{"name": "floor", "route_prefix": "/", "import_path": "floor:build",
                              "args": {"hops": hops}}]}


def baseline_app() -> Any:
    """uvicorn + Starlette answering with the request's JSON: the single-process baseline's front."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def answer(request: Request) -> JSONResponse:
        return JSONResponse(json.loads(await request.body()))

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/answer", answer, methods=["POST"]), Route("/healthz", healthz)])
