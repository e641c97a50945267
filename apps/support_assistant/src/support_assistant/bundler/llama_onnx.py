"""An ONNX graph of a Llama decoder with a KV cache, written with `onnx.helper` from GGUF weights.

The graph has the inputs and outputs of Optimum's `text-generation-with-past` exports, which is
what `support_assistant.runtime.decoder.Decoder` drives: `input_ids`, `attention_mask`,
`position_ids` and `past_key_values.{i}.key|value` [batch, kv_heads, past, head_dim] in, `logits`
and `present.{i}.key|value` out. One difference, on purpose: `logits` holds the last position only
([batch, 1, vocab]), which is all that generation reads; 49,152 logits for every prompt position
would cost an eighth of a prefill's arithmetic.

Two weight formats, same graph otherwise:
  fp32  every matrix dequantized to float32 (the reference; 400 MiB)
  q4    the file's blocks kept as they are, run by ONNX Runtime's com.microsoft MatMulNBits:
        Q4_1 matrices 4-bit, the Q8_0 token embedding (tied with the output layer) 8-bit.

Q4_1 stores each block of 32 as x = d*q + m with q in 0..15. MatMulNBits computes (q - z) * s per
block, and its zero points z are either 4-bit integers or floats. -m/d is not an integer, and float
zero points send ONNX Runtime to a slow generic kernel (measured ~15x slower than fp32 at batch 1),
so the graph uses the default zero point 8 and adds the rest exactly:
    A @ (d*q + m)^T = MatMulNBits(A; s=d, z=8) + blocksum(A) @ (m + 8*d)^T
where blocksum(A) sums each block of 32 inputs. This is exact in real arithmetic (float rounding
aside). Q8_0 (x = d*q, q int8) is stored as q + 128 with the 8-bit default zero point 128: exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support_assistant.bundler.gguf_file import GGML_Q4_1, GGML_Q8_0, QK, GGUFError, GGUFFile

OPSET = 17
MS_DOMAIN = "com.microsoft"
MASK_NEG = -1e9
WeightFormat = Literal["fp32", "q4"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = ("fp32", "q4")
# The 8-bit output layer always quantizes its input to int8 per block (MatMulNBits accuracy_level
# 4): ONNX Runtime's float path for 8-bit weights is ~240x slower on CPU (325 ms vs 1.4 ms a token).
LM_HEAD_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class LlamaConfig:
    num_layers: int
    hidden: int
    ffn: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_base: float
    rms_eps: float
    vocab_size: int
    max_context: int

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> LlamaConfig:
        arch = gguf.field("general.architecture")
        if arch != "llama":
            raise GGUFError(f"{gguf.path}: general.architecture is {arch!r}; only 'llama' is converted")
        hidden = int(gguf.field("llama.embedding_length"))
        heads = int(gguf.field("llama.attention.head_count"))
        head_dim = hidden // heads
        rope_dims = int(gguf.metadata.get("llama.rope.dimension_count", head_dim))
        if rope_dims != head_dim:
            raise GGUFError(f"{gguf.path}: partial rotary embeddings ({rope_dims} of {head_dim}) are not supported")
        if "llama.rope.scaling.type" in gguf.metadata:
            raise GGUFError(f"{gguf.path}: RoPE scaling is not supported")
        tokens = gguf.field("tokenizer.ggml.tokens")
        return cls(
            num_layers=int(gguf.field("llama.block_count")),
            hidden=hidden,
            ffn=int(gguf.field("llama.feed_forward_length")),
            num_heads=heads,
            num_kv_heads=int(gguf.metadata.get("llama.attention.head_count_kv", heads)),
            head_dim=head_dim,
            rope_base=float(gguf.metadata.get("llama.rope.freq_base", 10000.0)),
            rms_eps=float(gguf.field("llama.attention.layer_norm_rms_epsilon")),
            vocab_size=int(gguf.metadata.get("llama.vocab_size", len(tokens))),
            max_context=int(gguf.field("llama.context_length")),
        )


def unpermute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's converter, which reorders the rows of attn_q / attn_k within each head from
    Hugging Face's rotate-half RoPE layout to ggml's interleaved pairs:
    gguf = hf.reshape(n_head, 2, r // n_head // 2, ...).swapaxes(1, 2).reshape(hf.shape).
    Works on any array whose first axis is the weight's rows (floats, block scales, block codes)."""
    r = rows.shape[0]
    return rows.reshape(n_head, r // n_head // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


class _Weights:
    """The GGUF's tensors, rows un-permuted, in the form the chosen weight format needs."""

    def __init__(self, gguf: GGUFFile, config: LlamaConfig) -> None:
        self.gguf, self.config = gguf, config

    def _heads(self, name: str) -> int | None:
        if name.endswith("attn_q.weight"):
            return self.config.num_heads
        if name.endswith("attn_k.weight"):
            return self.config.num_kv_heads
        return None

    def dense(self, name: str) -> np.ndarray:
        w = self.gguf.dequantize(name)
        heads = self._heads(name)
        return unpermute_rows(w, heads) if heads else w

    def q4_1(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, m, q = self.gguf.blocks_q4_1(name)
        heads = self._heads(name)
        if heads:
            d, m, q = (unpermute_rows(a, heads) for a in (d, m, q))
        return d, m, q

    def vector(self, name: str) -> np.ndarray:
        return self.gguf.dequantize(name)


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._consts: dict[tuple[Any, ...], str] = {}

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def const(self, value: Any, dtype: Any) -> str:
        arr = np.array(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"c{len(self._consts)}", arr)
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, inputs: list[str], out: str, domain: str = "", **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}/{op_type}", domain=domain or None,
                                           **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], outs: list[str], **attrs: Any) -> list[str]:
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{outs[0]}/{op_type}", **attrs))
        return outs


class _Builder:
    def __init__(self, gguf: GGUFFile, config: LlamaConfig, weights: WeightFormat, accuracy_level: int) -> None:
        self.c, self.w, self.fmt, self.acc = config, _Weights(gguf, config), weights, accuracy_level
        self.g = _Graph()

    # ---- linear layers ----------------------------------------------------------------------

    def linear(self, x: str, names: list[str], out: str, row_scale: list[float] | None = None) -> str:
        """x @ concat(W_names)^T: several matrices that read the same input run as one."""
        scales = row_scale or [1.0] * len(names)
        if self.fmt == "fp32":
            w = np.concatenate([self.w.dense(n) * s for n, s in zip(names, scales, strict=True)], axis=0)
            return self.g.op("MatMul", [x, self.g.init(f"{out}.weight", w.T)], out)
        parts = []
        for n, s in zip(names, scales, strict=True):
            if self.w.gguf.tensor(n).ggml_type != GGML_Q4_1:
                raise GGUFError(f"{self.w.gguf.path}: {n} is {self.w.gguf.tensor(n).type_name}; the q4 graph "
                                "expects Q4_1 matrices")
            d, m, q = self.w.q4_1(n)
            # Scaling d and m by a power of two (the attention scale folded into q) is exact.
            parts.append((d * np.float32(s), m * np.float32(s), q))
        d = np.concatenate([p[0] for p in parts])
        m = np.concatenate([p[1] for p in parts])
        q = np.concatenate([p[2] for p in parts])
        n_out, blocks = d.shape
        k = blocks * QK
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # element 2i low nibble, 2i+1 high
        main = self.g.op("MatMulNBits", [x, self.g.init(f"{out}.qweight", packed),
                                         self.g.init(f"{out}.scales", d.reshape(-1))],
                         f"{out}.main", domain=MS_DOMAIN, K=k, N=n_out, bits=4, block_size=QK,
                         accuracy_level=self.acc)
        correction = (m + 8.0 * d).astype(np.float32).T  # [blocks, n_out]
        sums = self.block_sums(x, blocks)
        fix = self.g.op("MatMul", [sums, self.g.init(f"{out}.block_offsets", correction)], f"{out}.offset")
        return self.g.op("Add", [main, fix], out)

    def block_sums(self, x: str, blocks: int) -> str:
        g = self.g
        grouped = g.op("Reshape", [x, g.ints(0, 0, blocks, QK)], f"{x}.blocks")
        return g.op("ReduceSum", [grouped, g.ints(-1)], f"{x}.block_sums", keepdims=0)

    # ---- pieces ------------------------------------------------------------------------------

    def rms_norm(self, x: str, weight: str, out: str) -> str:
        g = self.g
        var = g.op("ReduceMean", [g.op("Mul", [x, x], f"{out}.sq")], f"{out}.var", axes=[-1], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(self.c.rms_eps, np.float32)],
                                                      f"{out}.var_eps")], f"{out}.std")], f"{out}.inv")
        normed = g.op("Mul", [x, inv], f"{out}.normed")
        return g.op("Mul", [normed, g.init(f"{out}.weight", self.w.vector(weight))], out)

    def embed(self) -> str:
        g, c = self.g, self.c
        if self.fmt == "fp32":
            return g.op("Gather", ["embed.weight", "input_ids"], "embedded", axis=0)
        codes = g.op("Cast", [g.op("Gather", ["embed.qweight", "input_ids"], "embed.rows", axis=0)],
                     "embed.rows_f", to=TensorProto.FLOAT)
        centred = g.op("Sub", [codes, g.const(128.0, np.float32)], "embed.codes")
        scales = g.op("Unsqueeze", [g.op("Gather", ["embed.scales2d", "input_ids"], "embed.row_scales", axis=0),
                                    g.ints(-1)], "embed.row_scales_u")
        return g.op("Reshape", [g.op("Mul", [centred, scales], "embed.deq"), g.ints(0, 0, c.hidden)], "embedded")

    def embedding_tables(self) -> None:
        name = "token_embd.weight"
        info = self.w.gguf.tensor(name)
        if self.fmt == "fp32":
            self.g.init("embed.weight", self.w.dense(name))
            return
        if info.ggml_type != GGML_Q8_0:
            raise GGUFError(f"{self.w.gguf.path}: {name} is {info.type_name}; the q4 graph expects Q8_0")
        d, q = self.w.gguf.blocks_q8_0(name)
        self.g.init("embed.qweight", (q.astype(np.int16) + 128).astype(np.uint8))  # [vocab, blocks, 32]
        self.g.init("embed.scales2d", d)  # [vocab, blocks]

    def lm_head(self, h_last: str) -> str:
        """Logits of the last position from the tied embedding table."""
        g, c = self.g, self.c
        if "output.weight" in self.w.gguf.tensors:
            raise GGUFError(f"{self.w.gguf.path}: an untied output.weight is not supported")
        if self.fmt == "fp32":
            flat = g.op("Reshape", [h_last, g.ints(-1, c.hidden)], "h_last2d")
            logits = g.op("Gemm", [flat, "embed.weight"], "logits2d", transB=1)
            return g.op("Unsqueeze", [logits, g.ints(1)], "logits")
        blocks = c.hidden // QK
        y = g.op("MatMulNBits", [h_last, "embed.qweight", g.init("embed.scales", self.w.gguf.blocks_q8_0(
            "token_embd.weight")[0].reshape(-1))], "logits_nbits", domain=MS_DOMAIN, K=blocks * QK,
            N=c.vocab_size, bits=8, block_size=QK, accuracy_level=LM_HEAD_ACCURACY_LEVEL)
        return g.op("Identity", [y], "logits")

    # ---- the graph ---------------------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        g, c = self.g, self.c
        hd, nh, nkv = c.head_dim, c.num_heads, c.num_kv_heads
        group = nh // nkv
        self.embedding_tables()

        def dim(tensor: str, axis: int, name: str) -> str:
            return g.op("Squeeze", [g.op("Shape", [tensor], f"{name}.1d", start=axis, end=axis + 1), g.ints(0)], name)

        # Causal + padding mask: query i (absolute index past+i) sees key j when j <= past+i and
        # attention_mask[j] is 1; [batch, 1, group*seq, total], repeated for the grouped queries below.
        past_len = dim("past_key_values.0.key", 2, "past_len")
        seq_len = dim("input_ids", 1, "seq_len")
        total_len = dim("attention_mask", 1, "total_len")
        one, zero = g.const(1, np.int64), g.const(0, np.int64)
        q_idx = g.op("Range", [past_len, g.op("Add", [past_len, seq_len], "q_end"), one], "q_idx")
        k_idx = g.op("Range", [zero, total_len, one], "k_idx")
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_idx, g.ints(0)], "k_row"),
                                      g.op("Unsqueeze", [q_idx, g.ints(1)], "q_col")], "causal")
        key_ok = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask_bool", to=TensorProto.BOOL),
                                    g.ints(1, 2)], "key_ok")
        bias = g.op("Where", [g.op("And", [causal, key_ok], "allowed"), g.const(0.0, np.float32),
                              g.const(MASK_NEG, np.float32)], "attn_bias1")
        bias = g.op("Concat", [bias] * group, "attn_bias", axis=2)

        # Rotary tables from position_ids, rotate-half layout: [batch, 1, seq, head_dim].
        inv_freq = (1.0 / (c.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))).astype(np.float32)
        pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], "pos_f", to=TensorProto.FLOAT), g.ints(-1)], "pos_u")
        freqs = g.op("Mul", [pos, g.init("rope.inv_freq", inv_freq)], "rope.freqs")
        angles = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], "rope.angles3", axis=-1), g.ints(1)], "rope.angles")
        cos = g.op("Cos", [angles], "rope.cos")
        sin = g.op("Sin", [angles], "rope.sin")
        # rotate_half(x) * sin == swap_halves(x) * [-sin_lo, sin_hi]
        sin_lo, sin_hi = g.ops("Split", [sin, g.ints(hd // 2, hd // 2)], ["rope.sin_lo", "rope.sin_hi"], axis=-1)
        signed_sin = g.op("Concat", [g.op("Neg", [sin_lo], "rope.nsin_lo"), sin_hi], "rope.signed_sin", axis=-1)

        def rope(x: str, name: str) -> str:
            lo, hi = g.ops("Split", [x, g.ints(hd // 2, hd // 2)], [f"{name}.lo", f"{name}.hi"], axis=-1)
            swapped = g.op("Concat", [hi, lo], f"{name}.swapped", axis=-1)
            return g.op("Add", [g.op("Mul", [x, cos], f"{name}.cos"),
                                g.op("Mul", [swapped, signed_sin], f"{name}.sin")], name)

        x = self.embed()
        scale = 1.0 / np.sqrt(hd)
        if scale != 2.0 ** np.round(np.log2(scale)):
            raise GGUFError("head_dim must be a power of four, so the attention scale folds exactly into q")
        for i in range(c.num_layers):
            p, b = f"layer{i}", f"blk.{i}"
            h = self.rms_norm(x, f"{b}.attn_norm.weight", f"{p}.attn_norm")
            qkv = self.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"], f"{p}.qkv",
                              row_scale=[float(scale), 1.0, 1.0])
            q, k, v = g.ops("Split", [qkv, g.ints(nh * hd, nkv * hd, nkv * hd)], [f"{p}.q", f"{p}.k", f"{p}.v"],
                            axis=-1)

            def heads(t: str, n: int, name: str) -> str:
                return g.op("Transpose", [g.op("Reshape", [t, g.ints(0, 0, n, hd)], f"{name}.split")], name,
                            perm=[0, 2, 1, 3])

            q_r = rope(heads(q, nh, f"{p}.q_heads"), f"{p}.q_rot")
            k_r = rope(heads(k, nkv, f"{p}.k_heads"), f"{p}.k_rot")
            k_all = g.op("Concat", [f"past_key_values.{i}.key", k_r], f"present.{i}.key", axis=2)
            v_all = g.op("Concat", [f"past_key_values.{i}.value", heads(v, nkv, f"{p}.v_heads")],
                         f"present.{i}.value", axis=2)
            # Grouped-query attention without copying the cache: the `group` query heads that share
            # a KV head are stacked along the sequence axis ([b, kv, group*seq, hd]).
            q_g = g.op("Reshape", [q_r, g.ints(0, nkv, -1, hd)], f"{p}.q_grouped")
            scores = g.op("MatMul", [q_g, g.op("Transpose", [k_all], f"{p}.k_t", perm=[0, 1, 3, 2])], f"{p}.scores")
            probs = g.op("Softmax", [g.op("Add", [scores, bias], f"{p}.masked")], f"{p}.probs", axis=-1)
            ctx = g.op("Reshape", [g.op("MatMul", [probs, v_all], f"{p}.ctx_g"), g.ints(0, nh, -1, hd)],
                       f"{p}.ctx_heads")
            ctx = g.op("Reshape", [g.op("Transpose", [ctx], f"{p}.ctx_t", perm=[0, 2, 1, 3]),
                                   g.ints(0, 0, nh * hd)], f"{p}.ctx")
            x = g.op("Add", [x, self.linear(ctx, [f"{b}.attn_output.weight"], f"{p}.o")], f"{p}.resid1")

            h2 = self.rms_norm(x, f"{b}.ffn_norm.weight", f"{p}.ffn_norm")
            gate_up = self.linear(h2, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"], f"{p}.gate_up")
            gate, up = g.ops("Split", [gate_up, g.ints(c.ffn, c.ffn)], [f"{p}.gate", f"{p}.up"], axis=-1)
            act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}.sig")], f"{p}.silu"), up], f"{p}.act")
            x = g.op("Add", [x, self.linear(act, [f"{b}.ffn_down.weight"], f"{p}.down")], f"{p}.resid2")

        h = self.rms_norm(x, "output_norm.weight", "final_norm")
        h_last = g.op("Slice", [h, g.ints(-1), g.ints(np.iinfo(np.int64).max), g.ints(1)], "h_last")
        self.lm_head(h_last)

        kv = ["batch_size", nkv, "past_sequence_length", hd]
        present = ["batch_size", nkv, "total_sequence_length", hd]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 1, c.vocab_size])]
        for i in range(c.num_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present))
        graph = helper.make_graph(g.nodes, f"llama_decoder_{self.fmt}", inputs, outputs, initializer=g.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.fmt == "q4":
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="support-assistant-gguf-llama",
                                  producer_version="1")
        model.ir_version = 8
        return model


def build_llama_decoder(gguf: GGUFFile, weights: WeightFormat = "fp32", accuracy_level: int = 0) -> onnx.ModelProto:
    """The decoder graph for the file's weights. `accuracy_level` is MatMulNBits' for the 4-bit
    matrices (q4 only): 0 computes in float32, 4 quantizes activations to int8 per block first
    (faster; llama.cpp's own CPU kernels do the same for Q4_1)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    config = LlamaConfig.from_gguf(gguf)
    if config.num_heads % config.num_kv_heads:
        raise GGUFError(f"{gguf.path}: {config.num_heads} heads do not group over {config.num_kv_heads} KV heads")
    return _Builder(gguf, config, weights, accuracy_level).build()
