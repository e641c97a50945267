"""Overload on the dev config: 64 closed-loop clients get only 200s and fast JSON 503s with
Retry-After, and the answers per second stay near what 8 clients get; as many clients as the
pipeline admits get only 200s.

A smaller real size than the documented full run (`make reliability`: 5,000 requests at 64, see
docs/reliability.md); both print counts and percentiles. Loopback only, bounded in count.
"""

from __future__ import annotations

import asyncio

import pytest
from live import deploy_dev, deployment, scrape_series
from loadgen import percentile, run_load

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

BASELINE_REQUESTS, BASELINE_CONCURRENCY = 300, 8
OVERLOAD_REQUESTS, OVERLOAD_CONCURRENCY = 1000, 64
# The acceptance is 90% at full size (`make reliability`, docs/reliability.md). This run lasts
# seconds: all 64 clients start in the same millisecond, the last ones spend the end of it waiting
# out a Retry-After, and it shares the machine with the suite (0.59 with 400 requests at 64, 0.80
# with these sizes), hence the margin; it still fails on the collapse issue 11 reported (0.1 of the
# c=8 rate).
MIN_GOODPUT_RATIO = 0.6
# "Well under a second": a refusal must not cost the client a wait like an answer's.
MAX_REFUSAL_P99_S = 1.0


def test_overload_gets_answers_and_fast_retryable_refusals_only(local_ray):
    deploy_dev(local_ray)
    asyncio.run(run_load(local_ray.url, 16, 4))  # warm every replica's first batch
    baseline = asyncio.run(run_load(local_ray.url, BASELINE_REQUESTS, BASELINE_CONCURRENCY))
    print(baseline.summary())
    overload = asyncio.run(run_load(local_ray.url, OVERLOAD_REQUESTS, OVERLOAD_CONCURRENCY))
    print(overload.summary())

    assert len(overload.outcomes) == OVERLOAD_REQUESTS  # every request accounted for
    assert set(baseline.statuses()) == {200}, baseline.summary()
    assert set(overload.statuses()) <= {200, 503}, overload.summary()  # no 504, 5xx or connection error
    refused = [o for o in overload.outcomes if o.status == 503]
    assert refused, "64 clients on 2 cores never got a refusal: the test did not overload anything"
    for outcome in refused:
        assert outcome.retry_after and int(outcome.retry_after) >= 1, outcome
        assert outcome.code == "stage_unavailable" and outcome.stage, outcome
    assert percentile(overload.latencies(503), 99) < MAX_REFUSAL_P99_S, overload.summary()
    # The gate in Serve's proxy does the refusing (its limit is the Ingress's max_in_flight; a few
    # can still come from inside, e.g. a stage's queue, naming that stage), and counts each refusal
    # under the name the recording rules read.
    at_proxy = [o for o in refused if o.stage == "ingress"]
    assert len(at_proxy) >= 0.9 * len(refused), overload.summary()

    def counted(series: list[tuple[dict[str, str], float]]) -> float:
        return sum(v for labels, v in series if labels.get("reason") == "full")

    series = scrape_series(local_ray.metrics_port, "ray_support_assistant_proxy_refusals_total",
                           until=lambda found: counted(found) >= len(at_proxy))
    assert counted(series) >= len(at_proxy), series
    assert all(labels.get("application") == "support-assistant" for labels, _ in series), series
    assert overload.goodput >= MIN_GOODPUT_RATIO * baseline.goodput, (baseline.summary(), overload.summary())


def test_as_many_clients_as_the_pipeline_admits_are_all_answered(local_ray):
    # A request's place at the proxy gate and the ingress is free by the time its client has the
    # answer, so a client that sends its next request at once is let in (the gate used to hold the
    # place until Serve's proxy returned, after the last byte, and refused such clients), and every
    # stage's queue holds what the ingress admits (a Reranker queue of 16 refused a few).
    config = deploy_dev(local_ray)
    admitted = deployment(config, "Ingress")["user_config"]["max_in_flight"]
    # No warm-up: the first wave meets replicas that have not run a batch yet.
    report = asyncio.run(run_load(local_ray.url, 10 * admitted, admitted))
    print(report.summary())
    assert len(report.outcomes) == 10 * admitted
    refused = [(o.status, o.code, o.stage) for o in report.outcomes if o.status != 200]
    assert not refused, (refused, report.summary())
