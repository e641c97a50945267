"""The bundle's cached vectors: lookups only ever return the vector of the exact text asked about,
and a cache that does not match its manifest or its own shapes is refused with a named reason."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from support_assistant.runtime.bundle import Bundle
from support_assistant.runtime.embeddings import (
    META_FILE,
    PASSAGES_FILE,
    CachedVectors,
    EmbeddingsError,
    load_cached_vectors,
)
from support_assistant.schema import Passage
from support_assistant.stages.reranker import passage_text


@pytest.fixture
def cache_copy(local_bundle: Bundle, tmp_path: Path) -> Path:
    assert local_bundle.embeddings is not None
    return Path(shutil.copytree(local_bundle.root / local_bundle.embeddings["path"], tmp_path / "embeddings"))


def _load(directory: Path, bundle: Bundle) -> CachedVectors:
    return load_cached_vectors(directory, bundle.embeddings, bundle.files)


def test_lookup_needs_the_exact_text(local_bundle: Bundle, cache_copy: Path) -> None:
    vectors = _load(cache_copy, local_bundle)
    first = vectors.sentence_texts[vectors.offsets[0]:vectors.offsets[1]]
    assert vectors.sentence_vectors(0, first) is not None
    assert vectors.sentence_vectors(0, [*first, "one sentence more"]) is None
    assert vectors.sentence_vectors(len(vectors.passages), []) is None
    chunk = json.loads((local_bundle.index_dir / "chunks.jsonl").read_text().splitlines()[3])
    exact = passage_text(Passage(**chunk))
    np.testing.assert_array_equal(vectors.passage_vectors([3], [exact]), vectors.passages[[3]])
    assert vectors.passage_vectors([3], [exact + " "]) is None
    assert vectors.passage_vectors([0], ["not the passage's text"]) is None
    assert vectors.passage_vectors([len(vectors.passages)], ["anything"]) is None
    norms = np.linalg.norm(vectors.passages, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)


def test_malformed_offsets_are_refused(local_bundle: Bundle, cache_copy: Path) -> None:
    meta = json.loads((cache_copy / META_FILE).read_text())
    meta["sentence_offsets"][-1] += 1
    (cache_copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(EmbeddingsError, match=re.escape(META_FILE)):
        _load(cache_copy, local_bundle)


def test_wrong_dtype_is_refused(local_bundle: Bundle, cache_copy: Path) -> None:
    np.save(cache_copy / PASSAGES_FILE, np.load(cache_copy / PASSAGES_FILE).astype(np.float64))
    with pytest.raises(EmbeddingsError, match=re.escape(PASSAGES_FILE)):
        _load(cache_copy, local_bundle)


def test_manifest_entry_must_name_its_sources(local_bundle: Bundle, cache_copy: Path) -> None:
    entry = {k: v for k, v in local_bundle.embeddings.items() if k != "chunks_sha256"}
    with pytest.raises(EmbeddingsError, match=re.escape("embeddings.chunks_sha256")):
        load_cached_vectors(cache_copy, entry, local_bundle.files)
