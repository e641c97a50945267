"""Retriever stage: BM25 (bm25s) over Markdown/text documents chunked by section.

The index is built ahead of time (image build, or `make bundle` locally) by `build_index` and
loaded read-only at replica start, so a replica never tokenizes the corpus on the request path.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import bm25s
from bm25s.tokenization import Tokenizer

CHUNKS_FILE = "chunks.jsonl"
INDEX_SUBDIR = "bm25"
DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt")
# Files in a corpus folder that describe the folder rather than a failure.
SKIPPED_FILES = {"README.md", "index.md"}
_HEADING = re.compile(r"^(#{1,3})\s+(.*\S)\s*$")


@dataclass(frozen=True)
class Passage:
    id: int
    source: str  # path relative to the corpus folder
    title: str  # document title
    section: str  # section heading ("" for the text before the first section)
    text: str
    score: float = 0.0


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
    tokenizer = Tokenizer(stopwords="en")
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


class Retriever:
    def __init__(self, index_dir: Path) -> None:
        index_dir = Path(index_dir)
        self._model = bm25s.BM25.load(index_dir / INDEX_SUBDIR)
        self._tokenizer = Tokenizer(stopwords="en")
        self._tokenizer.load_vocab(str(index_dir / INDEX_SUBDIR))
        self._tokenizer.load_stopwords(str(index_dir / INDEX_SUBDIR))
        with (index_dir / CHUNKS_FILE).open(encoding="utf-8") as fh:
            self._chunks = [json.loads(line) for line in fh]

    def __len__(self) -> int:
        return len(self._chunks)

    def search(self, query: str, k: int) -> list[Passage]:
        """Top-k passages with a positive BM25 score (none when no query word is in the corpus)."""
        # update_vocab=False: words the corpus never saw cannot match anything, and must not grow
        # the vocabulary of a long-running replica.
        tokens = self._tokenizer.tokenize([query], update_vocab=False, show_progress=False, return_as="ids")
        if not tokens or not tokens[0]:
            return []
        k = min(k, len(self._chunks))
        ids, scores = self._model.retrieve(tokens, k=k, show_progress=False)
        return [
            Passage(**{**self._chunks[int(i)], "score": float(s)})
            for i, s in zip(ids[0], scores[0], strict=True)
            if s > 0
        ]


def passage_dict(passage: Passage) -> dict:
    return asdict(passage)
