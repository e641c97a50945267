"""Which storage driver buildah runs on: overlay where the kernel mounts overlayfs in the cache folder, else vfs
(a full copy of the root filesystem per layer); SUPPORT_ASSISTANT_STORAGE_DRIVER chooses instead. Each driver
has its own storage folder, and the vfs storage of earlier builds is removed once overlay is chosen
(images/README.md, 'Where buildah keeps its images')."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from repoctl import image


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    containers = tmp_path / "containers"
    monkeypatch.setattr(image, "CONTAINERS", containers)
    monkeypatch.delenv("SUPPORT_ASSISTANT_STORAGE_DRIVER", raising=False)
    image.storage_driver.cache_clear()
    yield containers
    image.storage_driver.cache_clear()


def driver_flags(command: list[str]) -> tuple[str, str, str]:
    return (command[command.index("--storage-driver") + 1], command[command.index("--root") + 1],
            command[command.index("--runroot") + 1])


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
def test_the_variable_chooses_the_driver_and_each_driver_has_its_own_storage(
        cache: Path, monkeypatch: pytest.MonkeyPatch, driver: str) -> None:
    monkeypatch.setenv("SUPPORT_ASSISTANT_STORAGE_DRIVER", driver)
    monkeypatch.setattr(image, "_overlay_mounts", lambda where: pytest.fail("the probe ran; a driver was chosen"))
    monkeypatch.setattr(image.shutil, "which", lambda name: f"/usr/bin/{name}")
    used, root, runroot = driver_flags(image.buildah_command("images"))
    assert used == driver
    assert root == str(cache / ("storage" if driver == "vfs" else "storage-overlay"))
    assert runroot == str(cache / f"run-{driver}")


def test_a_driver_that_is_neither_is_refused_naming_the_variable(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORT_ASSISTANT_STORAGE_DRIVER", "btrfs")
    monkeypatch.setattr(image.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(image.ImageError) as refused:
        image.buildah_command("images")
    assert str(refused.value) == "SUPPORT_ASSISTANT_STORAGE_DRIVER must be overlay or vfs (got 'btrfs')"


@pytest.mark.parametrize("mounts", [True, False])
def test_without_the_variable_the_probe_decides(cache: Path, monkeypatch: pytest.MonkeyPatch, mounts: bool) -> None:
    probed: list[Path] = []
    monkeypatch.setattr(image, "_overlay_mounts", lambda where: probed.append(where) or mounts)
    assert image.storage_driver() == ("overlay" if mounts else "vfs")
    assert image.storage_driver() == ("overlay" if mounts else "vfs")
    assert probed == [cache / "tmp"]  # once per process, in the folder the storage lives in


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting overlayfs needs root")
def test_the_probe_mounts_and_leaves_nothing_behind(tmp_path: Path) -> None:
    mounts_before = Path("/proc/self/mounts").read_text()
    result = image._overlay_mounts(tmp_path)
    # The answer is this kernel's; what must hold either way is that the probe cleans up after itself.
    assert isinstance(result, bool)
    assert list(tmp_path.iterdir()) == []
    assert Path("/proc/self/mounts").read_text() == mounts_before


def vfs_leftovers(cache: Path) -> tuple[Path, Path]:
    vfs, run = cache / "storage" / "vfs" / "dir" / "layer", cache / "run"
    vfs.mkdir(parents=True)
    (vfs / "file").write_text("a root filesystem's copy")
    run.mkdir()
    return cache / "storage", run


def test_earlier_vfs_storage_is_removed_once_overlay_is_chosen_here(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    storage, run = vfs_leftovers(cache)
    overlay = cache / "storage-overlay"
    overlay.mkdir()
    monkeypatch.setattr(image, "_overlay_mounts", lambda where: True)
    image.drop_unused_vfs_storage()
    assert not storage.exists() and not run.exists()
    assert overlay.is_dir()
    assert "removed the vfs storage of earlier builds" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["vfs probed", "vfs chosen", "overlay chosen"])
def test_vfs_storage_stays_where_vfs_is_in_use_or_a_driver_was_chosen(
        cache: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    storage, run = vfs_leftovers(cache)
    monkeypatch.setattr(image, "_overlay_mounts", lambda where: case != "vfs probed")
    if case != "vfs probed":
        monkeypatch.setenv("SUPPORT_ASSISTANT_STORAGE_DRIVER", case.split()[0])
    image.drop_unused_vfs_storage()
    assert (storage / "vfs" / "dir" / "layer" / "file").is_file() and run.is_dir()
