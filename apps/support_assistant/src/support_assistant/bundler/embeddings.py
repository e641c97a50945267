"""Embeds the corpus once, at bundle build time, for a bi-encoder reranker.

Every passage (as the reranker reads it: stages.reranker.passage_text) and every sentence the
extractive generator may pick (stages.generator.split_sentences of each passage) goes through the
bundle's own ONNX encoder, the same code path a replica uses, so a cached row equals what the
replica would compute for the same text (up to float rounding from padding in a different batch).
The file format is support_assistant.runtime.embeddings'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from support_assistant.runtime.bundle import sha256_file
from support_assistant.runtime.embeddings import META_FILE, PASSAGES_FILE, SENTENCES_FILE, text_digest
from support_assistant.runtime.encoder import BiEncoder
from support_assistant.schema import Passage
from support_assistant.stages.generator import split_sentences
from support_assistant.stages.reranker import passage_text
from support_assistant.stages.retriever import CHUNKS_FILE

# One intra-op thread: the vectors must not depend on the build machine's core count (a bundle's
# version is the hash of its bytes, and builds are deterministic).
BUILD_THREADS = 1


def build_embeddings(root: Path, reranker_path: str, index_path: str, out_path: str = "embeddings") -> dict[str, Any]:
    """Write `root/out_path/` from the bi-encoder at `root/reranker_path` and the passages at
    `root/index_path`; returns the manifest's `embeddings` entry (paths relative to root)."""
    encoder = BiEncoder(root / reranker_path, threads=BUILD_THREADS)
    chunks_rel = f"{index_path}/{CHUNKS_FILE}"
    with (root / chunks_rel).open(encoding="utf-8") as fh:
        passages = [Passage(**json.loads(line)) for line in fh]
    if [p.id for p in passages] != list(range(len(passages))):
        raise ValueError(f"{chunks_rel}: passage ids must be 0..n-1 in order (the cache's row numbers)")
    texts = [passage_text(p) for p in passages]
    sentences = [split_sentences(p.text) for p in passages]
    offsets = np.cumsum([0] + [len(s) for s in sentences]).tolist()
    flat = [sentence for group in sentences for sentence in group]
    out = root / out_path
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / PASSAGES_FILE, encoder.embed(texts), allow_pickle=False)
    np.save(out / SENTENCES_FILE, encoder.embed(flat), allow_pickle=False)
    (out / META_FILE).write_text(json.dumps({
        "passage_digests": [text_digest(t) for t in texts],
        "sentence_offsets": offsets,
        "sentence_texts": flat,
    }, ensure_ascii=False) + "\n", encoding="utf-8")
    model_rel = f"{reranker_path}/model.onnx"
    return {
        "path": out_path,
        "model": model_rel,
        "model_sha256": sha256_file(root / model_rel),
        "chunks": chunks_rel,
        "chunks_sha256": sha256_file(root / chunks_rel),
        "passages": len(passages),
        "sentences": len(flat),
        "dim": encoder.dim,
    }
