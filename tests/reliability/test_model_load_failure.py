"""A corrupted model file: the replica refuses to start, the app reports not ready, and the
model-load-failure counter is exported under the name and labels the alert rule reads, which then
fires in promtool on exactly that series (the metric the live run exports, not a hand-written one).
"""

from __future__ import annotations

import shutil

import pytest
from live import deploy_dev, dev_config, request, scrape_series
from promtest import NAMESPACE, alert_fires_on, selector
from repoctl.local_run import deploy

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

METRIC = "ray_support_assistant_model_load_failures_total"


def corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def broken(local_ray, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("corrupt") / "bundle"
    shutil.copytree(local_ray.bundle_dir, bundle)
    onnx = sorted((bundle / "reranker").rglob("*.onnx"))
    assert onnx, "no reranker ONNX file in the bundle"
    corrupt(onnx[0])
    failure = None
    try:
        deploy(dev_config(local_ray, bundle_dir=bundle), timeout_s=180)
    except (RuntimeError, TimeoutError) as exc:
        failure = str(exc)
    yield local_ray, failure, onnx[0].name
    deploy_dev(local_ray)  # the good bundle again for whatever runs next


def test_the_replica_refuses_to_start_and_the_app_says_not_ready(broken):
    from ray import serve

    local_ray, failure, filename = broken
    assert failure is not None, "the app deployed with a corrupted model file"
    reranker = serve.status().applications["support-assistant"].deployments["Reranker"]
    assert reranker.replica_states.get("RUNNING", 0) == 0, reranker
    assert "sha256" in reranker.message or filename in reranker.message, reranker.message
    status, headers, body = request(f"{local_ray.url}/readyz", method="GET", timeout_s=30)
    assert status == 503 and headers.get("retry-after"), body
    assert body["status"] == "not_ready" and body["stages"]["reranker"]["running_replicas"] == 0, body


def test_the_alert_fires_on_the_series_the_live_run_exports(broken, rendered, tmp_path):
    local_ray, _, _ = broken
    series = [(labels, value) for labels, value in scrape_series(local_ray.metrics_port, METRIC)
              if labels.get("model") == "reranker"]
    assert series, f"{METRIC}{{model=\"reranker\"}} not exported"
    labels, value = series[0]
    assert value >= 1 and labels["deployment"] == "Reranker" and labels["application"] == "support-assistant"
    # What the PodMonitor's scrape adds in a cluster; everything else exactly as Ray exported it.
    labels = {**labels, "namespace": NAMESPACE}
    result = alert_fires_on(rendered["dev"], [{"series": selector(METRIC, labels), "values": f"_x10 {value:g}x30"}],
                            "SupportAssistantModelLoadFailure", "20m", [{
        "exp_labels": {"namespace": "support-assistant", "application": "support-assistant",
                       "deployment": "Reranker", "model": "reranker", "layer": "application",
                       "severity": "critical"},
        "exp_annotations": {
            "summary": "Deployment support-assistant/Reranker failed to load model reranker.",
            "description": "Replicas of deployment Reranker (application support-assistant, RayService "
                           "support-assistant, namespace support-assistant) failed to load reranker "
                           "from the model bundle in the last 15 minutes.",
            "runbook_url": "https://github.com/acme-platform/support-assistant-gitops/blob/main/docs/"
                           "runbooks/SupportAssistantModelLoadFailure.md",
        },
    }], tmp_path)
    assert result.returncode == 0, f"{selector(METRIC, labels)}\n{result.stdout}{result.stderr}"
