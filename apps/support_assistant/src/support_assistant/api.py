"""The HTTP contract, without Ray: request parsing with explicit limits, the response shape, and
error bodies. The models here are also the OpenAPI schema the ingress serves (/openapi.json).

Every rejection is a 4xx with a JSON body naming the field, e.g.
{"error": {"code": "out_of_range", "field": "top_k", "message": "top_k must be between 1 and 10, got 50"}}.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from support_assistant.config import IngressConfig
from support_assistant.errors import InvalidInput, StageError


class AnswerRequest(BaseModel):
    """POST /v1/answer. Limits (question length, top_k range, body size) come from the Ingress
    user_config and are checked after the types."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: StrictStr = Field(description="The operator's question, e.g. a symptom as an alert shows it.")
    # Optional, but not nullable: an explicit null is a type error, leaving it out means the default.
    top_k: StrictInt = Field(default=None, description="How many sources to cite (default and bounds: user_config).")


class ParsedRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    question: str
    top_k: int


class Source(BaseModel):
    rank: int
    source: str
    title: str
    section: str
    retrieval_score: float
    rerank_score: float
    text: str


class Generation(BaseModel):
    tokens: int
    finish_reason: str
    cited: list[int]


class ModelInfo(BaseModel):
    role: str
    name: str
    revision: str
    kind: str
    sha256: str


class AppInfo(BaseModel):
    name: str
    version: str


class AnswerResponse(BaseModel):
    question: str
    normalized_question: str
    answer: str
    generator_mode: str = Field(description="abstractive, extractive, or none (no passage matched)")
    sources: list[Source]
    retrieval: str = Field(description="ok, or empty when BM25 found no passage")
    generation: Generation | None = None
    providers: dict[str, str | None] | None = None
    timings_ms: dict[str, float]
    app: AppInfo
    bundle_version: str
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    stage: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_TYPE_NAMES = {"string_type": "a string", "int_type": "an integer"}


def parse_answer_request(body: bytes, limits: IngressConfig) -> ParsedRequest:
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
    try:
        request = AnswerRequest.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, data) from None
    question = request.question
    if not question.strip():
        raise InvalidInput("question", "must not be empty")
    if len(question) > limits.max_question_chars:
        raise InvalidInput("question", f"is {len(question)} characters; the limit is {limits.max_question_chars}",
                           code="too_long")
    top_k = limits.default_top_k if request.top_k is None else request.top_k
    if not limits.top_k_min <= top_k <= limits.top_k_max:
        raise InvalidInput("top_k", f"must be between {limits.top_k_min} and {limits.top_k_max}, got {top_k}",
                           code="out_of_range")
    return ParsedRequest(question=question, top_k=top_k)


def _invalid(exc: ValidationError, data: dict[str, Any]) -> InvalidInput:
    """The first problem pydantic found, in the API's words."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "body"
    if error["type"] == "extra_forbidden":
        return InvalidInput(field, f"unknown field (allowed: {', '.join(AnswerRequest.model_fields)})")
    if error["type"] == "missing":
        return InvalidInput(field, "is required", code="missing_field")
    expected = _TYPE_NAMES.get(error["type"], "valid")
    return InvalidInput(field, f"must be {expected}, got {_json_type(data.get(field))}")


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def error_body(exc: InvalidInput | StageError) -> dict[str, Any]:
    if isinstance(exc, InvalidInput):
        return {"error": {"code": exc.code, "field": exc.field, "message": f"{exc.field} {exc.message}"}}
    return {"error": {"code": f"stage_{exc.reason}", "stage": exc.stage, "message": f"{exc.stage}: {exc.message}"}}
