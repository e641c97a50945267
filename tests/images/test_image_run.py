"""The real image (tests/imagebuild.py: built with buildah, pushed to a registry on loopback), run as its users
run it: Ray Serve's own `serve run` in a container (`buildah run`, host network), serving the dev overlay's
serveConfigV2 made local (GPU requests as CPU, 127.0.0.1, as `make run` does) from the bundle baked in."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from imagebuild import REPOSITORY, PushedImage
from liveray import free_port
from procs import cmdline, descendants, uid
from repoctl import image
from repoctl.local_run import EXAMPLE_QUESTION, LOOPBACK_SWITCH, local_overlay, logical_cpus_needed
from repoctl.paths import BIN, ROOT, versions
from repoctl.release import read_pins

BUNDLE_DIR = "/opt/support-assistant/bundle"
RUNTIME_UID = 1000


def in_image(pushed: PushedImage, *command: str) -> str:
    """Run a command in a fresh container of the image, as the image's own user."""
    container = image.buildah("from", "--pull-never", pushed.local_ref).stdout.strip()
    try:
        return image.buildah("run", "--isolation", "chroot", container, "--", *command).stdout
    finally:
        image.buildah("rm", container, check=False)


def test_the_registry_serves_the_pushed_digest(pushed_image: PushedImage) -> None:
    got = subprocess.run([str(BIN / "crane"), "digest", "--insecure",
                          f"{pushed_image.registry}/{REPOSITORY}:{pushed_image.tag}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert got == pushed_image.digest
    manifest = json.loads(subprocess.run([str(BIN / "crane"), "manifest", "--insecure", pushed_image.reference],
                                         capture_output=True, text=True, check=True).stdout)
    assert manifest["layers"], manifest


def test_labels_name_the_release_the_bases_and_the_bundle(pushed_image: PushedImage) -> None:
    labels = pushed_image.labels
    _, ray = pushed_image.tag.split("-ray")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.version"] == pushed_image.tag
    assert labels["org.opencontainers.image.revision"] in (head, f"{head}-dirty")
    assert labels["dev.acme.ray-version"] == ray == versions()["RAY_VERSION"]
    assert labels["dev.acme.variant"] == "cpu" and labels["dev.acme.bundle-profile"] == "local"
    assert labels["dev.acme.bases"] == pushed_image.bases.kind
    # The label is the sha256 of the manifest baked in, which holds every file's sha256.
    manifest = image.read_from_image(pushed_image.local_ref, f"{BUNDLE_DIR}/manifest.json")
    assert labels["dev.acme.bundle-sha256"] == hashlib.sha256(manifest).hexdigest() == pushed_image.bundle_sha256
    models = json.loads(manifest)["models"]
    assert labels["dev.acme.models"] == ",".join(f"{m['name']}@{m['revision']}" for _, m in sorted(models.items()))
    if pushed_image.bases.kind == "debian":
        # Inherited from the Debian-made bases: what they were made of.
        assert labels["dev.acme.base.debian-suite"] == versions()["DEBIAN_SUITE"]
        assert re.fullmatch(r"[0-9a-f]{64}", labels["dev.acme.base.rootfs-sha256"])
        packages = dict(p.split("=", 1) for p in labels["dev.acme.base.packages"].split(","))
        assert packages["python3"].startswith("3.11") and "ca-certificates" in packages
        assert labels["dev.acme.base.ray-version"] == ray


def test_versions_inside_are_the_pinned_ones_and_the_user_is_not_root(pushed_image: PushedImage) -> None:
    out = in_image(pushed_image, "python", "-c", "import json, os, platform, ray, onnxruntime; print(json.dumps("
                   "{'uid': os.getuid(), 'python': platform.python_version(), 'ray': ray.__version__, "
                   "'onnxruntime': onnxruntime.__version__, 'providers': onnxruntime.get_available_providers()}))")
    inside = json.loads(out)
    pinned = versions()
    assert inside["uid"] == RUNTIME_UID
    assert inside["ray"] == pinned["RAY_VERSION"]
    # versions.env pins the minor (PYTHON_VERSION=3.11); the patch is the base's (Debian bookworm: 3.11.2).
    assert inside["python"].rsplit(".", 1)[0] == pinned["PYTHON_VERSION"]
    assert inside["onnxruntime"] == read_pins(ROOT / "requirements.txt")["onnxruntime"]
    assert "CPUExecutionProvider" in inside["providers"]
    print(f"\ninside {pushed_image.local_ref}: {inside}; image size {pushed_image.size_bytes / 1e6:.0f} MB")


def test_the_bundle_inside_verifies_and_is_read_only_to_the_runtime_user(pushed_image: PushedImage) -> None:
    out = in_image(pushed_image, "sh", "-c", f"support-assistant-bundle verify {BUNDLE_DIR} && "
                   f"stat -c '%u %a' {BUNDLE_DIR} {BUNDLE_DIR}/manifest.json && "
                   f"(touch {BUNDLE_DIR}/x 2>/dev/null && echo writable || echo read-only)")
    summary, owners, verdict = out[:out.rindex("}") + 1], out[out.rindex("}") + 1:].split("\n")[1:3], out.split()[-1]
    assert json.loads(summary)["profile"] == "local"
    assert all(line.split()[0] == "0" for line in owners), owners
    assert verdict == "read-only"


def test_no_pip_setting_or_certificate_is_in_the_image(pushed_image: PushedImage, tmp_path: Path) -> None:
    """The machine's pip settings went in as build secrets: neither the config nor the certificate it names
    is in a layer, an environment variable or the history."""
    info = image.buildah("inspect", "--type", "image", pushed_image.local_ref).stdout
    config = json.loads(info)["OCIv1"]["config"]
    assert not [e for e in config.get("Env", []) if e.startswith("PIP_")], config["Env"]
    secrets = image.pip_secrets(tmp_path)
    settings = [line.split("=", 1)[1].strip() for line in secrets.conf.read_text().splitlines()[1:]]
    for value in settings:
        # e.g. an index URL; not "1" or "180", nor the secret's own mount path (named in the RUN step)
        if len(value) > 8 and value not in (image.PIP_CERT_SECRET, image.PIP_CONF_SECRET):
            assert value not in info, f"pip setting {value!r} is in the image's config or history"
    container = image.buildah("from", "--pull-never", pushed_image.local_ref).stdout.strip()
    try:
        root = Path(image.buildah("mount", container).stdout.strip())
        assert not (root / "run/secrets/pip.conf").exists() and not (root / "run/secrets/pip-cert").exists()
        if secrets.cert is not None:
            # Certificates of this machine that Debian's CA bundle does not have (a proxy's own CA, say) must be
            # nowhere in the image.
            # Public roots (Debian's bundle, and the Mozilla bundles certifi ships inside pip and requests) do not
            # count: the machine's bundle holds them too.
            public = (root / "etc/ssl/certs/ca-certificates.crt").read_text() + "".join(
                path.read_text() for top in ("opt", "home") for path in (root / top).rglob("certifi/cacert.pem"))
            blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END", secrets.cert.read_text(), re.S)
            extra = [b.split("\n")[1] for b in blocks if b.split("\n")[1] not in public]
            for line in extra[:5]:
                found = subprocess.run(["grep", "-rlF", "--", line, str(root)], capture_output=True, text=True)
                assert found.stdout == "", f"a certificate of this machine is in the image: {found.stdout[:200]}"
    finally:
        image.buildah("rm", container, check=False)


# --- Serve in a container ---------------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    pids: set[int]  # every process of the container seen while it ran (buildah's own included)
    proc: subprocess.Popen


def post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def served(pushed_image: PushedImage) -> Iterator[Served]:
    port = free_port()
    overlay = local_overlay("dev", Path(BUNDLE_DIR), port)
    config = overlay.config
    for app in config["applications"]:
        app["args"]["bundle_dir"] = BUNDLE_DIR  # the image's path (local_overlay resolved it on this machine)
    with tempfile.TemporaryDirectory(prefix="image-serve-") as tmp:
        etc = Path(tmp)
        (etc / "serve-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        token = etc / "auth_token"
        token.write_text(os.urandom(32).hex())
        os.chown(token, RUNTIME_UID, -1)
        token.chmod(0o600)
        etc.chmod(0o755)
        env = {**overlay.serve_env, LOOPBACK_SWITCH: "0", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN_PATH": "/etc/support-assistant/auth_token",
               # Ray sees this machine's cores; the config's replicas at their ceilings need more logical CPUs.
               "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": logical_cpus_needed(config)}),
               "RAY_USAGE_STATS_ENABLED": "0"}
        container = image.buildah("from", "--pull-never", pushed_image.local_ref).stdout.strip()
        env_args = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
        log = open(etc / "serve.log", "w")  # noqa: SIM115 (kept open while the container runs)
        cmd = image.buildah_command("run", "--isolation", "chroot", "--network", "host", *env_args,
                                    "-v", f"{etc}:/etc/support-assistant:ro", container, "--",
                                    "serve", "run", "/etc/support-assistant/serve-config.yaml")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=image.buildah_env(),
                                start_new_session=True)
        served = Served(f"http://127.0.0.1:{port}", set(), proc)
        try:
            deadline, status = time.monotonic() + 300, None
            while time.monotonic() < deadline and proc.poll() is None:
                served.pids |= descendants(proc.pid)
                try:
                    status, _ = post(f"{served.url}/v1/answer", {"question": EXAMPLE_QUESTION, "top_k": 3}, timeout=20)
                    if status == 200:
                        break
                except (urllib.error.URLError, OSError, json.JSONDecodeError):
                    pass
                time.sleep(2)
            if status != 200:
                log.flush()
                pytest.fail(f"serve run in the container never answered 200 (last {status}, exit {proc.poll()}): "
                            f"{(etc / 'serve.log').read_text()[-3000:]}")
            served.pids |= descendants(proc.pid)
            yield served
        finally:
            _stop(served)
            log.close()
            image.buildah("rm", container, check=False)


def _stop(served: Served) -> None:
    """SIGINT to `serve run` (it shuts Serve and its Ray down), then SIGKILL to whatever of ours is left."""
    served.pids |= descendants(served.proc.pid)
    serve_pids = [p for p in served.pids if "serve run" in cmdline(p) and uid(p) == RUNTIME_UID]
    for pid in serve_pids:
        os.kill(pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        served.proc.wait(60)
    for pid in sorted(served.pids | {served.proc.pid}):
        if uid(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    served.proc.wait(30)


def readme_request() -> tuple[str, dict]:
    """The README's own curl example: (path, JSON body)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.search(r"curl -s http://127\.0\.0\.1:\d+(/\S+) .*-d '([^']+)'", line)
        if match:
            return match[1], json.loads(match[2])
    raise AssertionError("README.md has no curl example with a JSON body")


def test_serve_in_the_container_answers_the_readme_request_from_the_baked_bundle(
        served: Served, pushed_image: PushedImage) -> None:
    path, request = readme_request()
    status, body = post(f"{served.url}{path}", request)
    assert status == 200, body
    assert body["answer"] and body["sources"], body
    manifest = json.loads(image.read_from_image(pushed_image.local_ref, f"{BUNDLE_DIR}/manifest.json"))
    text = json.dumps(body)
    for model in manifest["models"].values():
        assert model["name"] in text, f"the response does not name {model['name']}: {text[:500]}"
    # Bad input still gets a JSON 4xx from inside the container.
    bad, error = post(f"{served.url}/v1/answer", {"top_k": 3})
    assert 400 <= bad < 500 and error, (bad, error)


def test_every_process_of_the_container_runs_as_the_non_root_user(served: Served) -> None:
    served.pids |= descendants(served.proc.pid)
    # buildah itself (and the chroot helper it re-executes as) are root on the host; what runs in the
    # container is the image's USER.
    inside = {pid: uid(pid) for pid in served.pids if "buildah" not in cmdline(pid) and uid(pid) is not None}
    assert inside, "no process of the container found"
    assert set(inside.values()) == {RUNTIME_UID}, {p: (u, cmdline(p)[:80]) for p, u in inside.items()}
    assert any("raylet" in cmdline(pid) for pid in inside), "Ray's raylet is not among the container's processes"
