"""Plain numpy Llama forward pass over a GGUF file, the oracle for the hand-built ONNX decoder.

Deliberately written apart from `bundler/llama_onnx.py`: it reads and dequantizes the file with the
`gguf` package (not the project's reader), keeps llama.cpp's row order for attn_q / attn_k and
applies RoPE the way ggml does on that order (adjacent pairs 2i, 2i+1 rotate together) instead of
un-permuting to Hugging Face's rotate-half layout, repeats the KV heads explicitly, masks with
-inf and computes in float64. A wiring mistake in the graph builder cannot be mirrored here.
It keeps its own KV cache (lists of arrays) so 32+ greedy steps stay affordable on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class ReferenceLlama:
    def __init__(self, gguf_path: str | Path) -> None:
        import gguf
        from gguf import quants

        reader = gguf.GGUFReader(str(gguf_path))

        def field(key: str):
            return reader.fields[key].contents()

        self.n_layers = int(field("llama.block_count"))
        self.n_heads = int(field("llama.attention.head_count"))
        self.n_kv = int(field("llama.attention.head_count_kv"))
        self.hidden = int(field("llama.embedding_length"))
        self.head_dim = self.hidden // self.n_heads
        self.eps = float(field("llama.attention.layer_norm_rms_epsilon"))
        self.base = float(field("llama.rope.freq_base"))
        # gguf's dequantize gives numpy shape [rows = output features, cols = input features]; the
        # matrices are kept transposed ([in, out]) so every product is x @ w.
        self.w = {}
        for t in reader.tensors:
            value = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            self.w[t.name] = np.ascontiguousarray(value.T) if t.name.startswith("blk.") and value.ndim == 2 else value
        self.lm_head = np.ascontiguousarray(self.w.get("output.weight", self.w["token_embd.weight"]).T)
        self.reset()

    def reset(self) -> None:
        self.k_cache: list[list[np.ndarray]] = [[] for _ in range(self.n_layers)]
        self.v_cache: list[list[np.ndarray]] = [[] for _ in range(self.n_layers)]
        self.pos = 0

    def _rope_pairs(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """ggml's normal-mode RoPE: element pairs (2i, 2i+1) of each head rotate by pos * base^(-2i/d)."""
        d = self.head_dim
        theta = positions[:, None] * self.base ** (-np.arange(0, d, 2) / d)  # [seq, d/2]
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]  # [seq, 1, d/2]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def forward(self, token_ids: list[int]) -> np.ndarray:
        """Feed `token_ids` after everything fed so far; returns logits [len(token_ids), vocab]."""
        w, hd = self.w, self.head_dim
        seq = len(token_ids)
        positions = np.arange(self.pos, self.pos + seq, dtype=np.float64)
        x = w["token_embd.weight"][np.array(token_ids)]  # [seq, hidden]
        rep = self.n_heads // self.n_kv
        for i in range(self.n_layers):
            b = f"blk.{i}"
            h = _rms_norm(x, w[f"{b}.attn_norm.weight"], self.eps)
            q = (h @ w[f"{b}.attn_q.weight"]).reshape(seq, self.n_heads, hd)
            k = (h @ w[f"{b}.attn_k.weight"]).reshape(seq, self.n_kv, hd)
            v = (h @ w[f"{b}.attn_v.weight"]).reshape(seq, self.n_kv, hd)
            q, k = self._rope_pairs(q, positions), self._rope_pairs(k, positions)
            self.k_cache[i].append(k)
            self.v_cache[i].append(v)
            keys = np.repeat(np.concatenate(self.k_cache[i]), rep, axis=1)  # [total, heads, hd]
            values = np.repeat(np.concatenate(self.v_cache[i]), rep, axis=1)
            total = keys.shape[0]
            scores = np.matmul(q.transpose(1, 0, 2), keys.transpose(1, 2, 0)) / np.sqrt(hd)  # [heads, seq, total]
            visible = np.arange(total)[None, :] <= (self.pos + np.arange(seq))[:, None]  # [seq, total]
            scores = np.where(visible[None], scores, -np.inf)
            ctx = np.matmul(_softmax(scores), values.transpose(1, 0, 2)).transpose(1, 0, 2).reshape(seq, self.hidden)
            x = x + ctx @ w[f"{b}.attn_output.weight"]
            h = _rms_norm(x, w[f"{b}.ffn_norm.weight"], self.eps)
            ffn = _silu(h @ w[f"{b}.ffn_gate.weight"]) * (h @ w[f"{b}.ffn_up.weight"])
            x = x + ffn @ w[f"{b}.ffn_down.weight"]
        self.pos += seq
        x = _rms_norm(x, w["output_norm.weight"], self.eps)
        return x @ self.lm_head  # tied embeddings unless the file has output.weight

    def greedy(self, prompt_ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
        """`steps` greedy tokens (eos not special-cased) and the last-position logits before each."""
        self.reset()
        logits = self.forward(prompt_ids)[-1]
        tokens, seen = [], []
        for _ in range(steps):
            seen.append(logits)
            tokens.append(int(np.argmax(logits)))
            logits = self.forward([tokens[-1]])[-1]
        return tokens, seen
