"""The ONNX Llama decoder converted from the SmolLM2 GGUF, against the independent numpy reference
(tests/testmodels/reference_llama.py), and the 4-bit graph against the fp32 one.

Costs (2 shared cores): the float64 reference loads in ~15 s and reads 850 MB of weights per forward
call, so it checks the graph's 32 greedy tokens in one teacher-forced pass instead of 32 steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from support_assistant.bundler.gguf_file import GGUFFile
from support_assistant.bundler.gguf_tokenizer import build_tokenizer, chat_template
from support_assistant.bundler.llama_onnx import unpermute_rows
from support_assistant.bundler.local_generator import LocalGeneratorSpec, write_local_generator
from support_assistant.runtime.decoder import Decoder
from support_assistant.runtime.session import make_session
from testmodels.reference_llama import ReferenceLlama

ROOT = Path(__file__).resolve().parents[3]
STEPS = 32
LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64
# Labelled prompts for the 4-bit agreement check: the first of each runbook's questions in
# bench/questions.yaml, up to this many (the bench measures all of them).
AGREEMENT_PROMPTS = 8
PAST = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to attn_q / attn_k rows (as the issue quotes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head", [9, 3])
def test_unpermute_undoes_llama_cpps_permutation(n_head: int) -> None:
    w = np.random.default_rng(n_head).standard_normal((n_head * 64, 40))
    np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(w, n_head), n_head), w)
    assert not np.array_equal(llama_cpp_permute(w, n_head), w)


@pytest.fixture(scope="module")
def chat(gguf_file: GGUFFile):
    template, default_system = chat_template(gguf_file)
    return build_tokenizer(gguf_file), template, default_system


def _prompt_ids(chat, question: str) -> list[int]:
    tokenizer, template, system = chat
    return tokenizer.encode(template.format(system=system, user=question), add_special_tokens=False).ids


def _greedy_batch(session: ort.InferenceSession, prompts: list[list[int]], steps: int,
                  forced: list[list[int]] | None = None) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy decode of left-padded prompts through the raw graph with its KV cache; with `forced`,
    feed those tokens instead of the argmax (teacher forcing) and still report each step's argmax.
    Returns each row's tokens and each step's last-position logits [batch, vocab]."""
    width = max(len(p) for p in prompts)
    ids = np.array([[0] * (width - len(p)) + p for p in prompts], np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int64)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    past = {name: np.zeros((len(prompts), KV_HEADS, 0, HEAD_DIM), np.float32) for name in PAST}
    tokens: list[list[int]] = [[] for _ in prompts]
    logits_seen = []
    for step in range(steps):
        out = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        past = dict(zip(PAST, out[1:], strict=True))
        logits_seen.append(out[0][:, -1])
        for row, t in enumerate(np.argmax(out[0][:, -1], axis=-1)):
            tokens[row].append(int(t))
        feed = [forced[r][step] if forced is not None else tokens[r][-1] for r in range(len(prompts))]
        ids = np.array(feed, np.int64)[:, None]
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
    return tokens, logits_seen


@pytest.fixture(scope="module")
def reference(gguf_path: Path) -> ReferenceLlama:
    return ReferenceLlama(gguf_path)


def test_fp32_graph_matches_the_numpy_reference(fp32_graph: Path, reference: ReferenceLlama, chat) -> None:
    """32 greedy tokens from the graph, then one reference pass over prompt + those tokens: the
    reference's argmax after every prefix is the graph's next token (so its own greedy decode is
    the same 32 tokens) and its logits there are within 1e-3 of the graph's."""
    prompt = _prompt_ids(chat, "My RayService is stuck initializing after a deploy. What should I check first?")
    (tokens,), got_logits = _greedy_batch(make_session(fp32_graph), [prompt], STEPS)
    reference.reset()
    want_logits = reference.forward(prompt + tokens[:-1])[len(prompt) - 1:]
    assert [int(np.argmax(row)) for row in want_logits] == tokens  # 32 of 32
    worst = max(float(np.abs(g[0] - w).max()) for g, w in zip(got_logits, want_logits, strict=True))
    assert worst <= 1e-3, f"max |logit difference| {worst:.2e}"
    assert len(set(tokens)) > 8 and chat[0].decode(tokens).strip()  # real text, not one token repeated


def test_bundle_layout_generates_the_same_in_a_padded_batch(tmp_path: Path) -> None:
    """Through the runtime Decoder (the contract with the generator stage): prompts of different
    lengths in one left-padded batch decode what each decodes alone, and the answer is the model's."""
    write_local_generator(tmp_path / "generator", LocalGeneratorSpec(weights="fp32"))
    decoder = Decoder(tmp_path / "generator")
    questions = ["What is the capital of France? Answer in one sentence.",
                 "My RayService is stuck initializing after a deploy. What should I check first?"]
    prompts = [decoder.format_chat(q) for q in questions]
    batched = decoder.generate(prompts, max_new_tokens=16)
    alone = [decoder.generate([p], max_new_tokens=16)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert batched[0].text == "The capital of France is Paris." and batched[0].finish_reason == "eos"


def _labelled_questions() -> list[str]:
    seen: dict[str, str] = {}
    for item in yaml.safe_load((ROOT / "bench" / "questions.yaml").read_text())["questions"]:
        seen.setdefault(item["runbook"], item["q"])
    return list(seen.values())[:AGREEMENT_PROMPTS]


def test_q4_graph_agrees_with_fp32_on_labelled_prompts(fp32_graph: Path, q4_graph: Path, chat) -> None:
    """Teacher-forced on fp32's greedy continuation, the 4-bit graph picks fp32's token at >= 98%
    of the steps (the bench reports the same figure over every labelled question)."""
    prompts = [_prompt_ids(chat, q) for q in _labelled_questions()]
    want, _ = _greedy_batch(make_session(fp32_graph), prompts, STEPS)
    got, _ = _greedy_batch(make_session(q4_graph), prompts, STEPS, forced=want)
    agree = sum(int(a == b) for w, g in zip(want, got, strict=True) for a, b in zip(w, g, strict=True))
    total = len(prompts) * STEPS
    assert len(prompts) == AGREEMENT_PROMPTS
    assert agree / total >= 0.98, f"q4 agrees with fp32 on {agree}/{total} steps"
