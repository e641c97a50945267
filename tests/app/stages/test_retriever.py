from itertools import pairwise

import pytest
from support_assistant.stages.retriever import Retriever


@pytest.fixture(scope="module")
def runbook_retriever(local_bundle) -> Retriever:
    return Retriever(local_bundle.index_dir)


@pytest.mark.parametrize(
    ("question", "expected_source"),
    [
        ("worker pod stays pending because no node has a free nvidia.com/gpu", "RayGPUPodUnschedulable.md"),
        ("rayservice stuck initializing after deploy", "RayServiceNotReady.md"),
        ("container killed oomkilled out of memory", "RayPodOOMKilled.md"),
    ],
)
def test_finds_the_runbook_for_a_symptom(runbook_retriever, question, expected_source):
    results = runbook_retriever.search(question, k=5)
    assert results[0].source == expected_source
    assert all(a.score >= b.score for a, b in pairwise(results))


def test_no_match_returns_nothing(runbook_retriever):
    assert runbook_retriever.search("zzzqx qqqvv", k=5) == []
