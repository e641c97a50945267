"""The typed objects that cross stage boundaries, from the question to the answer.

    str --Normalizer--> NormalizedQuestion --Retriever--> list[Passage]
        --Reranker(RerankRequest)--> Reranked --Generator(GenerationRequest)--> Answer

A bi-encoder reranker hands its question vector on (QuestionVector), so the extractive generator,
which reads the same graph, does not embed the question a second time.

Plain frozen dataclasses: cheap to pickle between Serve replicas, and the same objects when the
stages run in one process (tests, the bench's single-process baseline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class NormalizedQuestion:
    text: str  # NFKC, control characters removed, whitespace collapsed: what the models read
    search_text: str  # text, case-folded: what the lexical retriever matches on
    truncated: bool


@dataclass(frozen=True)
class Passage:
    id: int
    source: str  # path relative to the corpus folder
    title: str  # document title
    section: str  # section heading ("" for the text before the first section)
    text: str
    score: float = 0.0  # BM25


@dataclass(frozen=True)
class RankedPassage(Passage):
    rerank_score: float = 0.0

    @classmethod
    def of(cls, passage: Passage, rerank_score: float) -> RankedPassage:
        return cls(**asdict(passage), rerank_score=rerank_score)


@dataclass(frozen=True)
class RerankRequest:
    query: str
    passages: list[Passage]  # the retriever's candidates
    top_k: int


@dataclass(frozen=True)
class QuestionVector:
    """The question as a bi-encoder embedded it (L2-normalised). `encoder` is the sha256 of the graph
    that computed it: a stage uses the vector only where its own cached vectors come from that same
    graph, so during a rollout a vector from another bundle's model is ignored, never mixed in."""

    encoder: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Reranked:
    passages: list[RankedPassage]  # best first, at most top_k
    provider: str  # the ONNX Runtime execution provider that scored them
    question_vector: QuestionVector | None = None  # bi-encoder with cached vectors only


@dataclass(frozen=True)
class GenerationRequest:
    question: str
    passages: list[RankedPassage]  # best first; the answer cites them as [1], [2], ...
    question_vector: QuestionVector | None = None  # the reranker's, when it embedded this question


@dataclass(frozen=True)
class Answer:
    text: str
    mode: str  # abstractive | extractive
    tokens: int = 0  # generated tokens (abstractive), 0 for extractive
    finish_reason: str = "stop"  # stop | length (abstractive); always stop for extractive
    cited: list[int] = field(default_factory=list)  # 1-based passage numbers the answer cites
    provider: str | None = None  # the ONNX Runtime execution provider that produced it
