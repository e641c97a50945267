import json

import pytest
from support_assistant.api import error_body, parse_answer_request
from support_assistant.config import IngressConfig
from support_assistant.errors import InvalidInput, StageError

TIMEOUTS = {"normalizer": 1, "retriever": 1, "reranker": 1, "generator": 1}
LIMITS = IngressConfig(max_body_bytes=1000, max_question_chars=50, top_k_min=1, top_k_max=5, default_top_k=3,
                       stage_timeouts_s=TIMEOUTS)


def test_valid_request_with_default_top_k():
    request = parse_answer_request(b'{"question": "pod pending"}', LIMITS)
    assert (request.question, request.top_k) == ("pod pending", 3)


@pytest.mark.parametrize(
    ("body", "status", "field", "code"),
    [
        (b"{not json", 400, "body", "malformed_json"),
        (b"[1, 2]", 400, "body", "invalid_input"),
        (b"{}", 400, "question", "missing_field"),
        (b'{"question": 5}', 400, "question", "invalid_input"),
        (b'{"question": "   "}', 400, "question", "invalid_input"),
        (json.dumps({"question": "x" * 51}).encode(), 400, "question", "too_long"),
        (b'{"question": "q", "top_k": 0}', 400, "top_k", "out_of_range"),
        (b'{"question": "q", "top_k": 6}', 400, "top_k", "out_of_range"),
        (b'{"question": "q", "top_k": "3"}', 400, "top_k", "invalid_input"),
        (b'{"question": "q", "top_k": true}', 400, "top_k", "invalid_input"),
        (b'{"question": "q", "mode": "x"}', 400, "mode", "invalid_input"),
        (b'{"question": null}', 400, "question", "invalid_input"),
        (b'{"question": ["a"]}', 400, "question", "invalid_input"),
        (b'{"question": "q", "top_k": 2.5}', 400, "top_k", "invalid_input"),
        (b'{"question": "q", "top_k": null}', 400, "top_k", "invalid_input"),
        (b'"just a string"', 400, "body", "invalid_input"),
        (b'{"question": "' + b"x" * 1000 + b'"}', 413, "body", "body_too_large"),
        (b"\xff\xfe", 400, "body", "malformed_json"),
    ],
)
def test_rejections_name_the_field(body, status, field, code):
    with pytest.raises(InvalidInput) as info:
        parse_answer_request(body, LIMITS)
    error = info.value
    assert (error.status, error.field, error.code) == (status, field, code)
    payload = error_body(error)["error"]
    assert payload["field"] == field and payload["message"].startswith(field)


def test_type_errors_say_what_was_sent():
    with pytest.raises(InvalidInput) as info:
        parse_answer_request(b'{"question": "q", "top_k": "3"}', LIMITS)
    assert info.value.message == "must be an integer, got string"


def test_stage_error_body_names_the_stage():
    body = error_body(StageError("reranker", "timeout", "did not answer within 1s", status=504))
    assert body["error"] == {"code": "stage_timeout", "stage": "reranker",
                             "message": "reranker: did not answer within 1s"}
