"""Sentences of a runbook passage: what the extractive generator picks from and what the
grounding guard compares a generated sentence with (and what the bundle caches vectors for)."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
_FENCE = re.compile(r"```.*?```", re.DOTALL)
# List markers and bold/italic asterisks; underscores stay (they are part of metric and field names).
_MARKUP = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+|\*{1,2}(?=\S)|(?<=\S)\*{1,2}")
_LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s+")


def split_sentences(text: str) -> list[str]:
    """Prose sentences and list items of a Markdown passage (code blocks and tables dropped).

    Runbooks are hard-wrapped, so lines are first joined into paragraphs and list items.
    """
    blocks: list[str] = []
    current: list[str] = []
    for raw in _FENCE.sub("\n\n", text).splitlines():
        line = raw.strip()
        starts_item = bool(_LIST_ITEM.match(line))
        if not line or starts_item or line.startswith(("#", "|")):
            if current:
                blocks.append(" ".join(current))
            current = []
            if line.startswith(("#", "|")) or not line:
                continue
        current.append(_MARKUP.sub("", line).replace("`", ""))
    if current:
        blocks.append(" ".join(current))
    sentences = []
    for block in blocks:
        sentences.extend(s.strip() for s in _SENTENCE_END.split(block) if len(s.strip()) >= 12)
    return sentences
