"""The tokenizer and chat template stored in a GGUF file, as the generator runtime wants them:
a `tokenizers` tokenizer.json and a str.format chat template with {system} and {user}.

Only the `gpt2` (byte-level BPE) tokenizer model with the `smollm` pre-tokenizer is accepted:
llama.cpp's `smollm` pre-tokenizer splits every digit on its own, then applies GPT-2's byte-level
split, which is `Digits(individual_digits=True)` followed by `ByteLevel` in `tokenizers`.
"""

from __future__ import annotations

import re
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from support_assistant.bundler.gguf_file import GGUFError, GGUFFile

# llama_token_type in llama.cpp's vocabulary: 1 normal, 3 control, 4 user-defined.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4
SUPPORTED_PRE = ("smollm",)


def build_tokenizer(gguf: GGUFFile) -> Tokenizer:
    model = gguf.field("tokenizer.ggml.model")
    pre = gguf.metadata.get("tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre not in SUPPORTED_PRE:
        raise GGUFError(f"{gguf.path}: tokenizer {model!r} with pre-tokenizer {pre!r} is not supported "
                        f"(only 'gpt2' with {', '.join(SUPPORTED_PRE)})")
    tokens: list[str] = gguf.field("tokenizer.ggml.tokens")
    types: list[int] = gguf.metadata.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in gguf.field("tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.tokens has duplicate entries")
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=bool(gguf.metadata.get("tokenizer.ggml.add_space_prefix", False)),
                                 use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (<|im_start|>, <|im_end|>, ...) are matched whole in the text and skipped
    # when decoding with skip_special_tokens, as in the model's own tokenizer.
    special = [AddedToken(tok, special=True, normalized=False)
               for tok, t in zip(tokens, types, strict=True) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    tokenizer.add_special_tokens(special)
    return tokenizer


def chat_template(gguf: GGUFFile) -> tuple[str, str]:
    """(template, default system prompt): the file's Jinja chat template rendered once into a
    str.format template with {system} and {user} for one system + one user turn and the
    assistant's generation prompt, and the system prompt the template inserts when none is given.

    The runtime formats prompts with str.format (no template engine in the request path); the
    conversion is checked here by rendering the Jinja template again and comparing.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = gguf.field("tokenizer.chat_template")
    env = ImmutableSandboxedEnvironment(keep_trailing_newline=True)
    jinja = env.from_string(source)

    def render(messages: list[dict[str, str]]) -> str:
        return jinja.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")

    sys_mark, user_mark = "\x00SYSTEM\x00", "\x00USER\x00"
    rendered = render([{"role": "system", "content": sys_mark}, {"role": "user", "content": user_mark}])
    if rendered.count(sys_mark) != 1 or rendered.count(user_mark) != 1:
        raise GGUFError(f"{gguf.path}: tokenizer.chat_template does not place one system and one user message")
    template = (rendered.replace("{", "{{").replace("}", "}}")
                .replace(sys_mark, "{system}").replace(user_mark, "{user}"))
    # The default system prompt: what the template puts where {system} would be when the
    # conversation has no system message.
    bare = render([{"role": "user", "content": user_mark}])
    before, after = rendered.split(sys_mark)
    match = re.fullmatch(re.escape(before) + "(.*)" + re.escape(after), bare, flags=re.DOTALL)
    if match is None:
        raise GGUFError(f"{gguf.path}: tokenizer.chat_template renders a conversation without a system "
                        "message differently from one with a system message; cannot derive its default")
    default_system = match.group(1)
    for system, user in (("Be brief.", "What is {x}?"), (default_system, "Hi")):
        expected = render([{"role": "system", "content": system}, {"role": "user", "content": user}])
        if template.format(system=system, user=user) != expected:
            raise GGUFError(f"{gguf.path}: tokenizer.chat_template could not be converted faithfully")
    return template, default_system


def special_ids(gguf: GGUFFile) -> dict[str, Any]:
    """bos/eos/pad ids as the file declares them."""
    out: dict[str, Any] = {"eos_token_id": int(gguf.field("tokenizer.ggml.eos_token_id"))}
    for key, field in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                       ("pad_token_id", "tokenizer.ggml.padding_token_id")):
        if field in gguf.metadata:
            out[key] = int(gguf.metadata[field])
    return out
