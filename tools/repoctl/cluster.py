"""`repoctl cluster up|down|status`: a real Kubernetes control plane on loopback, for trying manifests.

etcd and kube-apiserver (built by `make setup` from tools/controlplane, versions in versions.env) run on
127.0.0.1 only, on free ports, with a CA, serving/client certificates and a service-account key generated
at start; the kubeconfig is written next to them. `up` also installs the pinned CRDs (KubeRay,
prometheus-operator, Argo CD, Flux) with server-side apply and starts the KubeRay operator, unless told not
to. The tests in tests/cluster start the same thing from Python (`ControlPlane.start`), one per session.
Nothing here needs a container engine, a kubelet or a network beyond loopback; docs/controlplane.md says
what that proves and what it cannot.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import datetime
import functools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repoctl.paths import BIN, CACHE, ENVIRONMENTS, ROOT, versions
from repoctl.sockets import listeners

# `repoctl cluster up`: certificates, kubeconfig, etcd data, logs, state.json (REPOCTL_CLUSTER_DIR moves it)
STATE_DIR = Path(os.environ.get("REPOCTL_CLUSTER_DIR", CACHE / "cluster"))
STATE_FILE = STATE_DIR / "state.json"
CRD_CACHE = CACHE / "cluster-crds"  # the pinned CRDs as one YAML file per source, written once
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
FIELD_MANAGER = "repoctl"
OPERATOR = "ray-operator"  # bin/ray-operator: `go install github.com/ray-project/kuberay/ray-operator`


class ClusterError(RuntimeError):
    """The control plane could not start (or a command against it failed); the message says which and why."""


# --- certificates ---------------------------------------------------------------------------------------


def _write_certs(folder: Path) -> dict[str, Path]:
    """A throwaway CA, the API server's serving certificate (127.0.0.1, localhost, kubernetes.default...),
    an admin client certificate (group system:masters) and the service-account signing key. EC P-256:
    generated in milliseconds."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def write_key(name: str, key: ec.EllipticCurvePrivateKey) -> None:
        path = folder / f"{name}.key"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        paths[f"{name}.key"] = path

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def issue(cn: str, key, issuer_key, issuer_name, *, ca=False, org=None, sans=None, usage=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn, org))
            .issuer_name(issuer_name or name(cn, org))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write_cert(name_: str, cert) -> None:
        path = folder / f"{name_}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name_}.crt"] = path

    import ipaddress

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("repoctl-local-ca", ca_key, ca_key, None, ca=True)
    write_key("ca", ca_key)
    write_cert("ca", ca)

    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
            *(x509.DNSName(d) for d in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                        "kubernetes.default.svc.cluster.local"))]
    write_key("apiserver", server_key)
    write_cert("apiserver", issue("kube-apiserver", server_key, ca_key, ca.subject, sans=sans,
                                  usage=[ExtendedKeyUsageOID.SERVER_AUTH]))

    admin_key = ec.generate_private_key(ec.SECP256R1())
    write_key("admin", admin_key)
    write_cert("admin", issue("repoctl-admin", admin_key, ca_key, ca.subject, org="system:masters",
                              usage=[ExtendedKeyUsageOID.CLIENT_AUTH]))

    sa_key = ec.generate_private_key(ec.SECP256R1())
    write_key("service-account", sa_key)
    pub = folder / "service-account.pub"
    pub.write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    paths["service-account.pub"] = pub
    return paths


# --- processes ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies, however it dies (prctl
    PR_SET_PDEATHSIG), so a killed pytest cannot leave an API server behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise ClusterError(f"{path} is missing: run `make setup` (it builds the control plane, docs/controlplane.md)")
    return str(path)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _ours(pid: int) -> bool:
    """The pid still runs one of the binaries in ./bin, or the loopback git server of `up --flux` (guards
    `down` against a recycled pid)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(exe.removesuffix(" (deleted)")).parent == BIN.resolve() or argv[1:3] == [b"-m", b"repoctl.gitserver"]


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group the pid leads, then SIGKILL it if it is still there after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                return
            time.sleep(0.05)


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver (+ optionally the KubeRay operator); `stop()` ends them all."""

    workdir: Path
    server: str = ""
    kubeconfig: Path = Path()
    pids: dict[str, int] = field(default_factory=dict)  # name -> pid, each the leader of its process group
    logs: dict[str, Path] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    _attached: bool = True

    # -- lifecycle --

    @classmethod
    def start(cls, workdir: Path, *, attached: bool = True, timeout: float = 90.0) -> ControlPlane:
        """Start etcd and kube-apiserver and wait until /readyz says ok. attached: the processes die with
        this one (tests); detached (`repoctl cluster up`): they outlive it until `repoctl cluster down`."""
        cp = cls(workdir=workdir, _attached=attached)
        if attached:
            atexit.register(cp.stop)
        try:
            cp._start(timeout)
        except BaseException:
            cp.stop()
            raise
        return cp

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                env={**os.environ, **(env or {})}, start_new_session=True,
                preexec_fn=_die_with_parent if self._attached else None,
            )
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _wait(self, name: str, probe, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}:\n{_tail(self.logs[name])}")
            if probe():
                return
            time.sleep(0.1)
        raise ClusterError(f"{name} not ready after {timeout:.0f}s:\n{_tail(self.logs[name])}")

    def _start(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = _write_certs(self.workdir / "pki")
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://{LOOPBACK}:{etcd_port}"
        peer_url = f"http://{LOOPBACK}:{peer_port}"
        self._spawn("etcd", [
            binary("etcd"), "--name=local", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=local={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip
        self._wait("etcd", lambda: _http_ok(f"{etcd_url}/health"), timeout)

        self._spawn("kube-apiserver", [
            binary("kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}", f"--secure-port={api_port}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki['apiserver.crt']}", f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki['service-account.pub']}",
            f"--service-account-signing-key-file={pki['service-account.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The default (lease) reconciler refuses a loopback advertise address; nothing here needs the
            # `kubernetes` Service's endpoints to point at the API server.
            "--endpoint-reconciler-type=none",
            "--authorization-mode=RBAC",
            "--profiling=false",
            # One client (the tests) and one controller: API priority and fairness only adds start-up work.
            "--enable-priority-and-fairness=false",
        ])  # fmt: skip
        self.server = f"https://{LOOPBACK}:{api_port}"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {"server": self.server,
                                                       "certificate-authority": str(pki["ca.crt"])}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(pki["admin.crt"]),
                                                 "client-key": str(pki["admin.key"])}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        }, sort_keys=False))  # fmt: skip
        self.kubeconfig.chmod(0o600)
        context = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        context.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))
        self._wait("kube-apiserver", lambda: _http_ok(f"{self.server}/readyz", context), timeout)

    def stop(self) -> None:
        """End every process this control plane started (the operator first, etcd last). Idempotent."""
        for name in reversed(list(self.pids)):
            pid = self.pids.pop(name)
            if self._attached or _ours(pid):
                _stop_pid(pid)
            proc = self._procs.pop(name, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)

    def running(self) -> dict[str, bool]:
        return {name: _alive(pid) for name, pid in self.pids.items()}

    # -- using it --

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """kubectl (the same build and version as the server) against this control plane."""
        result = subprocess.run(
            [binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, check=False, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def start_process(self, name: str, argv: list[str], ready, *, env: dict[str, str] | None = None,
                      timeout: float = 60.0) -> None:
        """Start another process of this control plane (stopped with it, before the API server) and wait
        until ready() is true; fails with its log's tail if it exits first."""
        self._spawn(name, argv, env=env)
        self._wait(name, ready, timeout)

    def start_operator(self, watch_namespaces: list[str] | None = None, timeout: float = 60.0) -> None:
        """The KubeRay operator as a plain process with this kubeconfig: no leader election, metrics and
        health probes off (so it listens on nothing), watching the given namespaces (default: all)."""
        argv = [binary(OPERATOR), "--metrics-addr=0", "--health-probe-bind-address=0",
                "--enable-leader-election=false", "--log-stdout-encoder=console"]
        if watch_namespaces:
            argv.append(f"--watch-namespace={','.join(watch_namespaces)}")
        self._spawn(OPERATOR, argv, env={"KUBECONFIG": str(self.kubeconfig)})

        def started() -> bool:
            return "Starting workers" in self.logs[OPERATOR].read_text(errors="replace")

        self._wait(OPERATOR, started, timeout)

    def install_crds(self) -> list[str]:
        """Server-side apply of every pinned CRD (client-side apply cannot: the RayService CRD is larger
        than the last-applied annotation may be); returns the CRD names once all are Established."""
        files = [arg for path in crd_manifests() for arg in ("-f", str(path))]
        self.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", *files)
        names = [crd["metadata"]["name"] for crd in pinned_crds()]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
        return names

    def to_state(self) -> dict:
        return {"workdir": str(self.workdir), "server": self.server, "kubeconfig": str(self.kubeconfig),
                "pids": self.pids, "logs": {k: str(v) for k, v in self.logs.items()}}

    @classmethod
    def from_state(cls, state: dict) -> ControlPlane:
        return cls(workdir=Path(state["workdir"]), server=state["server"], kubeconfig=Path(state["kubeconfig"]),
                   pids=dict(state["pids"]), logs={k: Path(v) for k, v in state["logs"].items()}, _attached=False)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --- the pinned CRDs as manifests -----------------------------------------------------------------------


def crd_manifests() -> list[Path]:
    """One YAML file of CustomResourceDefinitions per pinned source (repoctl.schemas.CRD_SOURCES), read
    from the Go module cache (or generated by controller-gen) once and kept in .cache/cluster-crds."""
    from repoctl import schemas

    pinned = versions()
    CRD_CACHE.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in schemas.CRD_SOURCES:
        version = pinned[source.version_key]
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{source.module}@{version}")
        path = CRD_CACHE / f"{slug}.yaml"
        if not path.exists():
            _, docs = schemas.crd_documents(source, pinned, BIN)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))
            tmp.replace(path)
        paths.append(path)
    return paths


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are megabytes of YAML


@functools.cache
def pinned_crds() -> tuple[dict, ...]:
    """Every pinned CustomResourceDefinition, parsed once per process."""
    return tuple(doc for path in crd_manifests() for doc in yaml.load_all(path.read_text(), Loader=_Loader) if doc)


# --- the command ----------------------------------------------------------------------------------------


def _load_state() -> ControlPlane | None:
    try:
        return ControlPlane.from_state(json.loads(STATE_FILE.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cluster", help="a local etcd + kube-apiserver (+ KubeRay operator) on loopback")
    actions = parser.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start it in the background and print the KUBECONFIG to use")
    up.add_argument("--no-crds", action="store_true", help="do not install the pinned CRDs")
    up.add_argument("--no-operator", action="store_true", help="do not start the KubeRay operator")
    up.add_argument("--flux", action="store_true",
                    help="also start Flux (source-, kustomize-, helm-controller) and a git server serving this "
                         "checkout's commit on loopback (docs/flux.md)")  # fmt: skip
    actions.add_parser("down", help="stop everything `up` started and delete its state")
    sync = actions.add_parser("sync", help="after `up --flux`: publish this checkout's tree as main on the git "
                                           "server and apply clusters/flux/<env> pointed at it")  # fmt: skip
    sync.add_argument("--env", default="dev", choices=ENVIRONMENTS)
    actions.add_parser("status", help="what runs, where it listens, and the kubeconfig")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil

    existing = _load_state()
    if args.action == "status":
        if existing is None or not any(existing.running().values()):
            print("cluster: not running")
            return 1
        for name, alive in existing.running().items():
            where = ", ".join(f"{a}:{p}" for _, a, p in listeners([existing.pids[name]])) if alive else "-"
            state = "running" if alive else "EXITED"
            print(f"cluster: {name} pid {existing.pids[name]} {state} listening {where or '-'}")
        print(f"cluster: server {existing.server}\nexport KUBECONFIG={existing.kubeconfig}")
        return 0
    if args.action == "sync":
        from repoctl import flux, gitserver

        state = json.loads(STATE_FILE.read_text()) if existing is not None else {}
        if "flux" not in state or not any(existing.running().values()):
            raise SystemExit("cluster: no Flux running: start it with `repoctl cluster up --flux`")
        try:
            commit = gitserver.publish(ROOT, Path(state["flux"]["git_root"]))
            flux.sync(existing, args.env, state["flux"]["git_url"])
        except (gitserver.GitError, ClusterError) as exc:
            raise SystemExit(f"cluster: {exc}") from None
        print(f"cluster: main = {commit[:12]}; clusters/flux/{args.env} applied "
              f"(watch: bin/kubectl get gitrepositories,kustomizations,helmreleases -n {flux.NAMESPACE})")
        return 0
    if args.action == "down":
        if existing is not None:
            existing.stop()
        if STATE_DIR.exists():
            shutil.rmtree(STATE_DIR)
        print("cluster: down")
        return 0
    # up
    if args.flux and args.no_crds:
        raise SystemExit("cluster: --flux needs the Flux CRDs: drop --no-crds")
    if existing is not None and any(existing.running().values()):
        raise SystemExit(f"cluster: already up ({existing.server}); export KUBECONFIG={existing.kubeconfig}")
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    started = time.monotonic()
    try:
        cp = ControlPlane.start(STATE_DIR, attached=False)
        STATE_FILE.write_text(json.dumps(cp.to_state(), indent=2))
        if not args.no_crds:
            print(f"cluster: {len(cp.install_crds())} CRDs installed (server-side apply)")
        if not args.no_operator:
            cp.start_operator()
            print(f"cluster: KubeRay operator {versions()['KUBERAY_VERSION']} running (log {cp.logs[OPERATOR]})")
        STATE_FILE.write_text(json.dumps(cp.to_state(), indent=2))
        if args.flux:
            from repoctl import flux

            started_flux = flux.start(cp)
            STATE_FILE.write_text(json.dumps({**cp.to_state(), "flux": started_flux.to_state()}, indent=2))
            print(f"cluster: Flux controllers running ({', '.join(flux.CONTROLLERS)}; logs in {cp.workdir})")
            print(f"cluster: git server at {started_flux.git_url}, main = {started_flux.commit[:12]}; "
                  "apply clusters/flux/<env> with `repoctl cluster sync --env dev`")
    except ClusterError as exc:
        state = _load_state()
        if state is not None:
            state.stop()
        raise SystemExit(f"cluster: {exc}") from None
    print(f"cluster: up in {time.monotonic() - started:.1f}s at {cp.server} (stop it with `repoctl cluster down`)")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    return 0


def temporary_workdir() -> Path:
    """A fresh folder for a test session's control plane (short path: etcd's unix sockets are not used)."""
    return Path(tempfile.mkdtemp(prefix="repoctl-cluster-"))
