"""One live local Ray for the whole test run (Ray takes seconds to start on this machine), shared
by every test area that needs one (tests/e2e, tests/reliability): tests/conftest.py registers the
fixture. Started exactly like `make run` (repoctl.local_run.start_ray): loopback only, token auth on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from repoctl.local_run import logical_cpus_needed, start_ray
from repoctl.render import ray_serve_env_of, serve_config_of
from support_assistant.bundler.bundle import build_bundle

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LocalRay:
    bundle_dir: Path
    http_port: int
    metrics_port: int
    configs: dict[str, dict]  # env -> serveConfigV2 as rendered from the overlay
    token_file: Path  # the Ray auth token this session's Ray requires

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture(scope="session")
def local_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local bundle `make bundle` builds (real all-MiniLM-L6-v2 and SmolLM2, BM25 over the
    runbooks), built once per test run for every area that serves it (this Ray, tests/simulation)."""
    bundle_dir = tmp_path_factory.mktemp("local-bundle") / "bundle"
    build_bundle(bundle_dir, profile="local", corpus_dir=ROOT / "docs" / "runbooks")
    return bundle_dir


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory: pytest.TempPathFactory, rendered: dict[str, list[dict]],
              local_bundle_dir: Path) -> Iterator[LocalRay]:
    import ray
    from ray import serve

    work = tmp_path_factory.mktemp("e2e")
    bundle_dir = local_bundle_dir
    configs = {env: serve_config_of(docs) for env, docs in rendered.items()}
    metrics_port = free_port()
    token_file = work / "ray" / "auth_token"
    serve_envs = {env: ray_serve_env_of(docs) for env, docs in rendered.items()}
    # One Ray serves every overlay's config, so their Serve data-plane settings must agree (they
    # live in the base RayService).
    assert len({tuple(sorted(e.items())) for e in serve_envs.values()}) == 1, serve_envs
    start_ray(max(logical_cpus_needed(c) for c in configs.values()), metrics_port=metrics_port, token_file=token_file,
              serve_env=serve_envs["dev"])
    try:
        yield LocalRay(bundle_dir, free_port(), metrics_port, configs, token_file)
    finally:
        serve.shutdown()
        ray.shutdown()
