"""Decoder-only language model runtime on ONNX Runtime, with a KV cache.

The model directory holds `model.onnx` in the layout Optimum exports for
`text-generation-with-past` (inputs `input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key|value` [batch, kv_heads, past_seq, head_dim]; outputs `logits`,
`present.{i}.key|value`), `tokenizer.json` and `generation.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import Tokenizer

from support_assistant.runtime.session import active_provider, make_session

GENERATION_CONFIG = "generation.json"
FinishReason = Literal["stop", "length", "eos"]
# Prefill returns logits for every prompt position ([batch, seq, vocab]); with a 150k vocabulary
# that is 600 KB per token, so prompts are prefilled in row groups that keep it under this.
DEFAULT_PREFILL_LOGITS_BYTES = 256 * 1024 * 1024

_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class Generation:
    text: str
    # Generated tokens, including an eos token or the token that completed a stop sequence.
    tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class GenerationConfig:
    name: str
    revision: str
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    source: str = ""
    vocab_size: int | None = None
    max_context: int | None = None
    bos_token_id: int | None = None
    add_special_tokens: bool = True
    # A str.format template with {system} and {user} fields (not Jinja: one fixed, reviewable
    # format per pinned model, and no template engine in the request path).
    chat_template: str | None = None
    default_system: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        def need(key: str) -> Any:
            if key not in data:
                raise ValueError(f"{GENERATION_CONFIG}: missing field {key!r}")
            return data[key]

        eos = data.get("eos_token_ids", data.get("eos_token_id"))
        if eos is None:
            raise ValueError(f"{GENERATION_CONFIG}: missing field 'eos_token_id'")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
        if not eos_ids:
            raise ValueError(f"{GENERATION_CONFIG}: 'eos_token_id' is empty")
        pad = data.get("pad_token_id")
        kv_heads = data.get("num_kv_heads", data.get("num_heads"))
        if kv_heads is None:
            raise ValueError(f"{GENERATION_CONFIG}: missing field 'num_kv_heads'")
        return cls(
            name=str(need("name")),
            revision=str(need("revision")),
            source=str(data.get("source", "")),
            eos_token_ids=eos_ids,
            # Models without a pad token: any id works since pad slots are masked; eos is always valid.
            pad_token_id=eos_ids[0] if pad is None else int(pad),
            num_layers=int(need("num_layers")),
            num_kv_heads=int(kv_heads),
            head_dim=int(need("head_dim")),
            vocab_size=int(data["vocab_size"]) if data.get("vocab_size") else None,
            max_context=int(data["max_context"]) if data.get("max_context") else None,
            bos_token_id=int(data["bos_token_id"]) if data.get("bos_token_id") is not None else None,
            add_special_tokens=bool(data.get("add_special_tokens", True)),
            chat_template=data.get("chat_template"),
            default_system=str(data.get("default_system", "")),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> GenerationConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class SequenceState:
    """One prompt's decoding state: what it was asked, what it drew, and why it ended."""

    prompt_ids: list[int]
    budget: int
    rng: np.random.Generator
    stops: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish: FinishReason | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)



class Decoder:
    def __init__(self, model_dir: str | Path, *,
                 max_prefill_logits_bytes: int = DEFAULT_PREFILL_LOGITS_BYTES) -> None:
        self.model_dir = Path(model_dir)
        self.config = GenerationConfig.from_file(self.model_dir / GENERATION_CONFIG)
        self.name = self.config.name
        self.revision = self.config.revision
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        # Padding and truncation are done here (left padding, explicit caps), never by the tokenizer.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.session = make_session(self.model_dir / "model.onnx")
        self.max_prefill_logits_bytes = max_prefill_logits_bytes

        inputs = {i.name: i for i in self.session.get_inputs()}
        for required in ("input_ids", "attention_mask"):
            if required not in inputs:
                raise ValueError(f"{self.model_dir}/model.onnx has no {required!r} input")
        layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        if layers != self.config.num_layers:
            raise ValueError(f"{GENERATION_CONFIG} says {self.config.num_layers} layers, "
                             f"model.onnx has past_key_values for {layers}")
        self._has_position_ids = "position_ids" in inputs
        # Older Optimum exports merge the two decoders behind a boolean switch.
        self._has_cache_branch = "use_cache_branch" in inputs
        self._kv_dtype = _ORT_FLOAT_TYPES.get(inputs["past_key_values.0.key"].type, np.float32)
        self._past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self._present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self._output_names = ["logits", *self._present_names]
        vocab = self.config.vocab_size or self.tokenizer.get_vocab_size(with_added_tokens=True)
        self._vocab_estimate = max(vocab, 1)

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    @property
    def max_context(self) -> int | None:
        """Prompt + generated tokens the model accepts (None: not limited by the bundle)."""
        return self.config.max_context

    # ---- prompt helpers ------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens the model reads for `prompt` (special tokens added as generate() adds them)."""
        return len(self.tokenizer.encode(prompt, add_special_tokens=self.config.add_special_tokens).ids)

    def truncate_to_tokens(self, text: str, n: int) -> str:
        """The longest prefix of `text` that is at most `n` tokens, cut on a token boundary."""
        if n <= 0:
            return ""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) <= n:
            return text
        return text[: enc.offsets[n - 1][1]]

    def format_chat(self, user: str, system: str | None = None) -> str:
        """The prompt for a single-turn chat, in the model's own format when it has one."""
        template = self.config.chat_template
        if not template:
            return user if not system else f"{system}\n\n{user}"
        return template.format(system=self.config.default_system if system is None else system, user=user)

    # ---- generation ----------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[Generation]:
        """Generate a continuation for each prompt, batched, with the KV cache.

        Greedy when temperature == 0, otherwise temperature + nucleus sampling, reproducible for a
        given seed. Each sequence finishes on its own: eos, a stop sequence (stripped from the
        text together with anything after it), or max_new_tokens / the context limit.
        """
        return self._generate(prompts, max_new_tokens, stop, temperature, top_p, seed, use_cache=True)

    def generate_without_cache(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                               temperature: float = 0.0, top_p: float = 1.0,
                               seed: int | None = None) -> list[Generation]:
        """Same contract as `generate`, recomputing the whole sequence at every step (slow; it is
        the oracle that the cached path is tested against)."""
        return self._generate(prompts, max_new_tokens, stop, temperature, top_p, seed, use_cache=False)

    def _generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str],
                  temperature: float, top_p: float, seed: int | None, *, use_cache: bool) -> list[Generation]:
        if isinstance(prompts, str):
            raise TypeError("generate() takes a list of prompts, not a single string")
        seqs = [self.new_sequence(p, max_new_tokens, stop, temperature, top_p, seed, index=i)
                for i, p in enumerate(prompts)]
        active = [s for s in seqs if s.finish is None]
        if active:
            if use_cache:
                batch = DecodeBatch(self)
                batch.add(active)
                while batch:
                    batch.step()
            else:
                self._decode_uncached(active)
        return [self.result(s) for s in seqs]

    def new_sequence(self, prompt: str, max_new_tokens: int, stop: Sequence[str] = (), temperature: float = 0.0,
                     top_p: float = 1.0, seed: int | None = None, *, index: int = 0) -> SequenceState:
        """A prompt's decoding state, ready for a DecodeBatch (finished at once when it may draw no token)."""
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        seq = self._new_seq(index, prompt, max_new_tokens, seed)
        seq.stops = tuple(x for x in stop if x)
        seq.temperature, seq.top_p = temperature, top_p
        if seq.budget <= 0:
            seq.finish = "length"
        return seq

    def _new_seq(self, index: int, prompt: str, max_new_tokens: int, seed: int | None) -> SequenceState:
        ids = self.tokenizer.encode(prompt, add_special_tokens=self.config.add_special_tokens).ids
        if not ids:
            if self.config.bos_token_id is None:
                raise ValueError(f"prompt {index} is empty and the model has no bos token to start from")
            ids = [self.config.bos_token_id]
        budget = max_new_tokens
        limit = self.config.max_context
        if limit is not None:
            if len(ids) >= limit:
                raise ValueError(f"prompt {index} has {len(ids)} tokens; the model context is {limit} "
                                 "(cap prompts with truncate_to_tokens)")
            budget = min(budget, limit - len(ids))
        # One generator per prompt, keyed by its position, so a sequence's samples do not depend
        # on how many tokens its neighbours drew.
        rng = np.random.default_rng(None if seed is None else [seed, index])
        return SequenceState(prompt_ids=list(ids), budget=budget, rng=rng)

    def text_so_far(self, s: SequenceState) -> str:
        """The text a sequence has produced (eos and a completed stop sequence left out)."""
        if s.finish == "stop":
            return s.text
        body = s.generated[:-1] if s.finish == "eos" else s.generated
        return self.tokenizer.decode(body, skip_special_tokens=True)

    def result(self, s: SequenceState) -> Generation:
        """What a sequence generated; one that has not finished counts as cut at its length."""
        s.text = self.text_so_far(s)
        return Generation(text=s.text, tokens=len(s.generated), finish_reason=s.finish or "length")

    def _advance(self, s: SequenceState, logits: np.ndarray) -> int:
        token = _select(logits, s.temperature, s.top_p, s.rng)
        s.generated.append(token)
        if token in self.config.eos_token_ids:
            s.finish = "eos"
        elif s.stops:
            text = self.tokenizer.decode(s.generated, skip_special_tokens=True)
            cut = min((i for i in (text.find(x) for x in s.stops) if i >= 0), default=-1)
            if cut >= 0:
                s.text, s.finish = text[:cut], "stop"
        if s.finish is None and len(s.generated) >= s.budget:
            s.finish = "length"
        return token

    def _empty_past(self, rows: int) -> dict[str, np.ndarray]:
        shape = (rows, self.config.num_kv_heads, 0, self.config.head_dim)
        return {name: np.zeros(shape, dtype=self._kv_dtype) for name in self._past_names}

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feed: dict[str, np.ndarray] = {"input_ids": input_ids, "attention_mask": attention_mask, **past}
        if self._has_position_ids:
            feed["position_ids"] = position_ids
        if self._has_cache_branch:
            feed["use_cache_branch"] = np.array([past[self._past_names[0]].shape[2] > 0])
        logits, *presents = self.session.run(self._output_names, feed)
        return logits, dict(zip(self._past_names, presents, strict=True))

    def _left_pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.config.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
        # Positions count real tokens only, so a left-padded prompt sees the same positions as it
        # would alone; pad slots get 0 (they are masked out anyway).
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        return ids, mask, positions

    def _last_logits(self, input_ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                     with_presents: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run full sequences from an empty cache, in row groups small enough that the
        [rows, seq, vocab] logits stay within the prefill budget; returns last-position logits."""
        rows, width = input_ids.shape
        per_row = width * self._vocab_estimate * 4
        group = max(1, min(rows, self.max_prefill_logits_bytes // max(per_row, 1)))
        last: list[np.ndarray] = []
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, rows, group):
            sl = slice(start, start + group)
            logits, presents = self._run(input_ids[sl], mask[sl], positions[sl], self._empty_past(len(input_ids[sl])))
            last.append(np.asarray(logits[:, -1, :], dtype=np.float32))
            if with_presents:
                parts.append(presents)
        merged = {}
        if with_presents:
            merged = parts[0] if len(parts) == 1 else {
                k: np.concatenate([p[k] for p in parts], axis=0) for k in self._past_names}
        return np.concatenate(last, axis=0), merged

    def _decode_uncached(self, active: list[SequenceState]) -> None:
        while active:
            ids, mask, positions = self._left_pad([s.prompt_ids + s.generated for s in active])
            logits, _ = self._last_logits(ids, mask, positions, with_presents=False)
            for row, s in enumerate(active):
                self._advance(s, logits[row])
            active = [s for s in active if s.finish is None]


class DecodeBatch:
    """Sequences that share decode steps, each with its own KV cache rows and stop condition.

    Continuous batching: `add` prefills new sequences and merges them into the running batch
    between two steps, `step` feeds every row its last drawn token and draws the next one, and a
    row leaves the batch as soon as it finishes (or is `remove`d: a cancelled request, a budget
    that ended). Rows of different lengths are left-padded in the cache and masked out, so each
    sees exactly the positions it would see alone (tests/app/runtime/test_decoder.py checks the
    tokens against the uncached oracle).
    """

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.rows: list[SequenceState] = []
        self._past: dict[str, np.ndarray] = {}
        self._mask = np.zeros((0, 0), dtype=np.int64)
        self._next_pos = np.zeros((0,), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def cache_len(self) -> int:
        return int(self._mask.shape[1])

    def add(self, seqs: Sequence[SequenceState]) -> None:
        """Prefill `seqs` (their first token is drawn here) and let the unfinished ones join."""
        d = self.decoder
        seqs = [s for s in seqs if s.finish is None]
        if not seqs:
            return
        ids, mask, positions = d._left_pad([s.prompt_ids for s in seqs])
        logits, past = d._last_logits(ids, mask, positions, with_presents=True)
        for row, s in enumerate(seqs):
            d._advance(s, logits[row])
        next_pos = positions[:, -1] + 1
        if self.rows:
            width = max(self.cache_len, mask.shape[1])
            self._past = {k: np.concatenate([_left_pad_cache(self._past[k], width), _left_pad_cache(past[k], width)])
                          for k in d._past_names}
            self._mask = np.concatenate([_left_pad_mask(self._mask, width), _left_pad_mask(mask, width)])
            self._next_pos = np.concatenate([self._next_pos, next_pos])
        else:
            self._past, self._mask, self._next_pos = past, mask, next_pos
        self.rows.extend(seqs)
        self._drop_finished()

    def step(self) -> list[SequenceState]:
        """One decode step for every row; returns the rows (each drew one token), finished ones included."""
        if not self.rows:
            return []
        d = self.decoder
        rows = list(self.rows)
        mask = np.concatenate([self._mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        step_ids = np.array([s.generated[-1] for s in rows], dtype=np.int64)[:, None]
        out, self._past = d._run(step_ids, mask, self._next_pos[:, None], self._past)
        self._mask, self._next_pos = mask, self._next_pos + 1
        logits = np.asarray(out[:, -1, :], dtype=np.float32)
        for row, s in enumerate(rows):
            d._advance(s, logits[row])
        self._drop_finished()
        return rows

    def remove(self, seq: SequenceState) -> None:
        """Take a sequence out before it finished (its KV rows are freed at once)."""
        if seq in self.rows:
            self._keep([i for i, s in enumerate(self.rows) if s is not seq])

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self.rows) if s.finish is None]
        if len(keep) != len(self.rows):
            self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        rows = np.array(keep, dtype=np.int64)
        self.rows = [self.rows[i] for i in keep]
        self._past = {k: v[rows] for k, v in self._past.items()}
        self._mask, self._next_pos = self._mask[rows], self._next_pos[rows]
        if self.rows:
            # Columns no remaining row uses (the padding of a longer row that left) cost every step.
            start = int(self._mask.any(axis=0).argmax())
            if start:
                self._past = {k: v[:, :, start:] for k, v in self._past.items()}
                self._mask = self._mask[:, start:]


def _left_pad_cache(kv: np.ndarray, width: int) -> np.ndarray:
    extra = width - kv.shape[2]
    if extra == 0:
        return kv
    return np.concatenate([np.zeros((*kv.shape[:2], extra, kv.shape[3]), dtype=kv.dtype), kv], axis=2)


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    extra = width - mask.shape[1]
    return mask if extra == 0 else np.concatenate([np.zeros((mask.shape[0], extra), dtype=mask.dtype), mask], axis=1)


def _select(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature == 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    probs = np.exp(z)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # Smallest prefix whose mass reaches top_p (always at least the most likely token).
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))
