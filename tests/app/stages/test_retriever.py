from itertools import pairwise
from pathlib import Path

import pytest
from support_assistant.stages.retriever import Retriever, build_index, chunk_markdown


def test_chunks_by_section_with_document_title():
    chunks = chunk_markdown("# Pods Pending\nintro\n## Symptom\nPending pods.\n### Detail\nMore.\n", "a.md")
    assert [(c["title"], c["section"], c["text"]) for c in chunks] == [
        ("Pods Pending", "", "intro"),
        ("Pods Pending", "Symptom", "Pending pods."),
        ("Pods Pending", "Detail", "More."),
    ]


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


def test_user_corpus_folder(tmp_path: Path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "db.md").write_text("# Database\n## Symptom\nPostgres connection refused.\n")
    (corpus / "sub" / "net.txt").write_text("DNS lookups time out inside the cluster.\n")
    info = build_index(corpus, tmp_path / "index")
    assert info["documents"] == 2
    retriever = Retriever(tmp_path / "index")
    assert retriever.search("postgres refused", k=3)[0].source == "db.md"
    assert retriever.search("dns timeout", k=3)[0].source == "sub/net.txt"


def test_empty_corpus_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match=r"no .* documents"):
        build_index(tmp_path, tmp_path / "index")
