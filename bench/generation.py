"""The language model in the pipeline: what a user sees of it, and what it writes.

- `answer_quality`: the labelled questions (bench/questions.yaml) answered by the bundle's language
  model and by the extractive generator, side by side, on the same passages (BM25 -> reranker, the
  base config's top_k), in one process (no Ray: the quality of the text does not depend on Serve).
  Each final answer is checked again by the grounding guard the Generator runs, so "every sentence
  supported" is measured the same way for both.
- `first_streamed_token`: `"stream": true` requests over HTTP, one at a time, timing the first
  `event: token` and the closing `event: answer`.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, percentile
from questions import load_questions
from support_assistant.assemble import PipelineStages, build_stages
from support_assistant.config import PipelineConfig
from support_assistant.schema import Answer, GenerationRequest, RerankRequest
from support_assistant.stages.generator import AbstractiveGenerator

BASE_CONFIG = ROOT / "base" / "support-assistant" / "serve-config.yaml"


def base_stages(bundle: Path) -> PipelineStages:
    """The stages with the base config's settings (the Generator's language model and guard included)."""
    return build_stages(bundle, PipelineConfig.from_serve_config(yaml.safe_load(BASE_CONFIG.read_text())))


def labelled_requests(stages: PipelineStages) -> list[tuple[str, str, GenerationRequest]]:
    """(question, labelled runbook, what the Generator gets) for each labelled question: the
    pipeline's own stages pick its passages (BM25 -> reranker, the config's top_k)."""
    config = stages.config
    picked = []
    for question, runbook in load_questions():
        normalized = stages.normalizer.normalize(question)
        candidates = stages.retriever.search(normalized.search_text, config.retriever.candidates)
        reranked = stages.reranker.rerank(RerankRequest(normalized.text, candidates, config.ingress.default_top_k))
        picked.append((question, runbook, GenerationRequest(normalized.text, reranked.passages,
                                                            reranked.question_vector)))
    return picked


def answer_quality(bundle: Path) -> list[dict[str, Any]]:
    stages = base_stages(bundle)
    model = stages.generator
    if not isinstance(model, AbstractiveGenerator):
        raise SystemExit(f"{bundle}: the bundle has no language model (or the base config disables it)")
    generators = {f"language model ({model.decoder.name})": model, "extractive": model.fallback}
    outcomes: dict[str, list[tuple[Answer, float, bool, bool]]] = {name: [] for name in generators}
    for _, runbook, request in labelled_requests(stages):
        for name, generator in generators.items():
            started = time.perf_counter()
            answer = generator.answer_many([request])[0]
            seconds = time.perf_counter() - started
            # The final text, checked again: an answer counts as supported only if the guard keeps
            # every one of its sentences.
            recheck = model.guard.check(answer.text, request.passages)
            supported = bool(recheck.kept) and not recheck.dropped
            cites = any(request.passages[n - 1].source == runbook for n in answer.cited
                        if 1 <= n <= len(request.passages))
            outcomes[name].append((answer, seconds, supported, cites))
    rows = []
    for name, results in outcomes.items():
        n = len(results)
        answers = [a for a, *_ in results]
        rows.append({
            "generator": name,
            "answers": n,
            "every_sentence_supported": round(sum(s for _, _, s, _ in results) / n, 3),
            "cites_the_labelled_runbook": round(sum(c for *_, c in results) / n, 3),
            "fallback_rate": round(sum(a.mode == "extractive_fallback" for a in answers) / n, 3),
            # Drafts the guard had to cut (a sentence dropped, the answer kept): the model strayed.
            "drafts_with_a_dropped_sentence": round(sum(a.unsupported_sentences > 0 for a in answers) / n, 3),
            "mean_tokens": round(sum(a.tokens for a in answers) / n, 1),
            "p50_s": round(percentile([s for _, s, _, _ in results], 50), 3),
        })
    return rows


def _first_token(port: int, question: str, timeout_s: float) -> tuple[float, float, int]:
    """(ms to the first token event, ms to the answer event, tokens) for one streamed request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        started = time.perf_counter()
        connection.request("POST", "/v1/answer", json.dumps({"question": question, "stream": True}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"streamed request answered {response.status}: {response.read()[:200]!r}")
        first = None
        event = None
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
                if event == "token" and first is None:
                    first = (time.perf_counter() - started) * 1000
            elif line.startswith("data: ") and event in ("answer", "error"):
                data = json.loads(line[len("data: "):])
                if event == "error":
                    raise RuntimeError(f"stream ended in an error event: {data}")
                done = (time.perf_counter() - started) * 1000
                return (first if first is not None else done), done, int(data["generation"]["tokens"])
        raise RuntimeError("the stream ended without an answer event")
    finally:
        connection.close()


def first_streamed_token(port: int, questions: list[str], requests: int, timeout_s: float = 60) -> dict[str, Any]:
    firsts, totals, tokens = [], [], []
    for i in range(requests):
        first, total, n = _first_token(port, questions[i % len(questions)], timeout_s)
        firsts.append(first)
        totals.append(total)
        tokens.append(n)
    return {"requests": requests, "first_token_p50_ms": round(percentile(firsts, 50), 1),
            "first_token_p90_ms": round(percentile(firsts, 90), 1),
            "answer_event_p50_ms": round(percentile(totals, 50), 1),
            "mean_tokens": round(sum(tokens) / len(tokens), 1)}


def burst(port: int, question: str, clients: int, requests: int, timeout_s: float = 60) -> dict[str, Any]:
    """`requests` POSTs of one question from `clients` threads at once, as a busy morning sends them:
    how each ended (status, and for a 200 the answer's mode and fallback reason) and how long it took."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> tuple[str, float]:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        try:
            connection.request("POST", "/v1/answer", json.dumps({"question": question, "top_k": 3}),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            body = json.loads(response.read() or b"{}")
            if response.status == 200:
                reason = (body.get("generation") or {}).get("fallback_reason")
                outcome = body.get("generator_mode", "?") + (f" ({reason})" if reason else "")
            else:
                outcome = f"{response.status} {(body.get('error') or {}).get('code', '')}".strip()
        except (OSError, ValueError) as exc:
            outcome = type(exc).__name__
        finally:
            connection.close()
        return outcome, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    answered = [s for outcome, s in results if not outcome[:1].isdigit() and outcome[0].islower()]
    return {"clients": clients, "requests": requests, "wall_s": round(wall, 1),
            "outcomes": dict(Counter(outcome for outcome, _ in results).most_common()),
            "answered": len(answered), "answer_p50_s": round(percentile(answered, 50), 1) if answered else None,
            "slowest_s": round(max(s for _, s in results), 1)}
