"""Image references, release tags and the image's runtime requirements.

Standard library only: images/Dockerfile runs this file as a script (`python release.py ...`) in
a bare python image where neither PyYAML nor the repoctl package is installed.

Release tags are `<app version>-ray<ray version>`, e.g. `0.1.0-ray2.60.0`: the app version is the
semver of apps/support_assistant, the Ray version is the one baked into the image (it must equal
the RayService's rayVersion).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

IMAGE_NAME = "ghcr.io/acme-platform/support-assistant"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# The digest kustomize overlays carry until the first real release: it is not an image.
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
_SEMVER_RE = re.compile(
    r"^(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_RAY_RE = re.compile(r"^\d+\.\d+\.\d+$")
_REQ_RE = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?\s*(?P<spec>.*)$")


class ReleaseError(ValueError):
    pass


@dataclass(frozen=True, order=False)
class SemVer:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SemVer:
        match = _SEMVER_RE.match(text)
        if not match:
            raise ReleaseError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE])")
        pre = tuple(match["pre"].split(".")) if match["pre"] else ()
        return cls(int(match["major"]), int(match["minor"]), int(match["patch"]), pre)

    def _key(self) -> tuple:
        # semver.org §11: a pre-release sorts before its release; numeric identifiers sort
        # numerically and before alphanumeric ones.
        pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre_key)

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{'.'.join(self.pre)}" if self.pre else "")


@dataclass(frozen=True)
class ReleaseTag:
    app_version: SemVer
    ray_version: str

    @classmethod
    def parse(cls, tag: str) -> ReleaseTag:
        app, sep, ray = tag.rpartition("-ray")
        if not sep or not _RAY_RE.match(ray):
            raise ReleaseError(f"tag {tag!r} is not <app version>-ray<ray version> (e.g. 0.1.0-ray2.60.0)")
        return cls(SemVer.parse(app), ray)

    def __str__(self) -> str:
        return f"{self.app_version}-ray{self.ray_version}"


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        rest, _, digest = ref.partition("@")
        # A ':' after the last '/' is a tag; one before it is a registry port.
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        name, tag = (rest[:colon], rest[colon + 1:]) if colon > slash else (rest, None)
        if digest and not DIGEST_RE.match(digest):
            raise ReleaseError(f"{ref!r}: digest must be sha256:<64 lowercase hex>")
        if not name:
            raise ReleaseError(f"{ref!r}: no image name")
        return cls(name, tag or None, digest or None)

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(requirements: Path) -> dict[str, str]:
    """{normalized name: version} for every `name[extras]==version` line of a requirements file."""
    pins: dict[str, str] = {}
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = _REQ_RE.match(line)
        spec = match["spec"].split(";", 1)[0].strip() if match else ""
        if not match or not spec.startswith("==") or any(c in spec[2:] for c in "*,<>!~"):
            raise ReleaseError(f"{requirements}: {raw.strip()!r} is not pinned as name==version")
        pins[normalize(match["name"])] = spec[2:].strip()
    return pins


def runtime_requirements(pyproject: Path, requirements: Path, variant: str,
                         onnxruntime_gpu_version: str | None = None) -> list[str]:
    """The app's dependencies, each pinned to the version in requirements.txt.

    The GPU image swaps onnxruntime for onnxruntime-gpu (both install the `onnxruntime` module, so
    only one may be present); its version must equal the onnxruntime the tests ran with.
    """
    if variant not in ("gpu", "cpu"):
        raise ReleaseError(f"variant must be gpu or cpu, not {variant!r}")
    pins = read_pins(requirements)
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    lines = []
    for dependency in dependencies:
        match = _REQ_RE.match(dependency)
        if not match:
            raise ReleaseError(f"{pyproject}: cannot parse dependency {dependency!r}")
        name = normalize(match["name"])
        if name not in pins:
            raise ReleaseError(f"{requirements}: no `{name}==<version>` pin for the app dependency {dependency!r}")
        extras = f"[{match['extras']}]" if match["extras"] else ""
        if name == "onnxruntime" and variant == "gpu":
            if onnxruntime_gpu_version != pins[name]:
                raise ReleaseError(
                    f"images/Dockerfile ONNXRUNTIME_GPU_VERSION={onnxruntime_gpu_version} but {requirements} pins "
                    f"onnxruntime=={pins[name]}: make them equal so the image runs the ORT the tests ran")
            lines.append(f"onnxruntime-gpu=={onnxruntime_gpu_version}")
        else:
            lines.append(f"{name}{extras}=={pins[name]}")
    return lines


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release.py", description="image build helpers (see images/Dockerfile)")
    sub = parser.add_subparsers(dest="command", required=True)
    runtime = sub.add_parser("runtime-requirements", help="print the image's pinned runtime requirements")
    runtime.add_argument("--pyproject", type=Path, required=True)
    runtime.add_argument("--requirements", type=Path, required=True)
    runtime.add_argument("--variant", required=True)
    runtime.add_argument("--onnxruntime-gpu-version")
    args = parser.parse_args(argv)
    try:
        lines = runtime_requirements(args.pyproject, args.requirements, args.variant, args.onnxruntime_gpu_version)
    except (ReleaseError, OSError, KeyError) as exc:
        print(f"release.py: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
