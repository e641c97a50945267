"""A release (`PUSH=1`) through the buildah path runs only on the pinned upstream digests: `repoctl image build
--push` refuses Debian-made bases, and refuses when versions.env pins no upstream digest, before anything is built
or pulled (images/README.md, 'What a release requires')."""

from __future__ import annotations

from pathlib import Path

import pytest
from repoctl import image
from repoctl.cli import main


@pytest.fixture
def no_buildah(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """buildah's storage moved to an empty folder, and any buildah call is a failure of the test."""
    monkeypatch.setattr(image, "CONTAINERS", tmp_path / "containers")

    def called(*args: str, **_: object) -> None:
        raise AssertionError(f"buildah {' '.join(args)} was called: the refusal must come first")

    monkeypatch.setattr(image, "buildah", called)
    return tmp_path / "containers"


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err
    return message


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_a_push_refuses_debian_made_bases(no_buildah: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    message = refusal(["image", "build", "--push", "--bases", "debian", "--variant", variant], capsys)
    assert message.startswith("image: BASES=debian with PUSH=1: a release build runs only on the pinned upstream")
    assert "images/README.md" in message
    assert not no_buildah.exists()


def test_a_push_refuses_when_no_upstream_digest_is_pinned(no_buildah: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pins = {key: value for key, value in image.versions().items() if key not in image.UPSTREAM_KEYS.values()}
    monkeypatch.setattr(image, "versions", lambda: pins)
    message = refusal(["image", "build", "--push", "--variant", "gpu"], capsys)
    assert message == ("image: versions.env pins no upstream digest for PYTHON_IMAGE, RAY_BASE_IMAGE_GPU: a release "
                       "build (PUSH=1) runs only on the pinned upstream bases (images/README.md, "
                       "'What a release requires')")
    assert not no_buildah.exists()


def test_a_push_refuses_an_upstream_digest_that_cannot_be_pulled(no_buildah: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ray = image.versions()["RAY_VERSION"]
    pinned = {**image.versions(), "PYTHON_IMAGE": "python:3.11-slim@sha256:" + "1" * 64,
              "RAY_BASE_IMAGE_CPU": f"rayproject/ray:{ray}-py311@sha256:" + "3" * 64}
    monkeypatch.setattr(image, "versions", lambda: pinned)
    monkeypatch.setattr(image, "image_exists", lambda ref: False)
    pulled: list[str] = []

    class Failed:
        returncode = 125

    def buildah(*args: str, **_: object) -> Failed:
        assert args[0] == "pull", args  # nothing but the pull of a base is tried before the refusal
        pulled.append(args[-1])
        return Failed()

    monkeypatch.setattr(image, "buildah", buildah)
    message = refusal(["image", "build", "--push", "--variant", "cpu"], capsys)
    assert message.startswith(f"image: {pinned['PYTHON_IMAGE']} cannot be pulled from here: a release build (PUSH=1)")
    assert pulled == [f"docker://{pinned['PYTHON_IMAGE']}"]
