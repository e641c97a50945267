"""The HTTP contract, without Ray: request validation with explicit limits, and error bodies.

Every rejection is a 4xx with a JSON body naming the field, e.g.
{"error": {"code": "invalid_input", "field": "top_k", "message": "must be between 1 and 10, got 50"}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from support_assistant.errors import InvalidInput, StageError


@dataclass(frozen=True)
class Limits:
    """Set from the Ingress deployment's user_config in serveConfigV2."""

    max_body_bytes: int = 65536
    max_question_chars: int = 2000
    top_k_min: int = 1
    top_k_max: int = 10
    default_top_k: int = 3

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Limits:
        known = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        return cls(**known)


@dataclass(frozen=True)
class AnswerRequest:
    question: str
    top_k: int


FIELDS = ("question", "top_k")


def parse_answer_request(body: bytes, limits: Limits) -> AnswerRequest:
    if len(body) > limits.max_body_bytes:
        raise InvalidInput("body", f"is {len(body)} bytes; the limit is {limits.max_body_bytes}",
                           status=413, code="body_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput("body", f"is not valid JSON ({exc.args[0] if exc.args else exc})",
                           code="malformed_json") from None
    if not isinstance(data, dict):
        raise InvalidInput("body", f"must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidInput(unknown[0], f"unknown field (allowed: {', '.join(FIELDS)})")
    if "question" not in data:
        raise InvalidInput("question", "is required", code="missing_field")
    question = data["question"]
    if not isinstance(question, str):
        raise InvalidInput("question", f"must be a string, got {type(question).__name__}")
    if not question.strip():
        raise InvalidInput("question", "must not be empty")
    if len(question) > limits.max_question_chars:
        raise InvalidInput("question", f"is {len(question)} characters; the limit is {limits.max_question_chars}",
                           code="too_long")
    top_k = data.get("top_k", limits.default_top_k)
    # bool is an int in Python; `true` is not a count.
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise InvalidInput("top_k", f"must be an integer, got {type(top_k).__name__}")
    if not limits.top_k_min <= top_k <= limits.top_k_max:
        raise InvalidInput("top_k", f"must be between {limits.top_k_min} and {limits.top_k_max}, got {top_k}",
                           code="out_of_range")
    return AnswerRequest(question=question, top_k=top_k)


def error_body(exc: InvalidInput | StageError) -> dict:
    if isinstance(exc, InvalidInput):
        return {"error": {"code": exc.code, "field": exc.field, "message": f"{exc.field} {exc.message}"}}
    return {"error": {"code": f"stage_{exc.reason}", "stage": exc.stage, "message": f"{exc.stage}: {exc.message}"}}
