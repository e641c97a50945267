"""Generator stage: drafts the answer from the reranked passages, citing them by number.

Two modes, chosen by what the model bundle holds (and Generator.user_config.use_language_model):
- abstractive: a decoder-only language model (ONNX, KV cache) writes the answer from a ChatML
  prompt built from the passages, capped in tokens, and the grounding guard (stages/grounding.py)
  keeps only the sentences the passages support, each cited with its passage. When nothing holds,
  the answer is the extractive one (mode extractive_fallback, with the reason). What `make run`
  runs (SmolLM2-135M-Instruct in the local bundle) and what production images run.
- extractive: no language model; the answer is the passages' sentences most
  relevant to the question, chosen with the ONNX encoder (with a small preference for better
  ranked passages) and read in passage-rank order, each cited. The bundle caches every
  passage's sentence vectors (support_assistant.runtime.embeddings), so a request embeds only its
  question, and not even that when the reranker handed its vector on from the same graph
  (schema.QuestionVector); sentences the cache does not hold are embedded as before.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from support_assistant.runtime.decode_loop import DecodeLoop
from support_assistant.runtime.decoder import Decoder, Generation, SequenceState
from support_assistant.runtime.embeddings import CachedVectors
from support_assistant.schema import Answer, GenerationRequest, QuestionVector, RankedPassage
from support_assistant.stages.grounding import Grounded, GroundingGuard
from support_assistant.stages.reranker import Scorer
from support_assistant.stages.sentences import split_sentences

__all__ = ["AbstractiveGenerator", "ExtractiveGenerator", "split_sentences"]

_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


class ExtractiveGenerator:
    mode = "extractive"

    def __init__(self, scorer: Scorer, sentences: int = 3, rank_weight: float = 0.05,
                 vectors: CachedVectors | None = None, model: str | None = None) -> None:
        self.scorer = scorer
        self.model = model  # the encoder's name, reported with each answer
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
            return Answer(text="No runbook passage matches this question.", mode=self.mode, provider=self.provider,
                          model=self.model)
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
                      provider=self.provider, model=self.model)


PROMPT_SYSTEM = (
    "You are an SRE assistant for a Ray Serve application on Kubernetes. Answer the question using only "
    "the numbered runbook excerpts, in two or three short sentences. Cite excerpts as [n]. Say which layer "
    "is failing and what to check first. If the excerpts do not answer the question, say so."
)


# The prompt ends each excerpt list with "Question:"; a model that starts a new one is done.
PROMPT_STOP = ("\n\nQuestion:",)


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # what the model reads, special tokens included
    passages: int  # how many of the passages fit (the last one may be cut)


class AbstractiveGenerator:
    """A language model writes the answer; the grounding guard keeps only what the passages support.

    When nothing the model wrote is supported, the answer is the extractive one over the same
    passages (mode "extractive_fallback", with the reason), so a question always gets a cited
    answer and never an unsupported one.
    """

    mode = "abstractive"
    fallback_mode = "extractive_fallback"

    def __init__(self, decoder: Decoder, guard: GroundingGuard, fallback: ExtractiveGenerator,
                 max_prompt_tokens: int = 1536, max_new_tokens: int = 192, temperature: float = 0.0,
                 stop: Sequence[str] = PROMPT_STOP) -> None:
        self.decoder = decoder
        self.guard = guard
        self.fallback = fallback
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.stop = tuple(stop)

    @property
    def provider(self) -> str:
        return self.decoder.provider

    def build_prompt(self, question: str, passages: Sequence[RankedPassage]) -> Prompt:
        """The chat prompt: system instruction, as many numbered excerpts as fit in max_prompt_tokens
        (the last one cut on a token boundary), and the whole question, which is never cut: a
        question too long for the budget leaves no room for excerpts instead."""
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
        text = render(excerpts)
        return Prompt(text=text, tokens=self.decoder.prompt_tokens(text), passages=len(excerpts))

    def start(self, request: GenerationRequest) -> tuple[Prompt, SequenceState]:
        """The prompt and its decoding state, for a caller that drives the decode (serving's batcher)."""
        prompt = self.build_prompt(request.question, request.passages)
        return prompt, self.decoder.new_sequence(prompt.text, self.max_new_tokens, self.stop, self.temperature)

    async def stream(self, request: GenerationRequest, loop: DecodeLoop,
                     deadline_s: float | None = None) -> AsyncIterator[str | Answer]:
        """The draft's text in pieces as `loop` decodes it (shared with the other requests in the
        loop), then the guarded Answer as the last item. A deadline that comes mid-answer ends the
        draft where it is (the answer is `truncated`); a consumer that stops iterating (a client
        that went away) takes the sequence out of the batch at its next step."""
        prompt, seq = self.start(request)
        ticket = loop.submit(seq, deadline_s)
        try:
            async for piece in ticket.text_deltas():
                yield piece
            generation = await ticket.result()
        finally:
            ticket.cancel()  # a no-op once it finished
        # The guard runs the encoder: off the event loop, which keeps streaming other requests.
        if ticket.not_started:  # nothing to guard: the fallback, without the guard's encoder run
            yield await asyncio.to_thread(self.not_started, request, prompt, generation)
            return
        yield await asyncio.to_thread(self.finish, request, prompt, generation, ticket.truncated)

    async def answer_in(self, loop: DecodeLoop, request: GenerationRequest,
                        deadline_s: float | None = None) -> Answer:
        """The guarded answer, decoded in `loop` (the non-streaming call)."""
        last: str | Answer = ""
        async for item in self.stream(request, loop, deadline_s):
            last = item
        assert isinstance(last, Answer)
        return last

    def answer_many(self, requests: Sequence[GenerationRequest]) -> list[Answer]:
        prompts = [self.build_prompt(r.question, r.passages) for r in requests]
        generations = self.decoder.generate([p.text for p in prompts], max_new_tokens=self.max_new_tokens,
                                            stop=self.stop, temperature=self.temperature)
        return [self.finish(r, p, g) for r, p, g in zip(requests, prompts, generations, strict=True)]

    def finish(self, request: GenerationRequest, prompt: Prompt, generation: Generation,
               truncated: bool = False) -> Answer:
        """The guarded answer from what the model generated (or, when nothing holds, the fallback)."""
        grounded = self.guard.check(generation.text, request.passages[: max(prompt.passages, 1)])
        common = {"tokens": generation.tokens, "finish_reason": generation.finish_reason, "truncated": truncated,
                  "prompt_tokens": prompt.tokens, "unsupported_sentences": len(grounded.dropped),
                  "invalid_citations": grounded.invalid_citations, "draft": generation.text.strip()}
        if grounded.kept:
            return Answer(text=grounded.text, mode=self.mode, cited=grounded.cited, provider=self.provider,
                          model=self.decoder.name, **common)
        return self._fallback_answer(request, _fallback_reason(generation, grounded), common)

    def not_started(self, request: GenerationRequest, prompt: Prompt, generation: Generation) -> Answer:
        """The fallback for a request the decode loop let go before it joined the batch."""
        common = {"tokens": generation.tokens, "finish_reason": generation.finish_reason, "truncated": True,
                  "prompt_tokens": prompt.tokens, "unsupported_sentences": 0, "invalid_citations": [], "draft": ""}
        return self._fallback_answer(request, NOT_STARTED, common)

    def _fallback_answer(self, request: GenerationRequest, reason: str, common: dict) -> Answer:
        extractive = self.fallback.answer(request)
        return Answer(text=extractive.text, mode=self.fallback_mode, cited=extractive.cited, provider=self.provider,
                      model=extractive.model, fallback_reason=reason, **common)


NOT_STARTED = "the decoder was busy: no room in its batch to write this answer within the stage's budget"


def _fallback_reason(generation: Generation, grounded: Grounded) -> str:
    if not generation.text.strip():
        return "the model wrote nothing" + (" before its budget ended" if generation.finish_reason == "length" else "")
    best = max((d.score for d in grounded.dropped), default=0.0)
    return (f"no generated sentence is supported by the passages ({len(grounded.dropped)} dropped, "
            f"best support {best:.2f})")
