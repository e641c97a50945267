"""A RayService's cluster as Ray's fake multi-node cluster on loopback.

What is Ray's own and what is ours:
- the node types, their resources, bounds, idle timeout and upscaling speed come from Ray's KubeRay
  translation (`_derive_autoscaling_config_from_ray_cr`, the code the KubeRay autoscaler sidecar
  runs), applied to the rendered RayService; nothing is mapped by hand;
- only `provider` is replaced: `fake_multinode` starts each worker node as a real raylet on this
  machine with the node type's declared (logical) resources;
- the head is started by `ray start --head` with the head group's resources, its own port and temp
  dir, loopback only and Ray token auth, like `make run`'s Ray (repoctl.local_run).

Every process of the simulation runs in one session (`start_new_session`) under one temp dir, and
stop() ends exactly those: never `ray stop`, which kills every Ray on the machine. A reaper process
does the same if the process that started the simulation dies without stopping it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FAKE_HEAD_NODE_TYPE
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from support_assistant.runtime.session import SIMULATED_GPUS_ENV

from repoctl.local_run import LOOPBACK_SWITCH, loopback_and_token_env
from repoctl.simulation.processes import kill_all, living, processes_of

LOOPBACK = "127.0.0.1"
# KubeRay (v1.6 utils.IsAutoscalingV2Enabled) runs autoscaler v2 when autoscalerOptions.version is
# "v2", or, before KubeRay 1.4, when the head container sets this variable.
AUTOSCALER_V2_ENV = "RAY_enable_autoscaler_v2"
# Each simulated node's object store, in bytes: nodes are real raylets sharing this machine's
# memory, and the pipeline passes only small objects (the default is 30 % of the machine's memory
# per node).
OBJECT_STORE_BYTES = 96 * 1024 * 1024


class SimulationError(RuntimeError):
    pass


def ray_cluster_of(rayservice: dict) -> dict:
    """The RayCluster the KubeRay operator creates from a RayService (what its autoscaler reads)."""
    meta = rayservice["metadata"]
    return {"metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
            "spec": rayservice["spec"]["rayClusterConfig"]}


def derive_autoscaling_config(rayservice: dict) -> dict:
    """The autoscaling config the KubeRay autoscaler sidecar would run with, by Ray's own code."""
    return _derive_autoscaling_config_from_ray_cr(ray_cluster_of(rayservice))


def autoscaler_version(rayservice: dict) -> str:
    spec = rayservice["spec"]["rayClusterConfig"]
    if spec.get("autoscalerOptions", {}).get("version") == "v2":
        return "v2"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    legacy = {e["name"]: str(e.get("value", "")).lower() for e in head.get("env", [])}.get(AUTOSCALER_V2_ENV)
    return "v2" if legacy in ("1", "true") else "v1"


def fake_provider(derived: dict, gcs_address: str, version: str) -> dict:
    """The derived config on Ray's fake multi-node provider, with what that provider needs and
    nothing else changed:

    - `provider`: fake_multinode with the head's GCS address. The KubeRay provider's flags stay (no
      node updaters, no launch-config check, foreground launches) except worker_liveness_check:
      KubeRay turns it off because the kubelet restarts a pod whose raylet died; with no kubelet
      here the autoscaler's own check stands in for it (it terminates a node that stopped reporting
      and launches a replacement); `use_node_id_as_ip`, because every node here has the IP
      127.0.0.1 and the fake provider names its nodes by id (as Ray's own fake-cluster helper sets);
    - the head's node type is named as the fake provider tags its head (FAKE_HEAD_NODE_TYPE; with
      any other name the autoscaler tries to launch a head of its own);
    - `memory` leaves the node types' resources: the fake provider passes it to the raylet as a
      custom resource, which Ray refuses, so no node would start. No deployment here asks for
      memory, so placement is unchanged; `object_store_memory` caps each node's object store
      (OBJECT_STORE_BYTES: the nodes share this machine's memory)."""
    head_type = derived["head_node_type"]
    provider = {**derived["provider"], "type": "fake_multinode", "gcs_address": gcs_address,
                "worker_liveness_check": True, "use_node_id_as_ip": True}
    provider.pop("namespace", None)
    if version == "v2":
        provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
    node_types = {}
    for name, node_type in derived["available_node_types"].items():
        resources = {k: v for k, v in node_type["resources"].items() if k != "memory"}
        node_types[FAKE_HEAD_NODE_TYPE if name == head_type else name] = {
            **node_type, "resources": {**resources, "object_store_memory": OBJECT_STORE_BYTES}}
    return {**derived, "provider": provider, "head_node_type": FAKE_HEAD_NODE_TYPE, "available_node_types": node_types}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class SimulatedCluster:
    """A running fake multi-node cluster; `stop()` ends every process it started."""

    rayservice: dict
    idle_timeout_s: float | None = None  # None: the overlay's own (derived) idle timeout
    # Set in every process of the cluster before it starts: the overlay's Serve settings
    # (render.ray_serve_env_of), as its Ray containers set them.
    extra_env: dict[str, str] = field(default_factory=dict)
    temp_dir: Path = Path()
    gcs_port: int = 0
    metrics_ports: dict[str, int] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    version: str = "v1"
    env: dict[str, str] = field(default_factory=dict)
    session: int | None = None
    _head: subprocess.Popen | None = None
    _reaper: subprocess.Popen | None = None

    @property
    def gcs_address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def token_file(self) -> Path:
        return self.temp_dir / "auth_token"

    @property
    def derived_idle_timeout_s(self) -> float:
        return derive_autoscaling_config(self.rayservice)["idle_timeout_minutes"] * 60

    def start(self, timeout_s: float = 120) -> SimulatedCluster:
        # Short: Ray's Unix sockets live under the temp dir and their paths are limited to 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rsim-", dir="/tmp"))
        self.gcs_port = _free_port()
        self.version = autoscaler_version(self.rayservice)
        derived = derive_autoscaling_config(self.rayservice)
        self.config = fake_provider(derived, self.gcs_address, self.version)
        if self.idle_timeout_s is not None:
            self.config["idle_timeout_minutes"] = self.idle_timeout_s / 60
        config_file = self.temp_dir / "autoscaling-config.json"
        config_file.write_text(json.dumps(self.config, indent=2))
        self.token_file.touch(mode=0o600)
        self.token_file.write_text(secrets.token_hex(32))
        self.metrics_ports = {"autoscaler": _free_port(), "head": _free_port()}
        self.env = {
            **self.extra_env,
            LOOPBACK_SWITCH: "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_FAKE_CLUSTER": "1",
            AUTOSCALER_V2_ENV: "1" if self.version == "v2" else "0",
            "AUTOSCALER_METRIC_PORT": str(self.metrics_ports["autoscaler"]),
            # How long a node may stop reporting before the liveness check replaces it (default 30 s;
            # a kubelet restarts a dead container's pod within seconds).
            "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "5",
            "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(OBJECT_STORE_BYTES),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Marks every node of this cluster as simulated: a replica given a (declared) GPU here runs
            # ONNX on the CPU instead of refusing to start (runtime/session.py).
            SIMULATED_GPUS_ENV: "1",
        }
        if self.version == "v2":
            self.env.update(RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID, RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
                            RAY_NODE_TYPE_NAME=FAKE_HEAD_NODE_TYPE)
        env = {**os.environ, **self.env}
        env.pop("RAY_AUTH_TOKEN", None)
        env.pop("RAY_ADDRESS", None)
        head = derived["available_node_types"][derived["head_node_type"]]["resources"]
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU", "memory")}
        argv = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                f"--port={self.gcs_port}", f"--node-ip-address={LOOPBACK}", f"--temp-dir={self.temp_dir}",
                f"--autoscaling-config={config_file}", f"--num-cpus={head.get('CPU', 0)}",
                f"--num-gpus={head.get('GPU', 0)}", f"--memory={head.get('memory', 0)}",
                f"--object-store-memory={OBJECT_STORE_BYTES}", "--include-dashboard=false",
                f"--metrics-export-port={self.metrics_ports['head']}", "--disable-usage-stats"]
        if custom:
            argv.append(f"--resources={json.dumps(custom)}")
        log = (self.temp_dir / "head.log").open("ab")
        self._head = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.session = self._head.pid
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "repoctl.simulation.reaper", str(os.getpid()), str(self.session),
             str(self.temp_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_for_gcs(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_gcs(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._head is not None and self._head.poll() is not None:
                raise SimulationError(f"ray start --head exited with {self._head.returncode}: {self.head_log_tail()}")
            with socket.socket() as sock:
                if sock.connect_ex((LOOPBACK, self.gcs_port)) == 0 and (self.temp_dir / "session_latest").exists():
                    return
            time.sleep(0.5)
        raise SimulationError(f"the head's GCS did not answer on {self.gcs_address} within {timeout_s:g}s")

    def head_log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.temp_dir / "head.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def pids(self) -> list[int]:
        return living(processes_of(self.session, str(self.temp_dir))) if self.session else []

    def connect(self) -> None:
        """Connect this process's Ray driver to the simulated cluster (loopback, token)."""
        loopback_and_token_env(self.token_file)
        import ray

        ray.init(address=self.gcs_address, namespace="serve", logging_level="WARNING", log_to_driver=False)

    def stop(self, keep_logs: bool = False) -> list[int]:
        """Ends every process of the simulation; returns the PIDs that survived (none, normally).
        The temp dir (Ray's logs) goes too, unless `keep_logs`."""
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
        left: list[int] = []
        if self.session is not None:
            left = kill_all(self.session, str(self.temp_dir))
        if self._head is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._head.wait(timeout=5)
        if self._reaper is not None and self._reaper.poll() is None:
            self._reaper.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=5)
        if not left and not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


@contextlib.contextmanager
def simulated_cluster(rayservice: dict, idle_timeout_s: float | None = None,
                      extra_env: dict[str, str] | None = None) -> Iterator[SimulatedCluster]:
    cluster = SimulatedCluster(rayservice, idle_timeout_s, dict(extra_env or {}))
    cluster.start()
    try:
        yield cluster
    finally:
        left = cluster.stop()
        if left:
            print(f"repoctl simulate: processes still alive after stop: {left}", file=sys.stderr)
