"""Normalizer stage: Unicode, whitespace and case normalization with a length cap."""

from __future__ import annotations

import re
import unicodedata

from support_assistant.errors import InvalidInput
from support_assistant.schema import NormalizedQuestion

_WHITESPACE = re.compile(r"\s+")


class Normalizer:
    def __init__(self, max_chars: int = 2000) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be positive")
        self.max_chars = max_chars

    def normalize(self, question: str) -> NormalizedQuestion:
        # NFKC folds compatibility forms (full-width letters, ligatures, non-breaking spaces), so a
        # question typed with full-width letters retrieves the same passages as its ASCII form.
        text = unicodedata.normalize("NFKC", question)
        text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
        text = _WHITESPACE.sub(" ", text).strip()
        if not text:
            raise InvalidInput("question", "is empty after normalization (only whitespace or control characters)")
        truncated = len(text) > self.max_chars
        if truncated:
            text = text[: self.max_chars].rstrip()
        return NormalizedQuestion(text=text, search_text=text.casefold(), truncated=truncated)
