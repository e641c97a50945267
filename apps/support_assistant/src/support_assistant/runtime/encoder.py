"""Rerankers on ONNX Runtime: a bi-encoder (embed + cosine) and a cross-encoder (pair logit).

Both expose `score(query, passages) -> np.ndarray` so the pipeline does not care which kind a
bundle ships. A model directory holds `model.onnx`, `tokenizer.json` and `encoder.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tokenizers import Encoding, Tokenizer

from support_assistant.runtime.session import active_provider, cap_tokenizer_threads, intra_op_threads, make_session

ENCODER_CONFIG = "encoder.json"
RERANKER_KINDS = ("bi-encoder", "cross-encoder")
DEFAULT_MAX_BATCH = 32


class Reranker(Protocol):
    kind: str
    name: str
    revision: str

    @property
    def provider(self) -> str: ...

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray: ...


def _load_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / ENCODER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"encoder config not found: {path}")
    return json.loads(path.read_text())


def _load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    # tokenizer.json files often carry export-time settings (fixed-length padding to 128 in
    # all-MiniLM-L6-v2's case). Truncate at the model limit and pad per batch ourselves, so each
    # text is tokenized once and batches pad only to their own longest member.
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


class _OnnxEncoderBase:
    kind: str

    def __init__(self, model_dir: str | Path, *, max_batch_size: int = DEFAULT_MAX_BATCH,
                 default_max_length: int = 512, threads: int | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model_dir = Path(model_dir)
        self.config = _load_config(self.model_dir)
        self.name: str = self.config.get("name", self.model_dir.name)
        self.revision: str = self.config.get("revision", "unknown")
        self.max_length = int(self.config.get("max_length", default_max_length))
        self.max_batch_size = max_batch_size
        cap_tokenizer_threads(intra_op_threads() if threads is None else threads)
        self.tokenizer = _load_tokenizer(self.model_dir / "tokenizer.json", self.max_length)
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = int(self.config.get("pad_token_id", 0 if pad is None else pad))
        self.session = make_session(self.model_dir / "model.onnx", threads=threads)
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._output_names = [o.name for o in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    def _feed(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        # Some exports drop token_type_ids (single-segment models); feed what the graph takes.
        return {k: v for k, v in feed.items() if k in self._input_names}

    def _batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """Index batches in length order, so each batch pads to similar lengths (less wasted compute
        on padding than batching in arrival order)."""
        order = np.argsort(np.asarray(lengths), kind="stable")
        return [order[i:i + self.max_batch_size] for i in range(0, len(order), self.max_batch_size)]


class BiEncoder(_OnnxEncoderBase):
    """Sentence embeddings; relevance is cosine similarity between query and passage vectors."""

    kind = "bi-encoder"

    def __init__(self, model_dir: str | Path, *, max_batch_size: int = DEFAULT_MAX_BATCH,
                 threads: int | None = None) -> None:
        super().__init__(model_dir, max_batch_size=max_batch_size, default_max_length=256, threads=threads)
        self._has_pooled = "sentence_embedding" in self._output_names
        if not self._has_pooled and "last_hidden_state" not in self._output_names:
            raise ValueError(f"{self.model_dir}/model.onnx has neither sentence_embedding nor last_hidden_state")

    @property
    def dim(self) -> int:
        # Exports may record hidden_size as null; the graph's output shape is the fallback.
        return int(self.config.get("hidden_size") or self.session.get_outputs()[-1].shape[-1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text, in input order."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not a single string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        for idx in self._batches([len(e.ids) for e in encodings]):
            out[idx] = self._run(self._feed([encodings[i] for i in idx]))
        return out

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self._has_pooled:
            (emb,) = self.session.run(["sentence_embedding"], feed)
            return emb
        # Exports without the pooling head (plain feature-extraction): pool and normalise here.
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each passage to the query, float32, in passage order."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        emb = self.embed([query, *passages])
        return emb[1:] @ emb[0]


class CrossEncoder(_OnnxEncoderBase):
    """Scores (query, passage) pairs jointly; the output is the model's relevance logit."""

    kind = "cross-encoder"

    def __init__(self, model_dir: str | Path, *, max_batch_size: int = DEFAULT_MAX_BATCH,
                 threads: int | None = None) -> None:
        super().__init__(model_dir, max_batch_size=max_batch_size, default_max_length=512, threads=threads)
        if "logits" not in self._output_names:
            raise ValueError(f"{self.model_dir}/model.onnx has no 'logits' output (outputs: {self._output_names})")

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Relevance logits (higher is more relevant, unbounded), float32, in pair order."""
        out = np.zeros(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        encodings = self.tokenizer.encode_batch([(a, b) for a, b in pairs])
        for idx in self._batches([len(e.ids) for e in encodings]):
            (logits,) = self.session.run(["logits"], self._feed([encodings[i] for i in idx]))
            if logits.ndim != 2 or logits.shape[1] != 1:
                raise ValueError(f"cross-encoder logits must be [batch, 1], got {list(logits.shape)}")
            out[idx] = logits[:, 0]
        return out

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return self.score_pairs([(query, p) for p in passages])


def load_reranker(model_dir: str | Path, kind: str, *, max_batch_size: int = DEFAULT_MAX_BATCH,
                  threads: int | None = None) -> Reranker:
    """The reranker for a bundle's `models.reranker.kind`."""
    if kind == "bi-encoder":
        return BiEncoder(model_dir, max_batch_size=max_batch_size, threads=threads)
    if kind == "cross-encoder":
        return CrossEncoder(model_dir, max_batch_size=max_batch_size, threads=threads)
    raise ValueError(f"unknown reranker kind {kind!r} (expected one of {', '.join(RERANKER_KINDS)})")
