"""The HTTP contract, without Ray: request parsing with explicit limits, the response shape, and
error bodies. The models here are also the OpenAPI schema the ingress serves (/openapi.json).

Every rejection is a 4xx with a JSON body naming the field, e.g.
{"error": {"code": "out_of_range", "field": "top_k", "message": "top_k must be between 1 and 10, got 50"}}.
"""

from __future__ import annotations

import json
import unicodedata
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


# Control characters a question never needs (tab, newline and carriage return are whitespace), and
# the Unicode bidirectional controls that make text read differently from how it is stored
# ("Trojan Source", CVE-2021-42574) when an answer or a log line is shown to an operator.
_ALLOWED_CONTROLS = frozenset("\t\n\r")
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared as JSON (application/json, charset utf-8 if one is named)."""
    media, _, params = (content_type or "").partition(";")
    if media.strip().lower() != "application/json":
        raise InvalidInput("content-type", f"must be application/json, got {content_type or 'nothing'!r}",
                           status=415, code="unsupported_media_type")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvalidInput("content-type", f"charset must be utf-8, got {value.strip()!r}",
                               status=415, code="unsupported_media_type")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; two readers of the same body (a proxy, a log,
    # this app) could then disagree on what was asked.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidInput("body", f"has the key {key[:40]!r} twice", code="duplicate_key")
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> Any:
    raise InvalidInput("body", f"is not valid JSON ({name} is not a JSON number)", code="malformed_json")


def decode_json(body: bytes) -> Any:
    """The body as JSON, or InvalidInput naming what is wrong with it (never another exception)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("body", f"is not valid UTF-8 (byte {exc.start})", code="invalid_utf8") from None
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except InvalidInput:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidInput("body", f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                           code="malformed_json") from None
    except RecursionError:
        raise InvalidInput("body", "is nested too deeply", code="too_deep") from None
    except ValueError as exc:
        # e.g. an integer literal over Python's 4300-digit conversion limit
        raise InvalidInput("body", f"is not valid JSON ({str(exc)[:120]})", code="malformed_json") from None


def check_characters(field: str, text: str) -> None:
    """Refuses unpaired surrogates, control characters and bidi controls, naming the first."""
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in _ALLOWED_CONTROLS) or category == "Cs" or char in _BIDI_CONTROLS:
            kind = {"Cc": "control character", "Cs": "unpaired surrogate"}.get(category, "bidirectional control")
            raise InvalidInput(field, f"contains a {kind} U+{ord(char):04X} at position {position}",
                               code="invalid_characters")


def parse_answer_request(body: bytes, limits: IngressConfig) -> ParsedRequest:
    if len(body) > limits.max_body_bytes:
        raise InvalidInput("body", f"is {len(body)} bytes; the limit is {limits.max_body_bytes}",
                           status=413, code="body_too_large")
    if not body.strip():
        raise InvalidInput("body", "is empty; send a JSON object such as {\"question\": \"...\"}",
                           code="empty_body")
    data = decode_json(body)
    if not isinstance(data, dict):
        raise InvalidInput("body", f"must be a JSON object, got {_json_type(data)}")
    unknown = [key for key in data if key not in AnswerRequest.model_fields]
    if unknown:
        # Checked here rather than by pydantic, which reports a key it cannot encode (an unpaired
        # surrogate) without naming it.
        key = unknown[0]
        # A key that is not a plain name ("", spaces, control characters) is shown quoted.
        field = key[:80] if key.isprintable() and key.strip() == key and key else f"body[{key[:80]!r}]"
        raise InvalidInput(printable(field), f"unknown field (allowed: {', '.join(AnswerRequest.model_fields)})")
    try:
        request = AnswerRequest.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, data) from None
    question = request.question
    if len(question) > limits.max_question_chars:
        raise InvalidInput("question", f"is {len(question)} characters; the limit is {limits.max_question_chars}",
                           code="too_long")
    check_characters("question", question)
    if not question.strip():
        raise InvalidInput("question", "must not be empty")
    top_k = limits.default_top_k if request.top_k is None else request.top_k
    if not limits.top_k_min <= top_k <= limits.top_k_max:
        raise InvalidInput("top_k", f"must be between {limits.top_k_min} and {limits.top_k_max}, got {top_k}",
                           code="out_of_range")
    return ParsedRequest(question=question, top_k=top_k)


def _invalid(exc: ValidationError, data: dict[str, Any]) -> InvalidInput:
    """The first problem pydantic found, in the API's words."""
    error = exc.errors()[0]
    field = str(error["loc"][0])[:80] if error["loc"] else "body"
    if error["type"] == "extra_forbidden":
        return InvalidInput(field, f"unknown field (allowed: {', '.join(AnswerRequest.model_fields)})")
    if error["type"] == "missing":
        return InvalidInput(field, "is required", code="missing_field")
    expected = _TYPE_NAMES.get(error["type"], "valid")
    return InvalidInput(field, f"must be {expected}, got {_json_type(data.get(field))}")


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def printable(text: str) -> str:
    """`text` safe to put in a JSON response: a field name or path taken from a hostile request can
    hold unpaired surrogates, which UTF-8 cannot encode, so they are written as \\udXXX escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(exc: InvalidInput | StageError) -> dict[str, Any]:
    if isinstance(exc, InvalidInput):
        field = printable(exc.field)
        return {"error": {"code": exc.code, "field": field, "message": printable(f"{field} {exc.message}")}}
    return {"error": {"code": f"stage_{exc.reason}", "stage": exc.stage, "message": f"{exc.stage}: {exc.message}"}}
