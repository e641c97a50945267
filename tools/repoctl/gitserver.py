"""A git server on loopback for the local Flux sync: git's own smart HTTP (`git http-backend`) behind a small
HTTP server, serving bare repositories from one folder, read-only.

`publish()` makes the bare repository a sync engine pulls: a clone of the commit under test (the working
tree's tracked changes on top of HEAD, as `git stash create` records them, so an edited overlay is what
gets synced). Tests then commit to a clone of it and push to that folder directly (not over HTTP), the
way a merge to main would reach the server. docs/flux.md shows how to run it by hand.

    python -m repoctl.gitserver FOLDER --port PORT   # serves FOLDER/<name>.git at http://127.0.0.1:PORT/<name>.git
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import subprocess
from pathlib import Path

LOOPBACK = "127.0.0.1"
REPOSITORY = "support-assistant-gitops.git"  # the name it is served under
BRANCH = "main"  # what clusters/flux/base/gitrepository.yaml syncs
# Commits the tests make: a fixed identity, and no user or system git configuration read.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "repoctl", "GIT_AUTHOR_EMAIL": "repoctl@localhost",
    "GIT_COMMITTER_NAME": "repoctl", "GIT_COMMITTER_EMAIL": "repoctl@localhost",
}  # fmt: skip


class GitError(RuntimeError):
    """A git command failed; the message is the command and git's own words."""


def git(*args: str, cwd: Path | str | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True,
                            text=True, check=False, timeout=120)  # fmt: skip
    if result.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def tree_under_test(repo: Path) -> str:
    """The commit to serve: HEAD, or, when tracked files have changes, a commit of the working tree on top of
    HEAD (its tree from `git stash create`, which writes objects without touching any ref, stash or file).
    Untracked files are not in it."""
    head = git("rev-parse", "HEAD", cwd=repo)
    stash = git("stash", "create", cwd=repo)
    if not stash:
        return head
    return git("commit-tree", f"{stash}^{{tree}}", "-p", head, "-m", f"working tree on {head[:12]}", cwd=repo)


def publish(repo: Path, folder: Path, commit: str | None = None) -> str:
    """A bare repository FOLDER/support-assistant-gitops.git whose `main` is the commit under test (or the
    commit given); returns its sha."""
    commit = commit or tree_under_test(repo)
    bare = folder / REPOSITORY
    if not bare.exists():
        git("init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(bare))
    git("push", "--quiet", "--force", str(bare), f"{commit}:refs/heads/{BRANCH}", cwd=repo)
    return git("rev-parse", BRANCH, cwd=bare)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Runs `git http-backend` (CGI) for each request: the protocol is git's, this only carries it."""

    server_version = "repoctl-gitserver"
    protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive bookkeeping
    root: Path

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        if "receive-pack" in path or "receive-pack" in query:
            # Read-only: commits arrive by a push to the folder, never over HTTP.
            self.send_error(403, "this server is read-only")
            return
        body = self._body() if self.command == "POST" else b""
        env = {
            **os.environ, **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": self.command,
            "PATH_INFO": path, "QUERY_STRING": query, "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }  # fmt: skip
        result = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False,
                                timeout=120)  # fmt: skip
        separator = b"\r\n\r\n" if b"\r\n\r\n" in result.stdout else b"\n\n"
        head, _, payload = result.stdout.partition(separator)
        headers = [line.split(":", 1) for line in head.decode("latin-1").splitlines() if ":" in line]
        status = next((v.strip() for k, v in headers if k.lower() == "status"), "200 OK")
        code, _, reason = status.partition(" ")
        if result.returncode != 0 and not head:
            self.send_error(500, result.stderr.decode(errors="replace").strip()[:200])
            return
        self.send_response(int(code), reason or None)
        for name, value in headers:
            if name.lower() != "status":
                self.send_header(name, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


def serve(folder: Path, port: int) -> None:
    handler = type("Handler", (_Handler,), {"root": folder.resolve()})
    with http.server.ThreadingHTTPServer((LOOPBACK, port), handler) as server:
        print(f"gitserver: serving {folder} at http://{LOOPBACK}:{server.server_port}/", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


def url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}/{REPOSITORY}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repoctl.gitserver", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder of bare repositories to serve")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"gitserver: {args.folder} is not a folder")
    serve(args.folder, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
