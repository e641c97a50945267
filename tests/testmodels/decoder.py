"""A tiny, deterministic, randomly initialised decoder-only LM: a TEST model, not a language model.

It exists so the generation runtime (KV cache, left padding, stop handling, sampling) can be
tested and benchmarked without network access or real weights. Its output is gibberish by
construction. The graph uses exactly the Optimum `text-generation-with-past` layout that
`decoder.Decoder` expects from production exports.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE

TEST_DECODER_NAME = "support-assistant/test-decoder-tiny"
TEST_DECODER_REVISION = "generated"

NUM_LAYERS = 2
NUM_HEADS = 2
HEAD_DIM = 8
HIDDEN = NUM_HEADS * HEAD_DIM
FFN = 4 * HIDDEN
# Characters are tokens here, so prompts are long in tokens; the position table is tiny anyway.
MAX_CONTEXT = 2048
SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|unk|>")
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
OPSET = 17


def _vocab() -> dict[str, int]:
    # One token per printable ASCII character: stop strings then match on character boundaries,
    # and decoding a partial sequence never produces half a UTF-8 character.
    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    return {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}


def build_test_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(BPE(vocab=_vocab(), merges=[], unk_token=SPECIAL_TOKENS[UNK_ID]))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def build_test_decoder_onnx(vocab_size: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(op_type: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}/{op_type}", **attrs))
        return out

    def rand(name: str, shape: tuple[int, ...], std: float) -> str:
        return const(name, (rng.standard_normal(shape) * std).astype(f32))

    def linear(x: str, n_in: int, n_out: int, name: str, std: float | None = None) -> str:
        w = rand(f"{name}.weight", (n_in, n_out), std if std is not None else 1.0 / np.sqrt(n_in))
        b = rand(f"{name}.bias", (n_out,), 0.02)
        return op("Add", [op("MatMul", [x, w], f"{name}.mm"), b], f"{name}.out")

    def layer_norm(x: str, name: str) -> str:
        return op("LayerNormalization", [x, const(f"{name}.weight", np.ones(HIDDEN, f32)),
                                         const(f"{name}.bias", np.zeros(HIDDEN, f32))], f"{name}.out",
                  axis=-1, epsilon=1e-5)

    one = const("c.one", np.array(1, np.int64))
    zero = const("c.zero", np.array(0, np.int64))
    squeeze_axes = const("c.axes0", np.array([0], np.int64))

    def scalar_dim(tensor: str, axis: int, name: str) -> str:
        return op("Squeeze", [op("Shape", [tensor], f"{name}.1d", start=axis, end=axis + 1), squeeze_axes], name)

    # Causal + padding mask for queries at absolute positions past_len .. past_len+seq-1 over
    # keys 0 .. total-1 (total = past_len + seq, the attention_mask width).
    past_len = scalar_dim("past_key_values.0.key", 2, "past_len")
    seq_len = scalar_dim("input_ids", 1, "seq_len")
    total_len = scalar_dim("attention_mask", 1, "total_len")
    q_pos = op("Range", [past_len, op("Add", [past_len, seq_len], "q_end"), one], "q_pos")
    k_pos = op("Range", [zero, total_len, one], "k_pos")
    causal = op("LessOrEqual", [op("Unsqueeze", [k_pos, squeeze_axes], "k_row"),
                                op("Unsqueeze", [q_pos, const("c.axes1", np.array([1], np.int64))], "q_col")],
                "causal")
    not_pad = op("Unsqueeze", [op("Cast", ["attention_mask"], "mask_bool", to=TensorProto.BOOL),
                               const("c.axes12", np.array([1, 2], np.int64))], "key_ok")
    allowed = op("And", [causal, not_pad], "allowed")
    bias = op("Where", [allowed, const("c.zero_f", np.array(0.0, f32)), const("c.neg", np.array(-1e9, f32))],
              "attn_bias")

    tok = op("Gather", [rand("embed.tokens", (vocab_size, HIDDEN), 1.0), "input_ids"], "tok_emb", axis=0)
    pos = op("Gather", [rand("embed.positions", (MAX_CONTEXT, HIDDEN), 0.5), "position_ids"], "pos_emb", axis=0)
    x = op("Add", [tok, pos], "x0")

    split = const("c.split", np.array([0, 0, NUM_HEADS, HEAD_DIM], np.int64))
    merge = const("c.merge", np.array([0, 0, HIDDEN], np.int64))
    scale = const("c.scale", np.array(1.0 / np.sqrt(HEAD_DIM), f32))
    inv_sqrt2 = const("c.inv_sqrt2", np.array(1.0 / np.sqrt(2.0), f32))
    one_f = const("c.one_f", np.array(1.0, f32))
    half = const("c.half", np.array(0.5, f32))

    for i in range(NUM_LAYERS):
        p = f"layer{i}"
        h = layer_norm(x, f"{p}.ln1")

        def heads(t: str, name: str) -> str:
            return op("Transpose", [op("Reshape", [t, split], f"{name}.split")], name, perm=[0, 2, 1, 3])

        q = heads(linear(h, HIDDEN, HIDDEN, f"{p}.q"), f"{p}.q_heads")
        k = heads(linear(h, HIDDEN, HIDDEN, f"{p}.k"), f"{p}.k_heads")
        v = heads(linear(h, HIDDEN, HIDDEN, f"{p}.v"), f"{p}.v_heads")
        k_all = op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        scores = op("Mul", [op("MatMul", [q, op("Transpose", [k_all], f"{p}.k_t", perm=[0, 1, 3, 2])],
                               f"{p}.qk"), scale], f"{p}.scores")
        probs = op("Softmax", [op("Add", [scores, bias], f"{p}.scores_masked")], f"{p}.probs", axis=-1)
        ctx = op("Transpose", [op("MatMul", [probs, v_all], f"{p}.ctx_heads")], f"{p}.ctx_t", perm=[0, 2, 1, 3])
        attn = linear(op("Reshape", [ctx, merge], f"{p}.ctx"), HIDDEN, HIDDEN, f"{p}.o")
        x = op("Add", [x, attn], f"{p}.resid1")

        m = linear(layer_norm(x, f"{p}.ln2"), HIDDEN, FFN, f"{p}.fc1")
        erf1 = op("Add", [op("Erf", [op("Mul", [m, inv_sqrt2], f"{p}.gelu_in")], f"{p}.erf"), one_f], f"{p}.erf1")
        gelu = op("Mul", [op("Mul", [m, erf1], f"{p}.gelu_prod"), half], f"{p}.gelu")
        x = op("Add", [x, linear(gelu, FFN, HIDDEN, f"{p}.fc2")], f"{p}.resid2")

    # Large output weights make the next-token distribution peaked, so greedy decoding never
    # hinges on float rounding between the batched and unbatched paths.
    lm_w = rand("lm_head.weight", (HIDDEN, vocab_size), 1.5)
    lm_bias = np.zeros(vocab_size, f32)
    lm_bias[[PAD_ID, UNK_ID]] = -30.0  # never generated
    lm_bias[EOS_ID] = -6.0  # rare, so most test generations run to their token budget
    nodes.append(helper.make_node("Add", [op("MatMul", [layer_norm(x, "ln_f"), lm_w], "lm_mm"),
                                          const("lm_head.bias", lm_bias)], ["logits"], name="logits/Add"))

    kv_shape = ["batch_size", NUM_HEADS, "past_sequence_length", HEAD_DIM]
    present_shape = ["batch_size", NUM_HEADS, "total_sequence_length", HEAD_DIM]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch_size", "sequence_length", vocab_size])]
    for i in range(NUM_LAYERS):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", TensorProto.FLOAT, present_shape))
    graph = helper.make_graph(nodes, "test_decoder_tiny", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="support-assistant-test-decoder", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_test_decoder(out_dir: str | Path, seed: int = 0) -> dict[str, str]:
    """Write the test decoder (`model.onnx`, `tokenizer.json`, `generation.json`) into `out_dir`.

    Returns the model entry for a bundle manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_test_tokenizer()
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    onnx.save_model(build_test_decoder_onnx(vocab_size, seed), str(out / "model.onnx"))
    tokenizer.save(str(out / "tokenizer.json"))
    info = {
        "name": TEST_DECODER_NAME,
        "revision": TEST_DECODER_REVISION,
        "kind": "decoder",
        "source": f"generated:testmodels.decoder(seed={seed})",
    }
    generation = {
        **info,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "num_layers": NUM_LAYERS,
        "num_kv_heads": NUM_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": vocab_size,
        "max_context": MAX_CONTEXT,
        "add_special_tokens": False,
        "chat_template": "System: {system}\nUser: {user}\nAssistant:",
        "default_system": "You are a test model.",
    }
    (out / "generation.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    return info
