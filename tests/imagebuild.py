"""The app image, built once per test run with buildah and pushed to a registry on loopback, shared by
tests/images (run it) and tests/cluster (promote its digest): tests/conftest.py registers the fixture.

Built as `make image` builds it without a Docker engine (repoctl.image.build_image, CPU variant, the
local bundle profile; the pinned upstream bases where they can be pulled, else the Debian-made ones),
cached by its inputs in buildah's per-user storage (repoctl.image.CONTAINERS), so a warm run only re-checks
the layers. The registry is `crane registry serve` on 127.0.0.1 (bin/crane, CRANE_VERSION), this run's
alone, stopped at the end.
Where buildah, mmdebstrap or crane is missing, or we are not root (buildah's chroot isolation and its
storage, overlay or vfs, need it here), the tests that need the image skip and name what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from liveray import free_port
from repoctl import image
from repoctl.paths import BIN

REPOSITORY = "support-assistant"


def missing_prerequisites() -> str | None:
    """Why the image cannot be built and pushed here, or None."""
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if not (BIN / "crane").is_file():
        missing.append(f"{BIN / 'crane'}")
    if missing:
        return (f"image tests did not run: {', '.join(missing)} not installed (`make setup` installs them on "
                f"Debian as root; elsewhere install buildah and mmdebstrap: images/README.md)")
    if os.geteuid() != 0:
        return "image tests did not run: buildah's chroot isolation and its storage under .cache need root here"
    return None


@dataclass(frozen=True)
class PushedImage:
    local_ref: str  # in repoctl.image.CONTAINERS
    registry: str  # 127.0.0.1:PORT
    tag: str
    digest: str  # what the push returned
    bundle_sha256: str
    labels: dict[str, str]
    bases: image.Bases
    size_bytes: int
    build_s: float

    @property
    def reference(self) -> str:
        """registry/repository:tag@digest, as `make promote FROM=...` takes it."""
        return f"{self.registry}/{REPOSITORY}:{self.tag}@{self.digest}"


def _wait_for_registry(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"crane registry serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"crane registry serve on 127.0.0.1:{port} did not answer in {timeout:g}s")


@pytest.fixture(scope="session")
def pushed_image() -> Iterator[PushedImage]:
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    built = image.build_image(variant="cpu", bases_mode=os.environ.get("BASES", "auto"), profile="local",
                              allow_dirty=True)
    build_s = time.monotonic() - started
    port = free_port()
    # In memory: its --disk mode answered a push with HTTP 500 here.
    registry = subprocess.Popen([str(BIN / "crane"), "registry", "serve", "--address", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_registry(port, registry)
        tag = built.ref.rsplit(":", 1)[1]
        digest = image.push(built.ref, f"127.0.0.1:{port}/{REPOSITORY}:{tag}", tls_verify=False)
        size = image.image_size(built.ref)
        print(f"\nimage: {built.ref} {size / 1e6:.0f} MB uncompressed, built (cached by inputs) in {build_s:.0f}s; "
              f"pushed 127.0.0.1:{port}/{REPOSITORY}:{tag}@{digest}")
        yield PushedImage(built.ref, f"127.0.0.1:{port}", tag, digest, built.bundle_sha256, built.labels,
                          built.bases, size, build_s)
    finally:
        registry.terminate()
        try:
            registry.wait(10)
        except subprocess.TimeoutExpired:
            registry.kill()
            registry.wait()
