"""Generator stage: drafts the answer from the reranked passages, citing them by number.

Two modes, chosen by what the model bundle holds:
- abstractive: a decoder-only language model (ONNX, KV cache) writes the answer from a prompt
  built from the passages, capped in tokens. What production images run.
- extractive: no language model in the bundle; the answer is the passages' sentences most
  relevant to the question, chosen with the ONNX encoder (with a small preference for better
  ranked passages) and read in passage-rank order, each cited. What a laptop gets from
  `make run` (the bundle holds only the real all-MiniLM-L6-v2 encoder). The bundle caches every
  passage's sentence vectors (support_assistant.runtime.embeddings), so a request embeds only its
  question, and not even that when the reranker handed its vector on from the same graph
  (schema.QuestionVector); sentences the cache does not hold are embedded as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from support_assistant.runtime.embeddings import CachedVectors
from support_assistant.schema import Answer, GenerationRequest, QuestionVector, RankedPassage
from support_assistant.stages.reranker import Scorer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
_FENCE = re.compile(r"```.*?```", re.DOTALL)
# List markers and bold/italic asterisks; underscores stay (they are part of metric and field names).
_MARKUP = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+|\*{1,2}(?=\S)|(?<=\S)\*{1,2}")
_WORD = re.compile(r"\w+")
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


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


class ExtractiveGenerator:
    mode = "extractive"

    def __init__(self, scorer: Scorer, sentences: int = 3, rank_weight: float = 0.05,
                 vectors: CachedVectors | None = None) -> None:
        self.scorer = scorer
        self.sentences = sentences
        # Small preference for sentences from passages the reranker put first.
        self.rank_weight = rank_weight
        # Cached sentence vectors only make sense for a bi-encoder (cosine of independent embeddings).
        self.vectors = vectors if hasattr(scorer, "embed") else None

    @property
    def provider(self) -> str:
        return getattr(self.scorer, "provider", "none")

    def answer_many(self, requests: Sequence[GenerationRequest]) -> list[Answer]:
        if self.vectors is None:
            return [self._answer(r, None) for r in requests]
        questions: list[np.ndarray | None] = [self._usable(r.question_vector) for r in requests]
        missing = [i for i, q in enumerate(questions) if q is None]
        if missing:
            # The questions that came without a usable vector, in one encoder run.
            embedded = self.scorer.embed([requests[i].question for i in missing])  # type: ignore[attr-defined]
            for i, vector in zip(missing, embedded, strict=True):
                questions[i] = vector
        return [self._answer(r, question) for r, question in zip(requests, questions, strict=True)]

    def answer(self, request: GenerationRequest) -> Answer:
        return self.answer_many([request])[0]

    def _usable(self, vector: QuestionVector | None) -> np.ndarray | None:
        """The handed-on question vector, if it comes from the graph this cache was computed with."""
        if vector is None or self.vectors is None or vector.encoder != self.vectors.model_sha256:
            return None
        values = np.asarray(vector.values, dtype=np.float32)
        return values if values.shape == (self.vectors.dim,) else None

    def _sentence_scores(self, request: GenerationRequest, split: list[list[str]],
                         question: np.ndarray | None) -> np.ndarray:
        """Cosine (bi-encoder) or model score of every candidate sentence, in candidate order."""
        flat = [sentence for sentences in split for sentence in sentences]
        if question is None or self.vectors is None:
            return np.asarray(self.scorer.score(request.question, flat), dtype=np.float32)
        blocks = [self.vectors.sentence_vectors(p.id, sentences) for p, sentences in zip(request.passages, split,
                                                                                       strict=True)]
        missing = [sentence for block, sentences in zip(blocks, split, strict=True) if block is None
                   for sentence in sentences]
        fresh = self.scorer.embed(missing)  # type: ignore[attr-defined]  # no model run when empty
        rows, start = [], 0
        for block, sentences in zip(blocks, split, strict=True):
            if block is None:
                block = fresh[start: start + len(sentences)]
                start += len(sentences)
            rows.append(block)
        return np.concatenate(rows) @ question

    def _answer(self, request: GenerationRequest, question: np.ndarray | None) -> Answer:
        split = [split_sentences(passage.text) for passage in request.passages]
        candidates = [
            (rank, position, sentence)
            for rank, sentences in enumerate(split)
            for position, sentence in enumerate(sentences)
        ]
        if not candidates:
            return Answer(text="No runbook passage matches this question.", mode=self.mode, provider=self.provider)
        scores = self._sentence_scores(request, split, question)
        scores = scores - self.rank_weight * np.asarray([c[0] for c in candidates], dtype=np.float32)
        chosen: list[tuple[int, int, str]] = []
        for index in np.argsort(-scores, kind="stable"):
            rank, position, sentence = candidates[int(index)]
            words = _words(sentence)
            # Skip near-repeats: runbooks restate the symptom in several sections.
            if any(len(words & _words(c[2])) / max(1, len(words | _words(c[2]))) > 0.6 for c in chosen):
                continue
            chosen.append((rank, position, sentence))
            if len(chosen) == self.sentences:
                break
        # Read in document order: best passage first, its sentences in their own order.
        chosen.sort(key=lambda c: (c[0], c[1]))
        parts = [f"{s if s.endswith(('.', '!', '?')) else s + '.'} [{rank + 1}]" for rank, _, s in chosen]
        return Answer(text=" ".join(parts), mode=self.mode, cited=sorted({rank + 1 for rank, _, _ in chosen}),
                      provider=self.provider)


PROMPT_SYSTEM = (
    "You are an SRE assistant for a Ray Serve application on Kubernetes. Answer the question using only "
    "the numbered runbook excerpts. Cite excerpts as [n]. Say which layer is failing and what to check first."
)


# The prompt ends each excerpt list with "Question:"; a model that starts a new one is done.
PROMPT_STOP = ("\n\nQuestion:",)


class AbstractiveGenerator:
    mode = "abstractive"

    def __init__(self, decoder, max_prompt_tokens: int = 1536, max_new_tokens: int = 192,
                 temperature: float = 0.0, stop: Sequence[str] = PROMPT_STOP) -> None:
        self.decoder = decoder
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.stop = tuple(stop)

    def build_prompt(self, question: str, passages: Sequence[RankedPassage]) -> str:
        """The chat prompt, with as many excerpts as fit in max_prompt_tokens (the last one cut)."""
        def render(excerpts: list[str]) -> str:
            context = "\n\n".join(excerpts)
            return self.decoder.format_chat(f"Runbook excerpts:\n{context}\n\nQuestion: {question}\nAnswer:",
                                            system=PROMPT_SYSTEM)

        excerpts: list[str] = []
        for number, passage in enumerate(passages, start=1):
            excerpt = f"[{number}] {passage.title} - {passage.section}: {passage.text}"
            room = self.max_prompt_tokens - self.decoder.count_tokens(render([*excerpts, ""]))
            if room <= 8:
                break
            if self.decoder.count_tokens(excerpt) > room:
                excerpts.append(self.decoder.truncate_to_tokens(excerpt, room))
                break
            excerpts.append(excerpt)
        prompt = render(excerpts)
        if self.decoder.count_tokens(prompt) > self.max_prompt_tokens:
            # Only possible when the question alone overflows the budget.
            prompt = self.decoder.truncate_to_tokens(prompt, self.max_prompt_tokens)
        return prompt

    def answer_many(self, requests: Sequence[GenerationRequest]) -> list[Answer]:
        prompts = [self.build_prompt(r.question, r.passages) for r in requests]
        generations = self.decoder.generate(prompts, max_new_tokens=self.max_new_tokens, stop=self.stop,
                                            temperature=self.temperature)
        answers = []
        for request, generation in zip(requests, generations, strict=True):
            cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", generation.text)
                            if 1 <= int(n) <= len(request.passages)})
            answers.append(Answer(text=generation.text.strip(), mode=self.mode, tokens=generation.tokens,
                                  finish_reason=generation.finish_reason, cited=cited,
                                  provider=self.decoder.provider))
        return answers
