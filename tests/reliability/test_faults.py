"""Faults under load on the dev config: a replica of each stage killed (SIGKILL of its process,
then ray.kill of its actor), and redeploys with a changed user_config and with a new code version.

Requests in flight when a replica dies get an explicit, retryable answer naming the stage (503
stage_unavailable with Retry-After), never a hang; the stage is back within 30 s, then every
request succeeds. A redeploy under load fails no request. Loopback only; the background clients
are bounded in time and stop by themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from live import STAGE_DEPLOYMENTS, deploy_dev, deployment, dev_config, replica_pids, request

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

RECOVERY_S = 30
QUESTION = b'{"question": "serve replica keeps restarting"}'


@dataclass
class Result:
    at: float
    status: int | None
    code: str | None = None
    stage: str | None = None
    retry_after: str | None = None
    error: str | None = None


class Clients:
    """`n` threads posting questions back to back until stop() (or max_s), recording every outcome."""

    def __init__(self, url: str, n: int = 4, max_s: float = 240) -> None:
        self.url, self.results, self._stop = f"{url}/v1/answer", [], threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            req = urllib.request.Request(self.url, data=QUESTION, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as response:
                    response.read()
                    self.results.append(Result(time.monotonic(), response.status))
            except urllib.error.HTTPError as error:
                try:
                    body = json.loads(error.read() or b"{}").get("error", {})
                except ValueError:  # Serve's proxy answers its own errors in plain text
                    body = {"code": "not_json"}
                self.results.append(Result(time.monotonic(), error.code, body.get("code"), body.get("stage"),
                                           error.headers.get("Retry-After")))
                time.sleep(0.2)
            except OSError as error:  # connection refused/reset, client timeout
                self.results.append(Result(time.monotonic(), None, error=type(error).__name__))

    def since(self, t0: float) -> list[Result]:
        return [r for r in self.results if r.at >= t0]


def wait_until_serving(url: str, timeout_s: float = RECOVERY_S) -> float:
    """Seconds until /readyz is ready and a question is answered (pytest.fail past timeout_s)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            ready, _, _ = request(f"{url}/readyz", method="GET", timeout_s=10)
            if ready == 200 and request(f"{url}/v1/answer", QUESTION, timeout_s=30)[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"not serving again {timeout_s}s after the fault")


def sigkill(deployment_name: str) -> None:
    pids = replica_pids(deployment_name)
    assert len(pids) == 1, (deployment_name, pids)  # dev runs one replica of each under light load
    os.kill(pids[0], signal.SIGKILL)


def ray_kill(deployment_name: str) -> None:
    import ray

    prefix = f"SERVE_REPLICA::support-assistant#{deployment_name}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    assert len(names) == 1, (deployment_name, names)
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)


@pytest.fixture(scope="module")
def dev(local_ray):
    deploy_dev(local_ray)
    wait_until_serving(local_ray.url, 120)
    return local_ray


@pytest.mark.parametrize("kill", [sigkill, ray_kill], ids=["SIGKILL", "ray.kill"])
@pytest.mark.parametrize("stage", list(STAGE_DEPLOYMENTS))
def test_a_killed_replica_costs_only_retryable_errors_naming_its_stage(dev, stage, kill):
    name = STAGE_DEPLOYMENTS[stage]
    with Clients(dev.url) as clients:
        time.sleep(1.0)
        t0 = time.monotonic()
        kill(name)
        recovered_s = wait_until_serving(dev.url)
        time.sleep(2.0)  # the clients keep going on the recovered stage
    during = clients.since(t0)
    failed = [r for r in during if r.status != 200]
    print(f"{kill.__name__} {name}: serving again after {recovered_s:.1f}s; {len(during)} requests meanwhile, "
          f"{len(failed)} refused: {sorted({(r.status, r.code, r.stage) for r in failed}, key=str)}")
    for r in failed:
        assert (r.status, r.code, r.stage) == (503, "stage_unavailable", stage), r
        assert r.retry_after and int(r.retry_after) >= 1, r
    after = clients.since(t0 + recovered_s + 0.5)
    assert after and all(r.status == 200 for r in after), [r for r in after if r.status != 200]
    assert replica_pids(name), f"{name}: no replica after the kill"


@pytest.mark.parametrize("kill", [sigkill, ray_kill], ids=["SIGKILL", "ray.kill"])
def test_a_killed_ingress_replica_costs_only_retryable_errors_naming_the_ingress(dev, kill):
    """Serve's proxy answers the requests that were inside the dead Ingress replica with nothing
    (Ray 2.60 sends no response for a RayActorError, and uvicorn would answer a plain-text 500), and
    new ones with a plain 503 until the replacement runs; the proxy gate (serving/proxy_gate.py)
    answers each with the app's JSON 503 naming the ingress, with Retry-After. What the test holds:
    nothing else, nothing hangs, and the replacement answers within RECOVERY_S. Staging and prod
    run two Ingress replicas, so there a kill costs the requests of one of them while the other
    keeps answering."""
    clients_n = 4
    with Clients(dev.url, n=clients_n) as clients:
        time.sleep(1.0)
        t0 = time.monotonic()
        kill("Ingress")
        recovered_s = wait_until_serving(dev.url)
        time.sleep(2.0)
    during = clients.since(t0)
    failed = [r for r in during if r.status != 200]
    print(f"{kill.__name__} Ingress: serving again after {recovered_s:.1f}s; {len(during)} requests meanwhile, "
          f"{len(failed)} refused: {sorted({(r.status, r.code, r.stage) for r in failed}, key=str)}")
    assert len(failed) <= clients_n, failed  # the requests in flight inside the replica, no more
    for r in failed:
        assert (r.status, r.code, r.stage) == (503, "stage_unavailable", "ingress"), r
        assert r.retry_after and int(r.retry_after) >= 1, r
    after = clients.since(t0 + recovered_s + 0.5)
    assert after and all(r.status == 200 for r in after), [r for r in after if r.status != 200]
    assert replica_pids("Ingress"), "Ingress: no replica after the kill"


@pytest.mark.parametrize("change", ["user_config", "code_version"])
def test_a_redeploy_under_load_fails_no_request(dev, change, tmp_path):
    config = dev_config(dev)
    if change == "user_config":
        deployment(config, "Generator")["user_config"]["answer_sentences"] = 2
        deployment(config, "Reranker")["user_config"]["batch_wait_timeout_s"] = 0.02
    else:
        # New application args: Serve rolls every deployment to a new version (new replicas).
        copy = tmp_path / "bundle-v2"
        shutil.copytree(dev.bundle_dir, copy)
        config = dev_config(dev, bundle_dir=copy)
    with Clients(dev.url) as clients:
        time.sleep(1.0)
        t0 = time.monotonic()
        deploy_dev(dev, config)
        time.sleep(3.0)
    during = clients.since(t0)
    print(f"redeploy ({change}): {len(during)} requests during the rollout, "
          f"statuses {sorted({(r.status, r.code, r.stage) for r in during}, key=str)}")
    assert during and all(r.status == 200 for r in during), [r for r in during if r.status != 200]
    deploy_dev(dev)  # back to the dev config for the next test
