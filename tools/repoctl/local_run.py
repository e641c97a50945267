"""`repoctl run`: the overlay's own serveConfigV2 on an embedded local Ray, no cluster needed.

What GitOps deploys is what runs here: the config comes from `kustomize build overlays/<env>`.
Only what a laptop cannot honour is changed (local_serve_config): GPU requests become CPU,
the proxy listens on 127.0.0.1, and the bundle path points at the local bundle.

Nothing listens beyond this machine (start_ray): every Ray process (GCS, raylet, workers, agents,
metrics export) binds 127.0.0.1, and Ray token authentication is on, the token in a file only
this user can read (.cache/ray/auth_token for `make run`).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.render import RenderError, ray_serve_env_of, render_overlay, serve_config_of

EXAMPLE_QUESTION = "My RayService is stuck initializing after a deploy. What should I check first?"
# The mix of questions load sends (the load tests' loadgen, `make simulate`): the README's first, then operator
# questions of several lengths, each one a runbook answers.
LOAD_QUESTIONS = (
    EXAMPLE_QUESTION,
    "Worker pod stays Pending because no node has a free nvidia.com/gpu",
    "serve replica keeps restarting",
    "the head pod was OOMKilled",
    "requests time out in the reranker",
    "Serve deployment is unhealthy after an upgrade",
    "GCS fault tolerance redis connection refused",
    "autoscaler does not add GPU workers",
)


def local_serve_config(config: dict, bundle_dir: Path, port: int = 8000) -> dict:
    """The config with GPU requests mapped to CPU, localhost only, and the local bundle."""
    local = copy.deepcopy(config)
    local["http_options"] = {**local.get("http_options", {}), "host": "127.0.0.1", "port": port}
    for app in local["applications"]:
        app["args"] = {**app.get("args", {}), "bundle_dir": str(Path(bundle_dir).resolve())}
        for deployment in app.get("deployments", []):
            options = deployment.get("ray_actor_options", {})
            if options.pop("num_gpus", 0):
                # ONNX Runtime falls back to its CPU provider when no GPU is visible.
                options.setdefault("num_cpus", 1)
    return local


@dataclass(frozen=True)
class LocalOverlay:
    """An overlay as a local Ray runs it: its serveConfigV2 made local (local_serve_config), and the
    Serve settings its Ray containers set (render.SERVE_ENV_PREFIXES), which must be in place before Ray starts."""

    config: dict
    serve_env: dict[str, str]


def local_overlay(env: str, bundle_dir: Path, port: int = 8000) -> LocalOverlay:
    """`kustomize build overlays/<env>` read as `make run` deploys it (raises RenderError)."""
    docs = render_overlay(env)
    return LocalOverlay(local_serve_config(serve_config_of(docs), bundle_dir, port), ray_serve_env_of(docs))


def logical_cpus_needed(config: dict) -> int:
    """CPUs the config could claim at its autoscaling ceilings (Ray's CPUs here are logical)."""
    total = 0.0
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            replicas = deployment.get("autoscaling_config", {}).get("max_replicas") or deployment.get(
                "num_replicas", 1
            )
            total += replicas * deployment.get("ray_actor_options", {}).get("num_cpus", 1)
    return math.ceil(total) + 1


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# Ray picks the node IP it binds to from this switch: off, it uses 127.0.0.1 (what Ray does on a
# laptop OS) and every Ray process listens on loopback only; on (Linux's default), it uses the
# host's outbound IP and the GCS, raylet and workers listen on all interfaces. Passing
# ray.init(_node_ip_address="127.0.0.1") does not help: ray.init resolves a loopback address back
# to the host's IP (ray._private.services.resolve_ip_for_localhost, Ray 2.60).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOKEN_FILE = ROOT / ".cache" / "ray" / "auth_token"


def ensure_token(path: Path) -> Path:
    """A Ray auth token at `path` (created once, readable by this user only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or not path.read_text().strip():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def loopback_and_token_env(token_file: Path) -> None:
    """Environment for a loopback-only, token-authenticated local Ray (read by ray.init and by
    every process it starts)."""
    os.environ[LOOPBACK_SWITCH] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(ensure_token(token_file))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if "ray" in sys.modules:
        # The test session imports Ray before it starts one: Ray read both settings at import.
        from ray._private import ray_constants
        from ray._raylet import Config

        ray_constants.ENABLE_RAY_CLUSTER = False
        Config.initialize("")


def start_ray(num_cpus: int, metrics_port: int | None = None, token_file: Path = TOKEN_FILE,
              serve_env: Mapping[str, str] | None = None) -> None:
    """`serve_env`: the overlay's Serve settings (render.ray_serve_env_of), set before Ray starts
    so that every Serve process it starts reads them; a variable already set in the caller's
    environment wins (the bench compares data-plane variants that way)."""
    loopback_and_token_env(token_file)
    for name, value in (serve_env or {}).items():
        os.environ.setdefault(name, value)
    import ray

    ray.init(
        num_cpus=num_cpus,
        num_gpus=0,
        namespace="serve",
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        configure_logging=True,
        logging_level="WARNING",
        log_to_driver=False,
    )


def deploy(config: dict, timeout_s: float = 300, wait: bool = True) -> None:
    """Deploy a Serve config (as KubeRay does through the dashboard) and, unless not `wait`, wait until
    it runs."""
    from ray import serve
    from ray.serve._private import api as serve_private_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    # The same calls `serve run config.yaml` makes (ray/serve/scripts.py), in-process.
    client = serve_private_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    client.deploy_apps(schema, _blocking=False)
    if not wait:
        return
    names = [app.name for app in schema.applications]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {name: apps[name].status if name in apps else "NOT_STARTED" for name in names}
        failed = {n: apps[n].message for n in names if n in apps and apps[n].status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError("; ".join(f"application {n} failed to deploy: {m}" for n, m in failed.items()))
        if all(state == "RUNNING" for state in states.values()):
            return
        time.sleep(1)
    raise TimeoutError(f"applications not RUNNING after {timeout_s:g}s: {states}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run an overlay's serveConfigV2 on an embedded local Ray")
    parser.add_argument("--env", choices=ENVIRONMENTS, default="dev")
    parser.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundle")
    parser.add_argument("--port", type=int, default=8000)
    parser.set_defaults(func=run)


def _stop_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"{args.bundle}: no model bundle; build it with `make bundle`")
    if not _port_free(args.port):
        raise SystemExit(f"port {args.port} on 127.0.0.1 is in use: stop what runs there or pass --port")
    try:
        overlay = local_overlay(args.env, args.bundle, args.port)
    except RenderError as exc:
        raise SystemExit(str(exc)) from None
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"starting a local Ray and deploying overlays/{args.env} serveConfigV2 (GPU requests mapped to CPU)...",
          flush=True)
    import ray
    from ray import serve

    try:
        start_ray(logical_cpus_needed(overlay.config), serve_env=overlay.serve_env)
        deploy(overlay.config)
        url = f"http://127.0.0.1:{args.port}"
        print(
            f"\nsupport-assistant is up at {url}  (Ctrl-C to stop)\n\n"
            f"  curl -s {url}/v1/answer -H 'Content-Type: application/json' \\\n"
            f"    -d '{{\"question\": \"{EXAMPLE_QUESTION}\", \"top_k\": 3}}'\n\n"
            f"  curl -s {url}/readyz\n\n"
            f"Ray listens on 127.0.0.1 only and wants its token: RAY_AUTH_MODE=token "
            f"RAY_AUTH_TOKEN_PATH={TOKEN_FILE} ray status\n",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except (RuntimeError, TimeoutError) as exc:
        print(f"repoctl run: {exc}", file=sys.stderr)
        return 1
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    return 0
