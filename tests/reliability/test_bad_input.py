"""Bad input over raw HTTP against the live local server (dev config): every malformed request
gets a JSON 4xx naming the problem, never a 5xx, plain text or a hang.

Property-based (hypothesis, bounded examples, a deadline per example) for arbitrary bytes, JSON
of the wrong shape, hostile characters and wrong content types; explicit cases for slow, stalled
and chunked bodies. The bytes go out exactly as written (a raw socket, no client library fixing
them up), to 127.0.0.1 only.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live import deploy_dev, deployment, dev_config, parse_response, raw_http

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

SETTINGS = settings(max_examples=60, deadline=timedelta(seconds=20), derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PORT: int = 0  # set by the module fixture


@pytest.fixture(scope="module", autouse=True)
def dev(local_ray):
    global PORT
    deploy_dev(local_ray)
    PORT = local_ray.http_port
    return local_ray


def post(body: bytes, content_type: str | None = "application/json", extra: str = "") -> tuple[int, dict, dict]:
    head = f"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    status, headers, raw = parse_response(raw_http(PORT, (head + extra + "\r\n").encode("latin-1") + body))
    return status, headers, json.loads(raw)  # plain text fails here, naming the body


def assert_json_4xx(status: int, headers: dict, payload: dict, *expected_status: int) -> dict:
    assert 400 <= status < 500, (status, payload)
    if expected_status:
        assert status in expected_status, (status, payload)
    assert headers.get("content-type", "").startswith("application/json"), headers
    error = payload["error"]
    assert error["code"] and error["message"] and (error.get("field") or error.get("stage")), payload
    return error


@SETTINGS
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(body):
    status, headers, payload = post(body)
    if status == 200:  # only a well-formed question may be answered
        assert isinstance(json.loads(body).get("question"), str)
        return
    assert_json_4xx(status, headers, payload)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@SETTINGS
@given(JSON.filter(lambda v: not (isinstance(v, dict) and isinstance(v.get("question"), str))))
def test_json_of_the_wrong_shape(value):
    error = assert_json_4xx(*post(json.dumps(value).encode()), 400)
    assert error["field"] in ("body", "question", "top_k") or error["code"] == "invalid_input", error


@SETTINGS
@given(st.text(min_size=1, max_size=40), st.sampled_from(
    ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u202e", "\u2066", "\u200f", "\u061c"]))
def test_control_and_bidi_characters(text, hostile):
    error = assert_json_4xx(*post(json.dumps({"question": text + hostile + "x"}).encode()), 400)
    assert error["code"] == "invalid_characters" and error["field"] == "question", error


@SETTINGS
@given(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                        "application/xml", "application/json; charset=latin-1", "", "*/*", None]))
def test_wrong_content_types_get_415(content_type):
    error = assert_json_4xx(*post(b'{"question": "gpu pod pending"}', content_type), 415)
    assert error["field"] == "content-type", error


@SETTINGS
@given(st.integers(min_value=0, max_value=36))
def test_truncated_json(cut):
    body = b'{"question": "gpu pod pending", "top_k": 3}'
    assert_json_4xx(*post(body[:cut]), 400)


@pytest.mark.parametrize(("body", "code"), [
    (b'{"question": "caf\xc3"}', "invalid_utf8"),
    (b'\xef\xbb\xbf{"question": "bom"}', "malformed_json"),
    (b'{"question": "a", "question": "b"}', "duplicate_key"),
    (b'{"question": ' + b"[" * 20000 + b"]" * 20000 + b"}", "too_deep"),
    (b'{"question": "q", "top_k": ' + b"9" * 5000 + b"}", "malformed_json"),
    (b'{"question": "q", "top_k": NaN}', "malformed_json"),
    (b'{"question": "\\ud800"}', "invalid_characters"),
    (b'{"\\udc80": 1, "question": "q"}', "invalid_input"),
    (b"", "empty_body"),
], ids=["invalid-utf8", "bom", "duplicate-key", "deep-nesting", "huge-int", "nan", "lone-surrogate",
        "surrogate-key", "empty"])
def test_hostile_bodies_under_the_size_limit(body, code):
    error = assert_json_4xx(*post(body), 400)
    assert error["code"] == code, error


def test_huge_values_are_refused_while_they_stream():
    error = assert_json_4xx(*post(json.dumps({"question": "x" * 200_000}).encode()), 413)
    assert error["code"] == "body_too_large", error


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


CHUNKED_HEAD = (b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n\r\n")


def test_a_chunked_body_is_read_whole():
    status, _, raw = parse_response(raw_http(PORT, CHUNKED_HEAD + chunked(b'{"question": ', b'"gpu pod pending"}')))
    assert status == 200 and json.loads(raw)["sources"], raw


def test_a_chunked_body_over_the_limit_gets_413():
    status, headers, raw = parse_response(raw_http(PORT, CHUNKED_HEAD + chunked(*[b"x" * 8192] * 10)))
    assert_json_4xx(status, headers, json.loads(raw), 413)


def test_a_slow_body_that_arrives_in_time_is_answered():
    body = b'{"question": "gpu pod pending"}'
    head = (b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    data = raw_http(PORT, head, pause_s=0.3, chunks=[body[i:i + 8] for i in range(0, len(body), 8)])
    status, _, raw = parse_response(data)
    assert status == 200, raw


def test_a_stalled_body_gets_408_not_a_hang(dev):
    timeout_s = deployment(dev_config(dev), "Ingress")["user_config"]["body_read_timeout_s"]
    head = (b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: 100\r\n\r\n")
    data = raw_http(PORT, head + b'{"question": "gpu', timeout_s=timeout_s + 20)
    status, headers, raw = parse_response(data)
    error = assert_json_4xx(status, headers, json.loads(raw), 408)
    assert error["code"] == "body_timeout", error


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/answer", 405), ("PUT", "/v1/answer", 405), ("POST", "/v2/answer", 404),
    ("GET", "/%ff%fe", 404), ("GET", "/" + "a" * 3000, 404),
])
def test_routing_errors_are_json(method, path, status):
    request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    got, headers, raw = parse_response(raw_http(PORT, request.encode()))
    assert_json_4xx(got, headers, json.loads(raw), status)
