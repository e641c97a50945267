"""Retrieval quality on the labelled questions: did the runbook that answers the question come back?"""

from __future__ import annotations

from typing import Any

from support_assistant.schema import Passage, RerankRequest


def first_hit(sources: list[str], runbook: str) -> int | None:
    """1-based rank of the first passage from `runbook`, or None."""
    return next((rank for rank, source in enumerate(sources, start=1) if source == runbook), None)


def scores(ranks: list[int | None]) -> dict[str, Any]:
    n = len(ranks)
    return {
        "questions": n,
        "recall_at_1": round(sum(1 for r in ranks if r == 1) / n, 3),
        "recall_at_3": round(sum(1 for r in ranks if r is not None and r <= 3) / n, 3),
        "mrr": round(sum(1 / r for r in ranks if r is not None) / n, 3),
    }


def evaluate(labelled: list[tuple[str, str]], shortlist: list[list[Passage]], rerankers: dict[str, Any]) -> list[dict]:
    """BM25 order alone, then each reranker (a RerankStage) over the same shortlist."""
    rows = [{"ranking": "BM25 alone", **scores([first_hit([p.source for p in passages], runbook)
                                                 for (_, runbook), passages in zip(labelled, shortlist, strict=True)])}]
    for name, stage in rerankers.items():
        ranks = []
        for (question, runbook), passages in zip(labelled, shortlist, strict=True):
            ranked = stage.rerank(RerankRequest(question, passages, top_k=max(1, len(passages)))).passages
            ranks.append(first_hit([p.source for p in ranked], runbook))
        rows.append({"ranking": name, **scores(ranks)})
    return rows
