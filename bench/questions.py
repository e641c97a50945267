"""The labelled operator questions (bench/questions.yaml): (question, runbook file) pairs."""

from __future__ import annotations

from pathlib import Path

import yaml

QUESTIONS_FILE = Path(__file__).with_name("questions.yaml")


def load_questions() -> list[tuple[str, str]]:
    data = yaml.safe_load(QUESTIONS_FILE.read_text())
    return [(item["q"], item["runbook"]) for item in data["questions"]]
