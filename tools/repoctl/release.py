"""Image references, release tags and the image's runtime requirements.

Standard library and `packaging` only: images/Dockerfile runs this file as a script (`python release.py
...`) in its build stage, where neither PyYAML nor the repoctl package is installed but `packaging` is
(images/requirements-export.txt pins it, as requirements.txt does here).

Release tags are `<app version>-ray<ray version>`, e.g. `0.1.0-ray2.60.0`: the app version is the version
of apps/support_assistant (PEP 440, MAJOR.MINOR.PATCH with an optional pre-release, as `1.2.3rc1` or in
semver spelling `1.2.3-rc.1`), the Ray version is the Ray release baked into the image (it must equal
the RayService's rayVersion). Versions and requirement lines are parsed by `packaging`, the library pip
itself uses, so they compare and normalise exactly as pip does.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

IMAGE_NAME = "ghcr.io/acme-platform/support-assistant"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# The digest kustomize overlays carry until the first real release: it is not an image.
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64


class ReleaseError(ValueError):
    pass


def _version(text: str, what: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise ReleaseError(f"{what} {text!r} is not a version (PEP 440, e.g. 1.2.3 or 1.2.3rc1)") from None


@dataclass(frozen=True)
class AppVersion:
    """The app part of a release tag, kept as written (it is part of an image tag) and ordered as a PEP 440
    version: 1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0b0 < 1.0.0-rc.1 < 1.0.0 < 1.0.1."""

    text: str

    @classmethod
    def parse(cls, text: str) -> AppVersion:
        version = _version(text, "app version")
        # packaging also accepts "v1.2.3", "1.2" and "1!1.2.3+local"; a tag spells three release numbers
        # and nothing a Docker tag cannot hold.
        if not text[:1].isdigit() or len(version.release) != 3 or version.epoch or version.local:
            raise ReleaseError(f"app version {text!r} is not MAJOR.MINOR.PATCH with an optional pre-release")
        return cls(text)

    @property
    def version(self) -> Version:
        return Version(self.text)

    def __lt__(self, other: AppVersion) -> bool:
        return self.version < other.version

    def __str__(self) -> str:
        return self.text


def ray_version(text: str) -> str:
    """A Ray release as Ray publishes them: a final MAJOR.MINOR.PATCH, written canonically."""
    version = _version(text, "Ray version")
    if str(version) != text or len(version.release) != 3 or version.is_prerelease or version.is_postrelease:
        raise ReleaseError(f"Ray version {text!r} is not a final MAJOR.MINOR.PATCH release")
    return text


@dataclass(frozen=True)
class ReleaseTag:
    app_version: AppVersion
    ray_version: str

    @classmethod
    def parse(cls, tag: str) -> ReleaseTag:
        app, sep, ray = tag.rpartition("-ray")
        try:
            if not sep:
                raise ReleaseError("no -ray<ray version> suffix")
            return cls(AppVersion.parse(app), ray_version(ray))
        except ReleaseError as exc:
            raise ReleaseError(f"tag {tag!r} is not <app version>-ray<ray version> (e.g. 0.1.0-ray2.60.0): "
                               f"{exc}") from None

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
    return canonicalize_name(name)


def _requirement(line: str, where: Path) -> Requirement:
    try:
        return Requirement(line)
    except InvalidRequirement as exc:
        raise ReleaseError(f"{where}: cannot parse {line!r}: {exc}") from None


def read_pins(requirements: Path) -> dict[str, str]:
    """{normalized name: version} for every `name[extras]==version` line of a requirements file."""
    pins: dict[str, str] = {}
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = _requirement(line, requirements)
        specifiers = list(requirement.specifier)
        if requirement.url or len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            raise ReleaseError(f"{requirements}: {raw.strip()!r} is not pinned as name==version")
        pins[normalize(requirement.name)] = specifiers[0].version
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
        requirement = _requirement(dependency, pyproject)
        name = normalize(requirement.name)
        if name not in pins:
            raise ReleaseError(f"{requirements}: no `{name}==<version>` pin for the app dependency {dependency!r}")
        if not requirement.specifier.contains(pins[name], prereleases=True):
            raise ReleaseError(f"{requirements}: {name}=={pins[name]} is outside the app's dependency {dependency!r} "
                               f"({pyproject})")
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
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
