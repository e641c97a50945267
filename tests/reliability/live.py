"""Helpers for the reliability suites against the session's live local Ray (tests/liveray.py):
deploy the dev overlay's own serveConfigV2, find a stage's replica processes, raw HTTP calls, read
the metrics the local Ray exports.
Everything here talks to 127.0.0.1 only."""

from __future__ import annotations

import copy
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import cmdline, descendants
from repoctl.local_run import deploy, local_serve_config

APP = "support-assistant"
# The stages that run in replicas of their own (the normalizer runs inside the ingress).
STAGE_DEPLOYMENTS = {"retriever": "Retriever", "reranker": "Reranker", "generator": "Generator"}


def dev_config(local_ray: Any, bundle_dir: Path | None = None) -> dict:
    """The dev overlay's serveConfigV2 as `make run` deploys it (a copy: change it freely)."""
    config = local_serve_config(copy.deepcopy(local_ray.configs["dev"]), bundle_dir or local_ray.bundle_dir,
                                local_ray.http_port)
    # The data-plane suites measure admission, faults and load, not the language model: answering
    # extractively keeps their budgets what they were (the LM path has its own tests in tests/app, e2e).
    deployment(config, "Generator")["user_config"]["use_language_model"] = False
    return config


def deployment(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def deploy_dev(local_ray: Any, config: dict | None = None) -> dict:
    config = config or dev_config(local_ray)
    deploy(config)
    return config


def replica_pids(deployment_name: str) -> list[int]:
    """Processes of a deployment's live replicas (Ray titles each `ray::ServeReplica:<app>:<name>`)."""
    title = f"ServeReplica:{APP}:{deployment_name}"
    found = []
    for pid in descendants():
        line = cmdline(pid)
        if line.startswith("ray::") and (f"{title} " in line + " " or f"{title}." in line):
            found.append(pid)
    return sorted(found)


def request(url: str, body: bytes | None = None, method: str | None = None, timeout_s: float = 60,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers with lower-case names, JSON body) of one HTTP call; a non-JSON body raises,
    failing the test."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, _lower(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), json.loads(error.read())


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def raw_http(port: int, payload: bytes, timeout_s: float = 30, pause_s: float = 0.0,
             chunks: list[bytes] | None = None) -> bytes:
    """Sends bytes as they are (no client library fixing them up) and reads the whole answer.
    With `chunks`, sends payload (the head) and then each chunk after pause_s."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload)
        for chunk in chunks or []:
            time.sleep(pause_s)
            sock.sendall(chunk)
        data = b""
        while True:
            try:
                part = sock.recv(65536)
            except TimeoutError:
                break
            if not part:
                break
            data += part
            if _complete(data):
                break
        return data


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
        if key.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            return body.endswith(b"0\r\n\r\n")
    return False


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().decode().lower()] = value.strip().decode()
    if "chunked" in headers.get("transfer-encoding", ""):
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, headers, body


def scrape_series(port: int, name: str, timeout_s: float = 60,
                  until: Callable[[list[tuple[dict[str, str], float]]], bool] = bool,
                  ) -> list[tuple[dict[str, str], float]]:
    """The series `name` on the local Ray's Prometheus endpoint, asked every 2 s until `until`
    holds for them (by default: until there is one) or timeout_s has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = [(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)), float(value))
                 for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M)]
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(2)
