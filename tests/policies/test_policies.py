"""The conftest policies: their unit tests, the real overlays, and one bad manifest per rule.

Every fixture in fixtures/ breaks one rule on a real rendered overlay; the test asserts that rule is
the only one reported. That proves each rule is load-bearing (nothing else catches its fixture) and
that fixtures stay minimal. A coverage test ties the rule ids in policies/ to fixtures and docs.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from repoctl.paths import ENVIRONMENTS, ROOT, tool
from repoctl.policy import POLICY_DIR, run_conftest, verify_policies

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))
RULE_ID = re.compile(r"^(?:FAIL|WARN|ERROR) overlays/[a-z]+: \[([a-z0-9-]+)\]")
# Rules a rendered overlay cannot break by a patch: this one is about how conftest is invoked.
INVOCATION_RULES = {"input-combined"}


def rule_ids(lines: list[str], level: str) -> set[str]:
    ids = set()
    for line in lines:
        if line.startswith(level):
            match = RULE_ID.match(line)
            assert match, f"policy message without a [rule-id] prefix: {line}"
            ids.add(match.group(1))
    return ids


def check(docs: list[dict], env: str, tmp_path: Path) -> tuple[bool, list[str]]:
    path = tmp_path / f"{env}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return run_conftest(path, env)


# --- a small RFC 6902 implementation, with list items addressable by name ---------------------


def _token(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _index(container: list, segment: str, path: str) -> int:
    if segment.isdigit():
        return int(segment)
    for i, item in enumerate(container):
        if isinstance(item, dict) and segment in (item.get("name"), item.get("groupName")):
            return i
    raise KeyError(f"{path}: no list item named {segment!r}")


def apply_ops(document: Any, ops: list[dict]) -> Any:
    document = copy.deepcopy(document)
    for op in ops:
        path = op["path"]
        *parents, last = [_token(s) for s in path.split("/")[1:]]
        node = document
        for segment in parents:
            node = node[_index(node, segment, path)] if isinstance(node, list) else node[segment]
        kind = op["op"]
        if isinstance(node, list):
            if kind == "add":
                node.insert(len(node) if last == "-" else _index(node, last, path), op["value"])
                continue
            key: Any = _index(node, last, path)
        else:
            key = last
        if kind == "add":
            node[key] = op["value"]
        elif kind == "replace":
            if isinstance(node, dict) and key not in node:
                raise KeyError(f"{path}: replace needs an existing target (RFC 6902)")
            node[key] = op["value"]
        elif kind == "remove":
            del node[key]
        else:
            raise ValueError(f"unsupported op {kind!r} at {path}")
    return document


def apply_fixture(docs: list[dict], fixture: dict) -> list[dict]:
    docs = copy.deepcopy(docs)
    for patch in fixture.get("patches", []):
        target = patch["target"]
        matches = [
            i for i, d in enumerate(docs) if d.get("kind") == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        assert len(matches) == 1, f"fixture target {target} matched {len(matches)} documents"
        doc = apply_ops(docs[matches[0]], patch.get("ops", []))
        if "serveConfig" in patch:
            serve = apply_ops(yaml.safe_load(doc["spec"]["serveConfigV2"]), patch["serveConfig"])
            doc["spec"]["serveConfigV2"] = yaml.safe_dump(serve, sort_keys=False)
        docs[matches[0]] = doc
    for gone in fixture.get("remove", []):
        before = len(docs)
        docs = [d for d in docs if not (d.get("kind") == gone["kind"] and d["metadata"]["name"] == gone["name"])]
        assert len(docs) == before - 1, f"fixture remove {gone} matched nothing"
    return docs + copy.deepcopy(fixture.get("add", []))


def policy_rule_ids() -> dict[str, str]:
    """Rule id -> deny or warn, from the message prefixes in the (non-test) policies."""
    ids: dict[str, str] = {}
    for path in POLICY_DIR.rglob("*.rego"):
        if path.name.endswith("_test.rego"):
            continue
        for block in re.split(r"\n(?=\S)", path.read_text()):
            level = "deny" if block.startswith("deny ") else "warn" if block.startswith("warn ") else None
            for rule in re.findall(r'msg := (?:sprintf\()?"\[([a-z0-9-]+)\]', block):
                assert level, f"{path}: [{rule}] message outside a deny/warn rule"
                ids[rule] = level
    return ids


# --- tests ------------------------------------------------------------------------------------


def test_policy_unit_tests_pass() -> None:
    ok, lines = verify_policies()
    assert ok, "\n".join(lines)
    summary = lines[-1]
    match = re.match(r"(\d+) tests, (\d+) passed", summary)
    assert match and int(match.group(1)) == int(match.group(2)) > 0, summary


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_real_overlay_passes(env: str, rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    ok, lines = check(rendered[env], env, tmp_path)
    for line in lines:
        print(line)  # warnings are for people: pytest -s / -rA shows them
    assert ok, "\n".join(line for line in lines if not line.startswith("WARN"))


@pytest.mark.parametrize("fixture_file", FIXTURE_FILES, ids=[f.stem for f in FIXTURE_FILES])
def test_bad_manifest_is_caught_by_its_rule_only(
    fixture_file: Path, rendered: dict[str, list[dict]], tmp_path: Path
) -> None:
    fixture = yaml.safe_load(fixture_file.read_text())
    assert fixture_file.stem == fixture["rule"], "name each fixture after its rule"
    docs = apply_fixture(rendered[fixture["overlay"]], fixture)
    ok, lines = check(docs, fixture["overlay"], tmp_path)
    rule = fixture["rule"]
    if fixture["level"] == "deny":
        assert not ok, f"{fixture_file.name}: conftest accepted it\n" + "\n".join(lines)
        assert rule_ids(lines, "FAIL") == {rule}, "\n".join(lines)
        found = [line for line in lines if line.startswith("FAIL")]
    else:
        assert ok, "\n".join(lines)
        assert rule in rule_ids(lines, "WARN"), "\n".join(lines)
        found = [line for line in lines if line.startswith("WARN") and f"[{rule}]" in line]
    assert any(fixture["expect"] in line for line in found), f"{fixture['expect']!r} not in\n" + "\n".join(found)


def test_every_rule_has_a_fixture_and_a_docs_row() -> None:
    rules = policy_rule_ids()
    fixtures = {yaml.safe_load(f.read_text())["rule"]: yaml.safe_load(f.read_text())["level"] for f in FIXTURE_FILES}
    assert {r: lvl for r, lvl in rules.items() if r not in INVOCATION_RULES} == fixtures
    docs = (ROOT / "docs" / "policies.md").read_text()
    missing = sorted(r for r in rules if f"`{r}`" not in docs)
    assert not missing, f"docs/policies.md has no row for {missing}"


def test_single_document_input_is_refused(rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    """Without --combine every rule would see one document and pass vacuously."""
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump_all(rendered["prod"], sort_keys=False))
    data = tmp_path / "env.json"
    data.write_text(json.dumps({"support_assistant": {"environment": "prod"}}))
    result = subprocess.run(
        [tool("conftest"), "test", "--all-namespaces", "--no-color", "-o", "json",
         "-p", str(POLICY_DIR), "--data", str(data), str(path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    failures = {f["msg"][: f["msg"].index("]") + 1] for r in json.loads(result.stdout) for f in r.get("failures") or []}
    assert result.returncode == 1
    assert failures == {"[input-combined]"}


def test_conftest_errors_are_reported_not_passed(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: [unclosed\n")
    ok, lines = run_conftest(path, "dev")
    assert not ok
    assert lines and lines[0].startswith("ERROR overlays/dev: conftest failed")


def test_patch_helper_addresses_items_by_name() -> None:
    doc = {"groups": [{"groupName": "cpu", "n": 1}, {"groupName": "gpu", "n": 2}]}
    assert apply_ops(doc, [{"op": "replace", "path": "/groups/gpu/n", "value": 3}])["groups"][1]["n"] == 3
    with pytest.raises(KeyError):
        apply_ops(doc, [{"op": "replace", "path": "/groups/tpu/n", "value": 3}])
    with pytest.raises(KeyError):
        apply_ops(doc, [{"op": "replace", "path": "/groups/cpu/missing", "value": 3}])
