"""Retriever stage: BM25 (bm25s) over passages of Markdown/text documents chunked by section.

The index is built ahead of time (image build, or `make bundle` locally) by
support_assistant.bundler.index and loaded read-only at replica start, so a replica never tokenizes
the corpus on the request path. The files below are the format the two share.
"""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
from bm25s.tokenization import Tokenizer

from support_assistant.schema import Passage

CHUNKS_FILE = "chunks.jsonl"
INDEX_SUBDIR = "bm25"
STOPWORDS = "en"


class Retriever:
    def __init__(self, index_dir: Path) -> None:
        index_dir = Path(index_dir)
        self._model = bm25s.BM25.load(index_dir / INDEX_SUBDIR)
        self._tokenizer = Tokenizer(stopwords=STOPWORDS)
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

