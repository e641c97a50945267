"""A replica that Ray gave a GPU refuses to start unless its ONNX session runs on CUDA."""

from __future__ import annotations

import logging

import pytest
from support_assistant.serving.deployments import require_cuda_when_given_a_gpu


def test_a_gpu_replica_on_the_cpu_provider_refuses_to_start(caplog):
    serve_logger = logging.getLogger("ray.serve")  # Ray's logger does not propagate to the root
    serve_logger.addHandler(caplog.handler)
    try:
        with pytest.raises(RuntimeError) as info:
            require_cuda_when_given_a_gpu("reranker", "CPUExecutionProvider", gpu_ids=["0"])
    finally:
        serve_logger.removeHandler(caplog.handler)
    message = str(info.value)
    assert "given GPU 0" in message and "CPUExecutionProvider" in message and "refusing to start" in message
    assert any(r.levelname == "ERROR" and "refusing to start" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("provider", "gpus"), [("CUDAExecutionProvider", ["0"]), ("CPUExecutionProvider", [])])
def test_cuda_on_a_gpu_and_cpu_without_one_start(provider, gpus):
    require_cuda_when_given_a_gpu("generator", provider, gpu_ids=gpus)


def test_a_gpu_replica_on_a_simulated_node_runs_on_the_cpu(monkeypatch):
    """`repoctl simulate`'s GPU workers declare GPUs without a device (SUPPORT_ASSISTANT_SIMULATED_GPUS=1)."""
    monkeypatch.setenv("SUPPORT_ASSISTANT_SIMULATED_GPUS", "1")
    require_cuda_when_given_a_gpu("generator", "CPUExecutionProvider", gpu_ids=["0"])
