"""Calibrates the grounding guard's threshold on the labelled questions (bench/questions.yaml).

For each question the pipeline's own stages pick its passages (BM25 -> reranker, top_k from the
config). The guard must reject a sentence those passages do not support, so the negatives are the
sentences of every runbook none of the passages comes from: claims in the same vocabulary (pods,
replicas, Ray, alerts) that the passages do not make, the hardest unsupported sentences a model can
write from its own memory of the domain. Each negative's support is what the guard computes (its
best cosine against the passages' sentences); the threshold printed is the smallest that lets at
most `--false-accept` of them through. With `--generate` the bundle's language model also answers
every question and the script reports, at that threshold, how many of its sentences pass and how
often the answer falls back to the extractive one.

    .venv/bin/python bench/guard_calibration.py --bundle .cache/bundle [--generate]

The threshold goes into base/support-assistant/serve-config.yaml (Generator.user_config.
grounding_thresholds, keyed by the encoder's name); docs/benchmarks.md has the last run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from generation import base_stages, labelled_requests  # noqa: E402
from support_assistant.api import ParsedRequest  # noqa: E402
from support_assistant.assemble import in_process  # noqa: E402
from support_assistant.pipeline import answer  # noqa: E402
from support_assistant.stages.generator import AbstractiveGenerator  # noqa: E402
from support_assistant.stages.sentences import split_sentences  # noqa: E402

RUNBOOKS = ROOT / "docs" / "runbooks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundle")
    parser.add_argument("--false-accept", type=float, default=0.01,
                        help="share of unsupported (off-topic runbook) sentences the threshold may let through")
    parser.add_argument("--generate", action="store_true", help="also answer every question with the LM")
    args = parser.parse_args()

    stages = base_stages(args.bundle)
    config = stages.config
    generator = stages.generator
    if not isinstance(generator, AbstractiveGenerator):
        sys.exit(f"{args.bundle}: the bundle has no language model (or use_language_model is false)")
    guard = generator.guard
    encoder_name = stages.bundle.models["reranker"]["name"]
    corpus = {path.name: split_sentences(path.read_text()) for path in sorted(RUNBOOKS.glob("*.md"))}

    negatives: list[float] = []
    picked = labelled_requests(stages)
    for _, _, request in picked:
        used = {p.source for p in request.passages}
        off_topic = [s for source, sentences in corpus.items() if source not in used for s in sentences]
        checked = guard.check(" ".join(s if s.endswith(".") else s + "." for s in off_topic), request.passages)
        negatives.extend([s.score for s in checked.kept] + [d.score for d in checked.dropped if d.passage])
    scores = np.sort(np.asarray(negatives))
    threshold = float(np.quantile(scores, 1.0 - args.false_accept))
    report: dict[str, object] = {
        "encoder": encoder_name, "questions": len(picked), "negatives": len(scores),
        "negative_support_p50": round(float(np.median(scores)), 4),
        "negative_support_p99": round(float(np.quantile(scores, 0.99)), 4),
        "false_accept": args.false_accept, "threshold": round(threshold, 3),
        "configured_threshold": config.generator.grounding_thresholds.get(encoder_name),
    }
    if args.generate:
        guard.threshold = report["configured_threshold"] or threshold  # what the config will run
        run = in_process(stages)
        modes: dict[str, int] = {}
        kept = dropped = cites_runbook = 0
        latencies = []
        for question, runbook, _ in picked:
            t0 = time.perf_counter()
            result = asyncio.run(answer(ParsedRequest(question=question, top_k=config.ingress.default_top_k), run,
                                        config.ingress.stage_timeouts_s.as_dict()))
            latencies.append(time.perf_counter() - t0)
            modes[result["generator_mode"]] = modes.get(result["generator_mode"], 0) + 1
            generation = result["generation"]
            dropped += generation["unsupported_sentences"]
            if result["generator_mode"] == "abstractive":
                kept += len(generation["cited"]) and result["answer"].count("[")
            cites_runbook += any(result["sources"][n - 1]["source"] == runbook for n in generation["cited"])
        report.update(modes=modes, fallback_rate=round(modes.get("extractive_fallback", 0) / len(picked), 3),
                      sentences_kept=kept, sentences_dropped=dropped,
                      answers_citing_the_labelled_runbook=round(cites_runbook / len(picked), 3),
                      p50_s=round(float(np.median(latencies)), 2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
