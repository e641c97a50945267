"""The grounding guard: what a language model wrote is kept only where the passages support it.

A small model writes fluent text that strays from its sources and cites them at random, and a
question can try to steer it away from them ("ignore the sources and ..."). So the pipeline does
not trust the model's own citations. Each sentence it wrote is compared, with the bundle's sentence
encoder (all-MiniLM-L6-v2 in the local bundle), to every sentence of every passage it was given;
the passage holding the most similar sentence supports it, and the sentence is cited with that
passage's number. A sentence no passage supports at `threshold` or more is dropped; so are the
model's citation marks, valid or not (a mark that points at no passage is counted as removed).

`threshold` is a cosine for a bi-encoder (the local bundle), a relevance score for a cross-encoder
(the production bundle's reranker scores each (claim, passage sentence) pair): its value is
calibrated per encoder on the labelled questions (bench/guard_calibration.py) and lives in the
Generator's user_config, never here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from support_assistant.runtime.embeddings import CachedVectors
from support_assistant.schema import RankedPassage
from support_assistant.stages.sentences import split_sentences

_CITATION = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")
# Any stop followed by a space ends a sentence here, capital or not: splitting too often costs a
# fragment, while gluing an unsupported sentence to a supported one could carry it through.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Shorter than this is a fragment ("Yes.", "1."), not a claim a passage can be said to support.
MIN_SENTENCE_CHARS = 12


class SentenceScorer(Protocol):
    """A bi-encoder (has `embed`) or a cross-encoder (has `score(query, texts)`)."""

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Supported:
    text: str  # the sentence as the model wrote it, citation marks removed
    passage: int  # 1-based number of the passage that supports it best
    score: float  # its similarity to that passage's closest sentence


@dataclass(frozen=True)
class Unsupported:
    text: str
    score: float  # the best similarity any passage reached (0 for a fragment)
    passage: int | None  # the passage that came closest, None when none was checked


@dataclass(frozen=True)
class Grounded:
    kept: list[Supported] = field(default_factory=list)
    dropped: list[Unsupported] = field(default_factory=list)
    # Citation marks the model wrote that point at no passage (e.g. [7] with three passages).
    invalid_citations: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The kept sentences, each cited with the passage that supports it."""
        return " ".join(f"{_with_stop(s.text)} [{s.passage}]" for s in self.kept)

    @property
    def cited(self) -> list[int]:
        return sorted({s.passage for s in self.kept})


def generated_sentences(text: str) -> list[str]:
    """The model's answer as sentences and list items, citation marks and Markdown stripped."""
    sentences: list[str] = []
    for line in text.replace("\r", "").split("\n"):
        line = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line)
        line = _CITATION.sub("", line).replace("**", "").replace("`", "").strip()
        sentences.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return sentences


def written_citations(text: str) -> list[int]:
    return [int(n) for group in _CITATION.findall(text) for n in re.split(r"\s*,\s*", group)]


class GroundingGuard:
    """A plain class (no Ray): the Generator deployment and the tests run the same object."""

    def __init__(self, encoder: SentenceScorer, threshold: float, vectors: CachedVectors | None = None) -> None:
        self.encoder = encoder
        self.threshold = threshold
        self._bi_encoder = hasattr(encoder, "embed")
        # Cached sentence vectors only make sense for a bi-encoder.
        self.vectors = vectors if self._bi_encoder else None

    def check(self, text: str, passages: Sequence[RankedPassage]) -> Grounded:
        invalid = sorted({n for n in written_citations(text) if not 1 <= n <= len(passages)})
        claims = generated_sentences(text)
        checkable = [c for c in claims if len(c) >= MIN_SENTENCE_CHARS]
        if not checkable or not passages:
            return Grounded(dropped=[Unsupported(c, 0.0, None) for c in claims], invalid_citations=invalid)
        # best[i, j]: how well passage j supports claim i (its closest sentence).
        best = self._support(checkable, passages)
        kept: list[Supported] = []
        dropped: list[Unsupported] = []
        scores = iter(zip(best.argmax(axis=1), best.max(axis=1), strict=True))
        for claim in claims:
            if len(claim) < MIN_SENTENCE_CHARS:
                dropped.append(Unsupported(claim, 0.0, None))
                continue
            passage, score = next(scores)
            if score >= self.threshold:
                kept.append(Supported(claim, int(passage) + 1, round(float(score), 4)))
            else:
                dropped.append(Unsupported(claim, round(float(score), 4), int(passage) + 1))
        return Grounded(kept=kept, dropped=dropped, invalid_citations=invalid)

    def _support(self, claims: list[str], passages: Sequence[RankedPassage]) -> np.ndarray:
        if self._bi_encoder:
            vectors = self.encoder.embed(claims)  # type: ignore[attr-defined]
            return np.stack([(vectors @ self._passage_vectors(p).T).max(axis=1) for p in passages], axis=1)
        sentences = [split_sentences(p.text) or [p.text] for p in passages]
        return np.asarray([[float(np.max(self.encoder.score(claim, s))) for s in sentences] for claim in claims])

    def _passage_vectors(self, passage: RankedPassage) -> np.ndarray:
        sentences = split_sentences(passage.text) or [passage.text]
        cached = None if self.vectors is None else self.vectors.sentence_vectors(passage.id, sentences)
        return cached if cached is not None else self.encoder.embed(sentences)


def _with_stop(sentence: str) -> str:
    return sentence if sentence.endswith((".", "!", "?", ":")) else sentence + "."
