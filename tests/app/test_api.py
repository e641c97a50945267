import json

import pytest
from support_assistant.api import error_body, parse_answer_request
from support_assistant.config import IngressConfig
from support_assistant.errors import InvalidInput, StageError

TIMEOUTS = {"normalizer": 1, "retriever": 1, "reranker": 1, "generator": 1}
LIMITS = IngressConfig(max_body_bytes=1000, max_question_chars=50, top_k_min=1, top_k_max=5, default_top_k=3,
                       max_in_flight=8, body_read_timeout_s=1, retry_after_s=1, stage_timeouts_s=TIMEOUTS,
                       normalizer={"max_chars": 50})


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
        (b"\xff\xfe", 400, "body", "invalid_utf8"),
        (b'{"question": "caf\xc3"}', 400, "body", "invalid_utf8"),
        (b"", 400, "body", "empty_body"),
        (b"  \n", 400, "body", "empty_body"),
        (b'{"question": "a", "question": "b"}', 400, "body", "duplicate_key"),
        (b'{"question": "q", "top_k": ' + b"9" * 900 + b"}", 400, "top_k", "out_of_range"),
        (b'{"question": "q", "top_k": NaN}', 400, "body", "malformed_json"),
        (b'{"question": "q", "top_k": Infinity}', 400, "body", "malformed_json"),
        (b'{"question": "ab\\u0000c"}', 400, "question", "invalid_characters"),
        (b'{"question": "ab\\ud800c"}', 400, "question", "invalid_characters"),
        ('{"question": "ok \u202e reversed"}'.encode(), 400, "question", "invalid_characters"),
        (b'{"question": "\x1b[31mred"}', 400, "body", "malformed_json"),
    ],
)
def test_rejections_name_the_field(body, status, field, code):
    with pytest.raises(InvalidInput) as info:
        parse_answer_request(body, LIMITS)
    error = info.value
    assert (error.status, error.field, error.code) == (status, field, code)
    payload = error_body(error)["error"]
    assert payload["field"] == field and payload["message"].startswith(field)


@pytest.mark.parametrize(("body", "code"), [
    (b"[" * 30000 + b"]" * 30000, "too_deep"),
    (b'{"question": ' + b'{"a": ' * 9000 + b"1" + b"}" * 9001, "too_deep"),
    (b'{"question": "q", "top_k": ' + b"9" * 5000 + b"}", "malformed_json"),
], ids=["deep-array", "deep-object", "int-over-4300-digits"])
def test_hostile_json_within_the_size_limit_is_a_400(body, code):
    limits = LIMITS.model_copy(update={"max_body_bytes": 65536})
    with pytest.raises(InvalidInput) as info:
        parse_answer_request(body, limits)
    assert (info.value.status, info.value.field, info.value.code) == (400, "body", code)


def test_tabs_newlines_and_non_latin_text_are_questions():
    body = '{"question": "Pod\\tPending\\nGPU \u8282\u70b9 \u0645\u0631\u062d\u0628\u0627"}'.encode()
    request = parse_answer_request(body, LIMITS)
    assert request.question.startswith("Pod\tPending\n")


def test_an_unknown_key_with_an_unpaired_surrogate_still_renders_as_json():
    with pytest.raises(InvalidInput) as info:
        parse_answer_request(b'{"question": "q", "\\udc80x": 1}', LIMITS)
    rendered = json.dumps(error_body(info.value), ensure_ascii=False).encode("utf-8")
    assert b"\\udc80x" in rendered


@pytest.mark.parametrize(("content_type", "ok"), [
    ("application/json", True), ("application/json; charset=utf-8", True), ("Application/JSON", True),
    (None, False), ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ("application/json; charset=latin-1", False), ("multipart/form-data; boundary=x", False),
])
def test_content_type_must_be_json(content_type, ok):
    from support_assistant.api import check_content_type

    if ok:
        check_content_type(content_type)
        return
    with pytest.raises(InvalidInput) as info:
        check_content_type(content_type)
    assert (info.value.status, info.value.code, info.value.field) == (415, "unsupported_media_type", "content-type")


def test_type_errors_say_what_was_sent():
    with pytest.raises(InvalidInput) as info:
        parse_answer_request(b'{"question": "q", "top_k": "3"}', LIMITS)
    assert info.value.message == "must be an integer, got string"


def test_stage_error_body_names_the_stage():
    body = error_body(StageError("reranker", "timeout", "did not answer within 1s", status=504))
    assert body["error"] == {"code": "stage_timeout", "stage": "reranker",
                             "message": "reranker: did not answer within 1s"}
