"""repoctl.release: release tags, image references and the image's pinned runtime requirements, parsed
with `packaging` as pip parses them."""

from __future__ import annotations

from pathlib import Path

import pytest
from repoctl.release import (
    PLACEHOLDER_DIGEST,
    AppVersion,
    ImageRef,
    ReleaseError,
    ReleaseTag,
    normalize,
    read_pins,
    runtime_requirements,
)


def test_release_tags_and_semver_order() -> None:
    tag = ReleaseTag.parse("1.2.3-rc.1-ray2.60.0")
    assert (str(tag.app_version), tag.ray_version) == ("1.2.3-rc.1", "2.60.0")
    ordered = ["0.9.0", "0.10.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0", "1.0.1"]
    versions = [AppVersion.parse(v) for v in ordered]
    assert sorted(reversed(versions)) == versions
    for bad in ("0.1.0", "v0.1.0-ray2.60.0", "0.1-ray2.60.0", "0.1.0-ray2.60"):
        with pytest.raises(ReleaseError):
            ReleaseTag.parse(bad)


def test_app_versions_are_pep_440_with_three_release_numbers() -> None:
    # The app's pyproject version spelling and the semver spelling of the same pre-release order alike.
    assert not AppVersion.parse("1.0.0rc1") < AppVersion.parse("1.0.0-rc.1")
    assert AppVersion.parse("1.0.0.dev1") < AppVersion.parse("1.0.0a1") < AppVersion.parse("1.0.0.post1")
    assert str(ReleaseTag.parse("0.2.0rc1-ray2.60.0")) == "0.2.0rc1-ray2.60.0"
    for bad, why in [("1.0.0-foo", "is not a version"), ("1!1.0.0", "MAJOR.MINOR.PATCH"),
                     ("1.0.0+local", "MAJOR.MINOR.PATCH"), ("1.0.0.0", "MAJOR.MINOR.PATCH")]:
        with pytest.raises(ReleaseError, match=why):
            AppVersion.parse(bad)
    for ray in ("2.60.0rc1", "2.060.0", "2.60.0.post1"):
        with pytest.raises(ReleaseError, match="Ray version"):
            ReleaseTag.parse(f"0.1.0-ray{ray}")


def test_image_references() -> None:
    digest = "sha256:" + "a" * 64
    ref = ImageRef.parse(f"registry.local:5000/team/app:0.1.0-ray2.60.0@{digest}")
    assert (ref.name, ref.tag, ref.digest) == ("registry.local:5000/team/app", "0.1.0-ray2.60.0", digest)
    assert str(ref) == f"registry.local:5000/team/app:0.1.0-ray2.60.0@{digest}"
    assert ImageRef.parse("registry.local:5000/team/app").tag is None  # a port is not a tag
    assert ImageRef.parse(f"app@{PLACEHOLDER_DIGEST}").digest == PLACEHOLDER_DIGEST
    with pytest.raises(ReleaseError, match="sha256:<64 lowercase hex>"):
        ImageRef.parse("app:1@sha256:ABC")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_pins_are_read_as_pip_reads_them(tmp_path: Path) -> None:
    requirements = write(tmp_path / "requirements.txt", "\n".join([
        "# comment", "-c constraints.txt", "",
        "ray[serve]==2.60.0  # extras and a comment",
        "Ruamel.YAML==0.18.6",
        "onnxruntime == 1.31.1 ; python_version >= '3.11'",
    ]))
    assert read_pins(requirements) == {"ray": "2.60.0", "ruamel-yaml": "0.18.6", "onnxruntime": "1.31.1"}
    assert normalize("Ruamel_YAML") == normalize("ruamel.yaml") == "ruamel-yaml"
    for line in ("numpy>=2", "numpy==2.*", "numpy==2.3.5,<3", "numpy", "numpy @ https://example.com/numpy.whl",
                 "numpy===2.3.5"):
        with pytest.raises(ReleaseError, match="not pinned as name==version"):
            read_pins(write(tmp_path / "bad.txt", line))
    with pytest.raises(ReleaseError, match="cannot parse"):
        read_pins(write(tmp_path / "bad.txt", "numpy==2.3.5 ; python_version >>> '3'"))


def test_runtime_requirements_follow_the_app_dependencies(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", '[project]\nname = "app"\ndependencies = '
                      '["Ray[serve]==2.60.0", "onnxruntime>=1.20", "numpy>=1.26,<3"]\n')
    requirements = write(tmp_path / "requirements.txt", "ray[serve]==2.60.0\nonnxruntime==1.31.1\nnumpy==2.3.5\n")
    assert runtime_requirements(pyproject, requirements, "cpu") == [
        "ray[serve]==2.60.0", "onnxruntime==1.31.1", "numpy==2.3.5"]
    assert runtime_requirements(pyproject, requirements, "gpu", onnxruntime_gpu_version="1.31.1")[1] == (
        "onnxruntime-gpu==1.31.1")

    write(requirements, "ray[serve]==2.60.0\nonnxruntime==1.31.1\nnumpy==3.0.0\n")
    with pytest.raises(ReleaseError, match=r"numpy==3\.0\.0 is outside the app's dependency 'numpy>=1\.26,<3'"):
        runtime_requirements(pyproject, requirements, "cpu")
    write(requirements, "ray[serve]==2.60.0\nonnxruntime==1.31.1\n")
    with pytest.raises(ReleaseError, match=r"no `numpy==<version>` pin"):
        runtime_requirements(pyproject, requirements, "cpu")
    with pytest.raises(ReleaseError, match="variant must be gpu or cpu"):
        runtime_requirements(pyproject, requirements, "tpu")
