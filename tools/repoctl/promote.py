"""`repoctl promote FROM TO`: move a released image one environment forward (dev -> staging -> prod).

    repoctl promote <image>:<tag>@sha256:<digest> dev   record a pushed image in dev (build-image.sh prints it)
    repoctl promote 127.0.0.1:PORT/support-assistant:<tag>@sha256:<digest> dev
                                                        the same from a registry on loopback (the image tests'):
                                                        dev's images[] entry gets newName; never promoted further
    repoctl promote dev staging                         copy dev's tag + digest into staging
    repoctl promote staging prod                        copy staging's tag + digest into prod

Only the target overlay's kustomization.yaml (its `images:` entry) is written, and only when the
source validates, the target still validates afterwards, and the app version does not go backwards
(unless --allow-downgrade). Promotions carry digests: a source without one is refused. Running the
same promotion twice is a no-op.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from repoctl import validate
from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.release import IMAGE_NAME, PLACEHOLDER_DIGEST, ImageRef, ReleaseError, ReleaseTag
from repoctl.render import RenderError, kustomize_build, load_documents, target_paths


class PromoteError(RuntimeError):
    """A refusal; the message is one line naming the file or field and what to do."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Release:
    tag: str
    digest: str
    # IMAGE_NAME, or the same image in a registry on loopback (kustomize's newName).
    name: str = IMAGE_NAME

    def ref(self) -> str:
        return f"{self.name}:{self.tag}@{self.digest}"


def loopback_image(name: str) -> bool:
    """<loopback host>:<port>/.../support-assistant: the app image in a registry on this machine."""
    host, _, path = name.partition("/")
    hostname, _, port = host.rpartition(":")
    return hostname in LOOPBACK_HOSTS and port.isdigit() and path.rsplit("/", 1)[-1] == IMAGE_NAME.rsplit("/", 1)[-1]


def kustomization_path(env: str, root: Path) -> Path:
    return root / "overlays" / env / "kustomization.yaml"


def _image_entry(path: Path, root: Path) -> dict:
    docs = yaml.safe_load(path.read_text()) or {}
    entries = [e for e in docs.get("images") or [] if isinstance(e, dict) and e.get("name") == IMAGE_NAME]
    if len(entries) != 1:
        raise PromoteError(f"{path.relative_to(root)}: expected exactly one images[] entry named {IMAGE_NAME}, "
                           f"found {len(entries)}")
    return entries[0]


def read_release(env: str, root: Path, need_digest: bool) -> Release | None:
    """The tag + digest an overlay pins; None for a digest that is missing or the all-zero placeholder."""
    path = kustomization_path(env, root)
    entry = _image_entry(path, root)
    where = f"{path.relative_to(root)}: images[{IMAGE_NAME}]"
    tag, digest, name = entry.get("newTag"), entry.get("digest"), str(entry.get("newName") or IMAGE_NAME)
    if not tag:
        raise PromoteError(f"{where} has no newTag")
    if not digest or digest == PLACEHOLDER_DIGEST:
        if need_digest:
            hint = (f"record the pushed image first: make promote FROM={IMAGE_NAME}:{tag}@sha256:<digest> TO=dev"
                    if env == "dev" else f"promote a released image into {env} first")
            raise PromoteError(f"{where} has no digest (promotions carry digests, never bare tags): {hint}")
        return None
    return Release(str(tag), str(digest), name)


def parse_source(source: str, target: str, root: Path) -> tuple[str, Release]:
    """(description of the source, release to install) after the ordering rules."""
    if target not in ENVIRONMENTS:
        raise PromoteError(f"unknown target {target!r}: one of {', '.join(ENVIRONMENTS)}")
    order = " -> ".join(ENVIRONMENTS)
    if source in ENVIRONMENTS:
        if source == target:
            raise PromoteError(f"{source} -> {target}: source and target are the same environment")
        step = ENVIRONMENTS.index(target) - ENVIRONMENTS.index(source)
        if step != 1:
            why = f"that skips {ENVIRONMENTS[ENVIRONMENTS.index(source) + 1]}" if step > 1 else "that goes backwards"
            raise PromoteError(f"{source} -> {target}: promotions go one step at a time ({order}); {why}")
        release = read_release(source, root, need_digest=True)
        assert release is not None
        if release.name != IMAGE_NAME:
            raise PromoteError(f"overlays/{source} runs {release.name}, an image in a registry on loopback: "
                               f"only {IMAGE_NAME} images are promoted past {ENVIRONMENTS[0]}")
        return f"overlays/{source}", release
    if target != ENVIRONMENTS[0]:
        raise PromoteError(f"an image reference is recorded in {ENVIRONMENTS[0]} only ({order}); "
                           f"got TO={target}")
    try:
        ref = ImageRef.parse(source)
    except ReleaseError as exc:
        raise PromoteError(f"FROM={source!r} is neither an environment ({', '.join(ENVIRONMENTS)}) "
                           f"nor a valid image reference: {exc}") from None
    if ref.name != IMAGE_NAME and not loopback_image(ref.name):
        raise PromoteError(f"FROM={source}: the overlays run {IMAGE_NAME}, not {ref.name} "
                           f"(or, for local tests, <{'|'.join(LOOPBACK_HOSTS)}>:<port>/support-assistant)")
    if not ref.tag or not ref.digest:
        raise PromoteError(f"FROM={source}: needs both the tag and the digest, "
                           f"{IMAGE_NAME}:<app>-ray<ray>@sha256:<digest> (scripts/build-image.sh prints it)")
    if ref.digest == PLACEHOLDER_DIGEST:
        raise PromoteError(f"FROM={source}: the all-zero digest is the placeholder, not a pushed image")
    return "image reference", Release(ref.tag, ref.digest, ref.name)


def _environment_of(line: str) -> str | None:
    """The environment a `repoctl validate` failure line names (overlays/<env>..., clusters/<tool>/<env>...)."""
    parts = line.split(":", 1)[0].split("/")
    if parts[0] == "overlays" and len(parts) > 1:
        return parts[1]
    if parts[0] == "clusters" and len(parts) > 2:
        return parts[2]
    return None


def validate_overlay(env: str, root: Path) -> str:
    """Run `repoctl validate`'s steps over the environment's targets (its overlay and its Argo CD / Flux
    entries); return the overlay's rendered YAML, or raise with the first failure."""
    paths = [p for p in target_paths(root) if p == f"overlays/{env}" or p.endswith(f"/{env}")]
    ctx = validate.build_context(root, paths)
    results = validate.run_steps(ctx, out=lambda _line: None)
    # Steps that check every environment at once (render's completeness, serve-config drift) also report
    # the others: those are not this environment's failures. Lines naming no environment (a missing
    # tool) are.
    failures = [line for lines in results.values() for line in lines if _environment_of(line) in (env, None)]
    if failures:
        more = f" (and {len(failures) - 1} more: run `make validate`)" if len(failures) > 1 else ""
        raise PromoteError(" ".join(f"{failures[0]}{more}".split()))
    overlay = next(t for t in ctx.targets if t.path == f"overlays/{env}")
    return overlay.text


def check_rendered_release(env: str, rendered: str, release: Release) -> None:
    """Every RayService container runs exactly the release, built for the RayService's Ray."""
    for doc in load_documents(rendered):
        if doc.get("kind") != "RayService":
            continue
        cluster = doc["spec"]["rayClusterConfig"]
        ray_version = str(cluster.get("rayVersion"))
        tag_ray = ReleaseTag.parse(release.tag).ray_version
        if tag_ray != ray_version:
            raise PromoteError(f"overlays/{env}: image tag {release.tag} is built for Ray {tag_ray} but the "
                               f"RayService runs rayVersion {ray_version}")
        specs = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        for spec in specs:
            for container in spec["template"]["spec"]["containers"]:
                if container["image"] != release.ref():
                    raise PromoteError(f"overlays/{env}: container {container['name']} renders image "
                                       f"{container['image']}, expected {release.ref()}")
        return
    raise PromoteError(f"overlays/{env}: no RayService in the rendered output")


_ENTRY_KEY_RE = re.compile(r"^(?P<indent>\s+)(?P<key>[A-Za-z]+):(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")


def edit_kustomization(text: str, release: Release) -> str:
    """Set newTag and digest of the IMAGE_NAME entry, leaving every other byte (comments included) alone."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines)
                  if re.match(rf"^\s*-\s+name:\s*['\"]?{re.escape(IMAGE_NAME)}['\"]?\s*(#.*)?$", line)), None)
    if start is None:
        raise PromoteError(f"no block-style `- name: {IMAGE_NAME}` entry to edit")
    dash = lines[start].index("-")
    after_dash = lines[start][dash + 1:]
    key_col = dash + 1 + len(after_dash) - len(after_dash.lstrip(" "))
    # The entry's other keys sit in the same column as `name`.
    last = start
    for i in range(start + 1, len(lines)):
        if len(lines[i]) - len(lines[i].lstrip(" ")) != key_col or lines[i].lstrip(" ").startswith("-"):
            break
        last = i
    values = {"newTag": release.tag, "digest": release.digest}
    has_name = any(re.match(rf"^\s{{{key_col}}}newName:", lines[i]) for i in range(start + 1, last + 1))
    if release.name != IMAGE_NAME or has_name:
        values = {"newName": release.name, **values}
    missing = dict(values)
    for i in range(start + 1, last + 1):
        match = _ENTRY_KEY_RE.match(lines[i].rstrip("\n"))
        if match and match["key"] in values:
            newline = "\n" if lines[i].endswith("\n") else ""
            lines[i] = f"{match['indent']}{match['key']}: {values[match['key']]}{match['comment'] or ''}{newline}"
            missing.pop(match["key"])
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    lines[last + 1:last + 1] = [f"{' ' * key_col}{key}: {value}\n" for key, value in missing.items()]
    return "".join(lines)


def checked_edit(path: Path, text: str, release: Release, root: Path) -> str:
    """edit_kustomization, then proof that the YAML changed in exactly the two intended fields."""
    new_text = edit_kustomization(text, release)
    expected, after = yaml.safe_load(text), yaml.safe_load(new_text)
    for entry in expected.get("images") or []:
        if isinstance(entry, dict) and entry.get("name") == IMAGE_NAME:
            entry.update(newTag=release.tag, digest=release.digest)
            if release.name != IMAGE_NAME or "newName" in entry:
                entry["newName"] = release.name
    if expected != after:
        raise PromoteError(f"{path.relative_to(root)}: the images[{IMAGE_NAME}] entry is not in the block style "
                           f"this command edits (name/newTag/digest one per line); set newTag and digest by hand")
    return new_text


def promote(source: str, target: str, root: Path = ROOT, allow_downgrade: bool = False,
            log: Callable[[str], None] = print) -> bool:
    """Promote; True when the target changed, False when it already ran the release."""
    origin, release = parse_source(source, target, root)
    path = kustomization_path(target, root)
    current = read_release(target, root, need_digest=False)
    if current == release:
        log(f"overlays/{target} already at {release.tag}@{release.digest}: nothing to do")
        return False

    try:
        new_tag = ReleaseTag.parse(release.tag)
    except ReleaseError as exc:
        raise PromoteError(f"{origin}: {exc}") from None
    old_tag_text = _image_entry(path, root).get("newTag")
    if not allow_downgrade:
        try:
            old_tag = ReleaseTag.parse(str(old_tag_text))
        except ReleaseError as exc:
            raise PromoteError(f"{path.relative_to(root)}: cannot compare versions ({exc}); "
                               f"pass --allow-downgrade to replace it anyway") from None
        if new_tag.app_version < old_tag.app_version:
            raise PromoteError(f"{target} runs app {old_tag.app_version}, {origin} has {new_tag.app_version}: "
                               f"that is a downgrade; pass --allow-downgrade (ALLOW_DOWNGRADE=1) if it is a rollback")

    # Last, as the slowest check: the source must pass the same validation as a PR would.
    if source in ENVIRONMENTS:
        try:
            check_rendered_release(source, validate_overlay(source, root), release)
        except PromoteError as exc:
            raise PromoteError(f"overlays/{source} does not validate, refusing to promote it: {exc}") from None

    text = path.read_text()
    new_text = checked_edit(path, text, release, root)
    try:
        before = kustomize_build(Path("overlays") / target, root)
    except RenderError as exc:
        raise PromoteError(f"overlays/{target} does not render before the change: {exc}") from None
    path.write_text(new_text)
    validated = False
    try:
        after = validate_overlay(target, root)
        check_rendered_release(target, after, release)
        validated = True
    except PromoteError as exc:
        raise PromoteError(f"overlays/{target} would not validate with {release.tag}, left unchanged: {exc}") from None
    finally:
        if not validated:  # also on Ctrl-C or a crash: never leave a half-checked target behind
            path.write_text(text)

    diff = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                f"overlays/{target} (rendered, before)", f"overlays/{target} (rendered, after)")
    log("".join(diff).rstrip("\n"))
    was = f"{current.tag}@{current.digest}" if current else f"{old_tag_text} (no digest)"
    log(f"promoted overlays/{target} to {release.tag}@{release.digest} from {origin} (was {was})")
    log(f"next: review and commit {path.relative_to(root)}, then open a PR (docs/release.md)")
    return True


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "promote", help="copy the image tag + digest one environment forward: promote dev staging",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="FROM", help="dev or staging, or an image reference (TO=dev)")
    parser.add_argument("target", metavar="TO", help="staging or prod (dev for an image reference)")
    # The environment variable lets `make promote ... ALLOW_DOWNGRADE=1` pass it through.
    parser.add_argument("--allow-downgrade", action="store_true", default=os.environ.get("ALLOW_DOWNGRADE") == "1",
                        help="allow a lower app version than the target runs, for a rollback (env: ALLOW_DOWNGRADE=1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        promote(args.source, args.target, ROOT, allow_downgrade=args.allow_downgrade)
    except PromoteError as exc:
        raise SystemExit(f"promote: {exc}") from None
    return 0
