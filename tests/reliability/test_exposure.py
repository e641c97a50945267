"""Nothing of the local run listens beyond this machine, and Ray refuses callers without the token.

The session's Ray is started exactly as `make run` starts it (repoctl.local_run.start_ray)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from live import STAGE_DEPLOYMENTS, deploy_dev, replica_pids
from procs import descendants
from repoctl.sockets import is_loopback, listeners

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def listening_sockets(pids: set[int]) -> list[tuple[str, int, str, int]]:
    """(process name, pid, address, port) of every TCP socket in LISTEN state the pids hold."""
    names: dict[int, str] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
    return sorted({(names[pid], pid, address, port) for pid, address, port in listeners(pids) if pid in names})


def _replica_grpc_sockets(sockets: list[tuple[str, int, str, int]]) -> list[tuple[str, int, str, int]]:
    """Serve 2.60 replicas' inter-deployment gRPC servers: ray/serve/_private/replica.py binds them
    to "[::]:0" in code, with no option or environment variable to change it."""
    replicas = set(replica_pids_of_app())
    return [s for s in sockets if s[1] in replicas and not is_loopback(s[2])]


def replica_pids_of_app() -> list[int]:
    return [pid for name in STAGE_DEPLOYMENTS.values() for pid in replica_pids(name)] + replica_pids("Ingress")


def test_every_listening_socket_of_the_local_ray_is_on_loopback(local_ray):
    deploy_dev(local_ray)
    sockets = listening_sockets(descendants())
    ports = {port for _, _, _, port in sockets}
    names = {name for name, _, _, _ in sockets}
    # The check sees the whole session: the GCS, the raylet, the Serve proxy and the metrics export.
    assert {"gcs_server", "raylet"} <= names, sockets
    assert {local_ray.http_port, local_ray.metrics_port} <= ports, sockets
    allowed = _replica_grpc_sockets(sockets)
    exposed = [s for s in sockets if not is_loopback(s[2]) and s not in allowed]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_replica_ports_ray_cannot_bind_to_loopback_refuse_callers_without_the_token(local_ray):
    """The one exception above is covered by token authentication: without the token, a replica's
    gRPC server answers UNAUTHENTICATED before any Serve code runs."""
    import grpc

    deploy_dev(local_ray)
    replica_sockets = _replica_grpc_sockets(listening_sockets(descendants()))
    # Ingress, Retriever, Reranker, Generator: one replica each in dev.
    assert len(replica_sockets) == 4, replica_sockets
    for _, _, _, port in replica_sockets:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest", request_serializer=None,
                                       response_deserializer=None)
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (port, refused.value)


def test_the_gcs_refuses_a_caller_without_the_token(local_ray):
    import grpc
    import ray

    gcs_address = ray.get_runtime_context().gcs_address
    assert gcs_address.split(":")[0] in ("127.0.0.1", "localhost"), gcs_address
    token = local_ray.token_file.read_text().strip()
    assert oct(local_ray.token_file.stat().st_mode & 0o777) == "0o600"
    method = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # an empty request is a valid one
    with grpc.insecure_channel(gcs_address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for metadata in ((), (("authorization", "Bearer not-the-token"),)):
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert call(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=10) is not None
