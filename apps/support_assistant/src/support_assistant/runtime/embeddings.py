"""Passage and sentence vectors computed once, when the bundle is built, for a bi-encoder bundle.

With a bi-encoder, a passage's vector depends only on the passage and the model, and both are fixed
in a bundle; so the reranker and the extractive generator look the corpus's vectors up here and
embed only the question at request time. The bundler (support_assistant.bundler.embeddings) writes
these files; this module reads and checks them.

Files under the bundle's `embeddings/` (each listed with its sha256 in manifest.json like any file):
  passages.npy    float32 [passages, dim], row i = the passage with id i (its reranker text)
  sentences.npy   float32 [sentences, dim], the extractive generator's candidate sentences
  vectors.json    {"passage_digests": [passages strings], "sentence_offsets": [passages + 1 ints],
                  "sentence_texts": [sentences strings]}: a digest of the text each passage row was
                  computed from (text_digest), and passage i's sentences are rows
                  sentence_offsets[i]:sentence_offsets[i+1], in split order

A row is used only when the text asked about is the text it was computed from (a digest or string
comparison, microseconds), so a lookup can never return another text's vector: anything else, such
as a passage that is not from this corpus, is embedded at request time as without a cache.

The manifest's `embeddings` entry binds them to the exact reranker graph and corpus they were
computed from (their sha256), so a stale cache is refused at load instead of answering with
another model's vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PASSAGES_FILE = "passages.npy"
SENTENCES_FILE = "sentences.npy"
META_FILE = "vectors.json"


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingsError(ValueError):
    """The cached vectors do not belong to this bundle's model or corpus, or are malformed."""


@dataclass(frozen=True)
class CachedVectors:
    passages: np.ndarray  # [passages, dim], L2-normalised
    sentences: np.ndarray  # [sentences, dim], L2-normalised
    passage_digests: list[str]
    offsets: np.ndarray  # [passages + 1]
    sentence_texts: list[str]
    model_sha256: str  # the encoder graph every row was computed with

    @property
    def dim(self) -> int:
        return int(self.passages.shape[1])

    def passage_vectors(self, ids: Sequence[int], texts: Sequence[str]) -> np.ndarray | None:
        """Rows for these passages (id and the text the reranker reads), or None unless the cache
        holds every one of them for exactly that text."""
        for passage_id, text in zip(ids, texts, strict=True):
            if not 0 <= passage_id < len(self.passages) or self.passage_digests[passage_id] != text_digest(text):
                return None
        return self.passages[np.asarray(ids, dtype=np.int64)]

    def sentence_vectors(self, passage_id: int, texts: Sequence[str]) -> np.ndarray | None:
        """The vectors of passage `passage_id`'s sentences, or None unless the cache holds exactly
        `texts` for it (so a changed splitter or passage falls back to embedding, never mismatches)."""
        if not 0 <= passage_id < len(self.offsets) - 1:
            return None
        start, end = int(self.offsets[passage_id]), int(self.offsets[passage_id + 1])
        if self.sentence_texts[start:end] != list(texts):
            return None
        return self.sentences[start:end]


def load_cached_vectors(directory: Path, entry: Mapping[str, Any], files: Mapping[str, str]) -> CachedVectors:
    """Read the cache and check it against the manifest: `entry` is manifest["embeddings"], `files`
    manifest["files"] (whose hashes load_bundle has already verified against the bytes)."""
    for key in ("model", "model_sha256", "chunks", "chunks_sha256"):
        if not isinstance(entry.get(key), str):
            raise EmbeddingsError(f"manifest.json: field 'embeddings.{key}' is missing or not a string")
    for key in ("model", "chunks"):
        if files.get(entry[key]) != entry[f"{key}_sha256"]:
            raise EmbeddingsError(f"manifest.json: embeddings were computed from {entry[key]} with sha256 "
                                  f"{entry[f'{key}_sha256']}, but the bundle's file differs; rebuild the bundle")
    try:
        passages = np.load(directory / PASSAGES_FILE, allow_pickle=False)
        sentences = np.load(directory / SENTENCES_FILE, allow_pickle=False)
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        offsets = np.asarray(meta.get("sentence_offsets", []), dtype=np.int64)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise EmbeddingsError(f"{directory}: cannot read the cached vectors ({exc})") from None
    texts, digests = meta.get("sentence_texts"), meta.get("passage_digests")
    if passages.ndim != 2 or passages.dtype != np.float32:
        raise EmbeddingsError(f"{PASSAGES_FILE}: expected float32 [passages, dim], got {passages.dtype} "
                              f"{list(passages.shape)}")
    if sentences.ndim != 2 or sentences.dtype != np.float32 or sentences.shape[1] != passages.shape[1]:
        raise EmbeddingsError(f"{SENTENCES_FILE}: expected float32 [sentences, {passages.shape[1]}], got "
                              f"{sentences.dtype} {list(sentences.shape)}")
    if (not isinstance(texts, list) or not isinstance(digests, list) or len(digests) != len(passages)
            or len(texts) != len(sentences) or len(offsets) != len(passages) + 1
            or offsets[0] != 0 or offsets[-1] != len(sentences) or np.any(np.diff(offsets) < 0)):
        raise EmbeddingsError(f"{META_FILE}: digests/offsets/texts do not match {PASSAGES_FILE} and "
                              f"{SENTENCES_FILE}")
    return CachedVectors(passages=passages, sentences=sentences, passage_digests=digests, offsets=offsets,
                         sentence_texts=texts, model_sha256=entry["model_sha256"])
