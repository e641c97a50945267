"""Plain numpy BERT forward pass, the oracle for the hand-built ONNX graph.

Deliberately written apart from `minilm_export`: it reads the Hugging Face tensor names and
config directly, follows the textbook formulas, masks with -inf/where instead of an additive bias
and uses math.erf, so a wiring mistake in the graph builder cannot be mirrored here.
Slow (float64, Python-level erf); meant for tests on a handful of sentences.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


class ReferenceBert:
    def __init__(self, model_dir: str | Path) -> None:
        from safetensors.numpy import load_file

        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        raw = load_file(str(model_dir / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items() if v.dtype != np.int64}

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return np.einsum("bsi,oi->bso", x, self.w[f"{name}.weight"]) + self.w[f"{name}.bias"]

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                      token_type_ids: np.ndarray) -> np.ndarray:
        cfg, w = self.cfg, self.w
        eps = cfg["layer_norm_eps"]
        n_heads = cfg["num_attention_heads"]
        batch, seq = input_ids.shape
        d_head = cfg["hidden_size"] // n_heads

        x = (w["embeddings.word_embeddings.weight"][input_ids]
             + w["embeddings.position_embeddings.weight"][np.arange(seq)][None, :, :]
             + w["embeddings.token_type_embeddings.weight"][token_type_ids])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        keep = attention_mask.astype(bool)[:, None, None, :]  # [batch, 1, 1, key]

        for layer in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{layer}"

            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(batch, seq, n_heads, d_head)

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d_head)
            probs = _softmax(np.where(keep, scores, -np.inf))
            ctx = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, n_heads * d_head)
            x = _layer_norm(x + self._dense(ctx, f"{p}.attention.output.dense"),
                            w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"],
                            eps)
            ffn = self._dense(_gelu(self._dense(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = _layer_norm(x + ffn, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps)
        return x

    def sentence_embedding(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                           token_type_ids: np.ndarray) -> np.ndarray:
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        m = attention_mask.astype(np.float64)
        mean = (hidden * m[:, :, None]).sum(axis=1) / m.sum(axis=1, keepdims=True)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    def classify(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray,
                 weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """BertForSequenceClassification head: tanh pooler on [CLS], then a linear classifier."""
        cls = self.hidden_states(input_ids, attention_mask, token_type_ids)[:, 0, :]
        pooled = np.tanh(cls @ self.w["pooler.dense.weight"].T + self.w["pooler.dense.bias"])
        return pooled @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
