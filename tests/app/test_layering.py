"""The package's import structure, read from the source (nothing is imported or run).

Layers, lowest first; a module may import its own layer and lower ones only:
  0  errors, schema, config          what everything shares
  1  runtime                          ONNX sessions, encoders, decoder, bundle reader
  2  stages                           the pipeline's plain classes
  3  api, pipeline, assemble          the request path without Ray, and the wiring
  4  serving                          Ray Serve deployments and the HTTP ingress
  bundler                             the bundle builder: may import layers 0-2, and nothing imports it
Tests (tests/testmodels) are never imported by the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "apps" / "support_assistant" / "src" / "support_assistant"
LAYERS = {
    "support_assistant": 0, "errors": 0, "schema": 0, "config": 0,
    "runtime": 1, "stages": 2, "api": 3, "pipeline": 3, "assemble": 3, "serving": 4,
}
BUILD_MAY_IMPORT = {"support_assistant", "errors", "schema", "config", "runtime", "stages", "bundler"}


def _room(module: str) -> str:
    """support_assistant.runtime.encoder -> runtime; support_assistant -> support_assistant."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package (and test helpers) that `path` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in ("support_assistant", "testmodels", "tests")}


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = set(GRAPH)


def _edges() -> list[tuple[str, str]]:
    edges = []
    for module, imported in GRAPH.items():
        for target in imported:
            # "from support_assistant.runtime import session" names a module; keep the longest known prefix.
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                edges.append((module, target))
    return edges


def test_the_graph_was_read() -> None:
    assert {"support_assistant.serving.app", "support_assistant.bundler.bundle", "support_assistant.runtime.encoder",
            "support_assistant.stages.reranker", "support_assistant.assemble"} <= MODULES
    assert ("support_assistant.serving.app", "support_assistant.serving.ingress") in _edges()


def test_no_test_code_in_the_package() -> None:
    offenders = [f"{m} imports {t}" for m, imported in GRAPH.items() for t in imported
                 if t.split(".")[0] in ("testmodels", "tests")]
    assert offenders == []


def test_serving_code_never_imports_the_builder() -> None:
    offenders = [f"{m} imports {t}" for m, t in _edges()
                 if _room(m) != "bundler" and _room(t) == "bundler"]
    assert offenders == []


def test_no_upward_import() -> None:
    offenders = []
    for module, target in _edges():
        source, dest = _room(module), _room(target)
        if source == "bundler":
            if dest not in BUILD_MAY_IMPORT:
                offenders.append(f"{module} (bundler) imports {target} ({dest})")
        elif dest in LAYERS and LAYERS[dest] > LAYERS[source]:
            offenders.append(f"{module} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[dest]})")
    assert offenders == []


def test_every_room_has_a_layer() -> None:
    rooms = {_room(m) for m in MODULES}
    assert rooms <= set(LAYERS) | {"bundler"}, rooms - set(LAYERS) - {"bundler"}


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for source, target in _edges():
        graph[source].add(target)
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
