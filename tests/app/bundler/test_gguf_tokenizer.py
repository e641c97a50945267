"""The tokenizer and chat template taken from the SmolLM2 GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from support_assistant.bundler.gguf_file import GGUFFile
from support_assistant.bundler.gguf_tokenizer import build_tokenizer, chat_template
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tokenizer(gguf_file: GGUFFile) -> Tokenizer:
    return build_tokenizer(gguf_file)


def test_vocabulary_is_the_files(tokenizer: Tokenizer, gguf_file: GGUFFile) -> None:
    tokens = gguf_file.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152
    assert tokenizer.get_vocab(with_added_tokens=True) == {tok: i for i, tok in enumerate(tokens)}
    control = [i for i, t in enumerate(gguf_file.metadata["tokenizer.ggml.token_type"]) if t == 3]
    assert control == list(range(17))
    assert tokenizer.token_to_id("<|im_start|>") == 1 and tokenizer.token_to_id("<|im_end|>") == 2


def test_whole_corpus_round_trips(tokenizer: Tokenizer) -> None:
    files = sorted(p for p in (ROOT / "docs" / "runbooks").rglob("*") if p.is_file())
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text, path


def test_pre_tokenizer_is_smollms(tokenizer: Tokenizer) -> None:
    # Digits one by one (llama.cpp's `smollm` pre-tokenizer), then GPT-2 byte-level words.
    enc = tokenizer.encode("Port 8265 is up!", add_special_tokens=False)
    assert enc.tokens == ["Port", "Ġ", "8", "2", "6", "5", "Ġis", "Ġup", "!"]
    # Control tokens in the text are single ids; nothing is added around a prompt.
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=True).ids
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 5
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_chat_template_renders_like_the_files_jinja(gguf_file: GGUFFile) -> None:
    template, default_system = chat_template(gguf_file)
    assert default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    jinja = ImmutableSandboxedEnvironment().from_string(gguf_file.metadata["tokenizer.chat_template"])
    for system, user in (("Answer from the passages.", "Why is my {pod} pending?"), (None, "hello")):
        messages = ([] if system is None else [{"role": "system", "content": system}]) + [
            {"role": "user", "content": user}]
        expected = jinja.render(messages=messages, add_generation_prompt=True)
        assert template.format(system=default_system if system is None else system, user=user) == expected
    assert template.endswith("<|im_start|>assistant\n")
