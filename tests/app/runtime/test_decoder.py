from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from support_assistant.runtime.decoder import DecodeBatch, Decoder, Generation, GenerationConfig
from testmodels.decoder import (
    EOS_ID,
    MAX_CONTEXT,
    NUM_LAYERS,
    TEST_DECODER_NAME,
    TEST_DECODER_REVISION,
    build_test_decoder,
)

PROMPTS = [
    "How do I reset my password?",
    "Hi",
    "The VPN drops every ten minutes on the office network; what should I check first?",
    "Billing page",
]


@pytest.fixture(scope="module")
def decoder(test_decoder_dir: Path) -> Decoder:
    return Decoder(test_decoder_dir)


def _copy_with_generation(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((src / "generation.json").read_text())
    config.update(changes)
    (dst / "generation.json").write_text(json.dumps(config))
    return dst


def test_graph_uses_the_optimum_with_past_layout(test_decoder_dir: Path) -> None:
    graph = onnx.load(str(test_decoder_dir / "model.onnx")).graph
    past = [f"past_key_values.{i}.{kv}" for i in range(NUM_LAYERS) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(NUM_LAYERS) for kv in ("key", "value")]
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "position_ids", *past]
    assert [o.name for o in graph.output] == ["logits", *present]
    key = next(i for i in graph.input if i.name == "past_key_values.0.key")
    dims = [d.dim_param or d.dim_value for d in key.type.tensor_type.shape.dim]
    assert dims == ["batch_size", 2, "past_sequence_length", 8]


def test_identity_says_it_is_a_test_model(decoder: Decoder) -> None:
    assert decoder.name == TEST_DECODER_NAME and "test" in decoder.name
    assert decoder.revision == TEST_DECODER_REVISION == "generated"


def test_build_is_deterministic(tmp_path: Path, test_decoder_dir: Path) -> None:
    build_test_decoder(tmp_path / "again")
    for name in ("model.onnx", "tokenizer.json", "generation.json"):
        assert (tmp_path / "again" / name).read_bytes() == (test_decoder_dir / name).read_bytes()


def test_kv_cache_matches_recomputation(decoder: Decoder) -> None:
    cached = decoder.generate(PROMPTS, max_new_tokens=24)
    uncached = decoder.generate_without_cache(PROMPTS, max_new_tokens=24)
    assert cached == uncached
    assert all(g.tokens == 24 and g.finish_reason == "length" for g in cached)


def test_batched_equals_one_by_one(decoder: Decoder) -> None:
    batched = decoder.generate(PROMPTS, max_new_tokens=20)
    single = [decoder.generate([p], max_new_tokens=20)[0] for p in PROMPTS]
    assert batched == single
    assert len({g.text for g in batched}) == len(PROMPTS), "prompts should lead to different outputs"


def test_prefill_in_row_groups_gives_the_same_result(test_decoder_dir: Path, decoder: Decoder) -> None:
    grouped = Decoder(test_decoder_dir, max_prefill_logits_bytes=1)  # forces one row per prefill run
    assert grouped.generate(PROMPTS, max_new_tokens=12) == decoder.generate(PROMPTS, max_new_tokens=12)


def test_max_new_tokens_is_respected(decoder: Decoder) -> None:
    for n in (1, 5, 17):
        (g,) = decoder.generate([PROMPTS[0]], max_new_tokens=n)
        assert g.tokens == n and g.finish_reason == "length" and len(g.text) == n  # one char per token
    assert decoder.generate([PROMPTS[0]], max_new_tokens=0) == [Generation("", 0, "length")]


def test_stop_sequences_stop_each_sequence_and_are_stripped(decoder: Decoder) -> None:
    free = decoder.generate(PROMPTS[:2], max_new_tokens=30)
    text0 = free[0].text
    stop = text0[6:8]
    cut = text0.find(stop)
    assert stop not in free[1].text, "pick prompts whose outputs differ"
    stopped = decoder.generate(PROMPTS[:2], max_new_tokens=30, stop=[stop, "\x00never"])
    assert stopped[0] == Generation(text0[:cut], cut + len(stop), "stop")
    # The other sequence in the batch is unaffected and runs to its budget.
    assert stopped[1] == free[1]
    assert decoder.generate_without_cache(PROMPTS[:2], max_new_tokens=30, stop=[stop]) == stopped


def test_eos_finishes_a_sequence_and_is_not_in_the_text(tmp_path: Path, test_decoder_dir: Path,
                                                        decoder: Decoder) -> None:
    free = decoder.generate([PROMPTS[0]], max_new_tokens=20)[0].text
    # Pretend the character generated at step 6 is the eos token (the tokenizer maps chars 1:1).
    eos_char = free[5]
    eos_id = decoder.tokenizer.token_to_id(eos_char)
    first = free.index(eos_char)
    variant = Decoder(_copy_with_generation(test_decoder_dir, tmp_path / "eos", eos_token_id=[EOS_ID, eos_id]))
    (g,) = variant.generate([PROMPTS[0]], max_new_tokens=20)
    assert g == Generation(free[:first], first + 1, "eos")


def test_sampling_is_reproducible_with_a_seed(decoder: Decoder) -> None:
    kwargs = {"max_new_tokens": 16, "temperature": 1.5, "top_p": 0.95}
    a = decoder.generate(PROMPTS, seed=7, **kwargs)
    assert a == decoder.generate(PROMPTS, seed=7, **kwargs)
    assert a != decoder.generate(PROMPTS, seed=8, **kwargs)
    assert a != decoder.generate(PROMPTS, **{**kwargs, "temperature": 0.0})
    # Each prompt has its own random stream, so the cached and recomputing paths agree too.
    assert a == decoder.generate_without_cache(PROMPTS, seed=7, **kwargs)
    # A vanishing nucleus keeps only the most likely token: greedy.
    assert decoder.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_p=1e-9, seed=1) == \
        decoder.generate(PROMPTS, max_new_tokens=8)


def test_invalid_sampling_arguments(decoder: Decoder) -> None:
    with pytest.raises(ValueError, match="temperature"):
        decoder.generate(PROMPTS, 4, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        decoder.generate(PROMPTS, 4, top_p=0)
    with pytest.raises(TypeError):
        decoder.generate("one prompt", 4)  # type: ignore[arg-type]


def test_token_counting_and_truncation(decoder: Decoder) -> None:
    assert decoder.count_tokens("hello world") == 11
    assert decoder.truncate_to_tokens("hello world", 4) == "hell"
    assert decoder.truncate_to_tokens("hello world", 50) == "hello world"
    assert decoder.truncate_to_tokens("hello world", 0) == ""


def test_context_limit(decoder: Decoder) -> None:
    assert decoder.max_context == MAX_CONTEXT
    with pytest.raises(ValueError, match="prompt 1 has"):
        decoder.generate(["ok", "x" * MAX_CONTEXT], max_new_tokens=4)
    (g,) = decoder.generate(["x" * (MAX_CONTEXT - 3)], max_new_tokens=10)
    assert g.tokens == 3 and g.finish_reason == "length"


def test_chat_template(decoder: Decoder) -> None:
    assert decoder.format_chat("Why?", system="Be brief.") == "System: Be brief.\nUser: Why?\nAssistant:"
    assert decoder.format_chat("{x}") == "System: You are a test model.\nUser: {x}\nAssistant:"


def test_generation_config_validation(tmp_path: Path, test_decoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="'head_dim'"):
        GenerationConfig.from_dict({"name": "x", "revision": "y", "eos_token_id": 1, "num_layers": 2,
                                    "num_kv_heads": 2})
    broken = _copy_with_generation(test_decoder_dir, tmp_path / "layers", num_layers=3)
    with pytest.raises(ValueError, match="3 layers"):
        Decoder(broken)


def test_sequences_that_join_a_running_batch_decode_as_alone(decoder: Decoder) -> None:
    """Continuous batching: a prompt added between two steps of others, and one removed midway,
    leave every other row's tokens exactly what that prompt gets alone."""
    alone = [decoder.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
    batch = DecodeBatch(decoder)
    seqs = [decoder.new_sequence(p, 12) for p in PROMPTS]
    quitter = decoder.new_sequence("This one leaves early.", 12)
    batch.add([seqs[0], quitter])
    batch.step()
    batch.add([seqs[1]])
    batch.step()
    batch.step()
    batch.remove(quitter)
    batch.add(seqs[2:])
    while batch:
        batch.step()
    assert [decoder.result(s) for s in seqs] == alone
    # Drew its first token at prefill, then one per step until it was removed.
    assert quitter.finish is None and len(quitter.generated) == 4


def test_a_long_row_that_leaves_takes_its_padding_with_it(decoder: Decoder) -> None:
    batch = DecodeBatch(decoder)
    short, long = decoder.new_sequence("Hi", 8), decoder.new_sequence(PROMPTS[2], 8)
    batch.add([short, long])
    batch.step()
    assert batch.cache_len == long.prompt_tokens + 1
    batch.remove(long)
    # Only the short row's own columns stay: its prompt and the one token fed since.
    assert batch.cache_len == short.prompt_tokens + 1


def test_a_sequence_with_no_budget_never_joins(decoder: Decoder) -> None:
    batch = DecodeBatch(decoder)
    seq = decoder.new_sequence("Hi", 0)
    batch.add([seq])
    assert not batch and seq.finish == "length" and decoder.result(seq).tokens == 0
