from pathlib import Path

import pytest
from support_assistant.bundler.index import build_index, chunk_markdown
from support_assistant.stages.retriever import Retriever


def test_chunks_by_section_with_document_title():
    chunks = chunk_markdown("# Pods Pending\nintro\n## Symptom\nPending pods.\n### Detail\nMore.\n", "a.md")
    assert [(c["title"], c["section"], c["text"]) for c in chunks] == [
        ("Pods Pending", "", "intro"),
        ("Pods Pending", "Symptom", "Pending pods."),
        ("Pods Pending", "Detail", "More."),
    ]


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
