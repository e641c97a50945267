"""Builds the retriever's BM25 index from a corpus folder (bundle build time, never on a replica).

Documents are chunked at `##`/`###` headings; each chunk is one passage the retriever can return.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import bm25s
from bm25s.tokenization import Tokenizer

from support_assistant.stages.retriever import CHUNKS_FILE, INDEX_SUBDIR, STOPWORDS

DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt")
# Files in a corpus folder that describe the folder rather than a failure.
SKIPPED_FILES = {"README.md", "index.md"}
_HEADING = re.compile(r"^(#{1,3})\s+(.*\S)\s*$")


def chunk_markdown(text: str, source: str) -> list[dict]:
    """Split a document at `##`/`###` headings; the `#` heading is the document title."""
    title, section, lines, chunks = Path(source).stem, "", [], []

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            chunks.append({"source": source, "title": title, "section": section, "text": body})
        lines.clear()

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading and len(heading.group(1)) == 1 and not chunks and not lines:
            title = heading.group(2)
        elif heading and len(heading.group(1)) > 1:
            flush()
            section = heading.group(2)
        else:
            lines.append(line)
    flush()
    return chunks


def _searchable(chunk: dict) -> str:
    # Titles and headings carry the symptom words ("Pending", "OOMKilled"), so they are indexed too.
    return f"{chunk['title']}\n{chunk['section']}\n{chunk['text']}"


def build_index(corpus_dir: Path, out_dir: Path) -> dict:
    """Index every Markdown/text file under corpus_dir into out_dir; returns what the manifest records."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    files = sorted(
        p for p in corpus_dir.rglob("*") if p.suffix in DOCUMENT_SUFFIXES and p.name not in SKIPPED_FILES
    )
    if not files:
        raise ValueError(f"{corpus_dir}: no {'/'.join(DOCUMENT_SUFFIXES)} documents to index")
    chunks = []
    for path in files:
        chunks.extend(chunk_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(corpus_dir))))
    for i, chunk in enumerate(chunks):
        chunk["id"] = i
    tokenizer = Tokenizer(stopwords=STOPWORDS)
    corpus_tokens = tokenizer.tokenize([_searchable(c) for c in chunks], show_progress=False, return_as="tuple")
    model = bm25s.BM25()
    model.index(corpus_tokens, show_progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / INDEX_SUBDIR, show_progress=False)
    tokenizer.save_vocab(str(out_dir / INDEX_SUBDIR))
    tokenizer.save_stopwords(str(out_dir / INDEX_SUBDIR))
    with (out_dir / CHUNKS_FILE).open("w", encoding="utf-8") as fh:
        for chunk in chunks:
            fh.write(json.dumps(chunk, ensure_ascii=False) + "\n")
    return {"documents": len(files), "passages": len(chunks), "corpus": corpus_dir.name}
