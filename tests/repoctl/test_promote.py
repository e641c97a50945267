"""`repoctl promote`: promotions on a throwaway git copy of the repository (see promote_repo.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from promote_repo import IMAGE, Repo, digest, make_repo
from repoctl import render
from repoctl.cli import build_parser
from repoctl.promote import PromoteError, Release, checked_edit, edit_kustomization, promote
from repoctl.render import render_overlay

RAY = "2.60.0"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    copy = make_repo(tmp_path)
    # In-process promotions validate the copy: keep its rendered output inside the copy too.
    monkeypatch.setattr(render, "RENDERED", copy.root / ".cache" / "rendered")
    return copy


def ref(app: str, char: str, ray: str = RAY) -> str:
    return f"{IMAGE}:{app}-ray{ray}@{digest(char)}"


def entry(repo: Repo, env: str) -> dict:
    images = yaml.safe_load(repo.kustomization(env).read_text())["images"]
    return next(e for e in images if e["name"] == IMAGE)


def rendered_images(repo: Repo, env: str) -> set[str]:
    docs = render_overlay(env, repo.root)
    rayservice = next(d for d in docs if d["kind"] == "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}


def run(repo: Repo, source: str, target: str, allow_downgrade: bool = False) -> list[str]:
    lines: list[str] = []
    promote(source, target, repo.root, allow_downgrade=allow_downgrade, log=lines.append)
    return lines


def pin(repo: Repo, env: str, app: str, char: str) -> str:
    """Set an overlay's release directly (test set-up, no checks) and commit it; return the reference."""
    path = repo.kustomization(env)
    path.write_text(edit_kustomization(path.read_text(), Release(f"{app}-ray{RAY}", digest(char))))
    repo.commit(f"{env}: {app}")
    return ref(app, char)


def test_an_image_reference_is_recorded_in_dev_with_its_digest(repo: Repo) -> None:
    before = repo.kustomization("dev").read_text()
    out = "\n".join(run(repo, ref("0.2.0", "a"), "dev"))

    assert repo.changed() == ["overlays/dev/kustomization.yaml"]
    assert entry(repo, "dev") == {"name": IMAGE, "newTag": "0.2.0-ray2.60.0", "digest": digest("a")}
    assert rendered_images(repo, "dev") == {ref("0.2.0", "a")}
    # Only the tag line changed and the digest line was added: comments and layout are intact.
    after = repo.kustomization("dev").read_text().splitlines()
    def keys(line: str) -> str:
        return line.strip().lstrip("- ").split(":", 1)[0]

    assert [line for line in after if keys(line) not in ("newTag", "digest")] == \
        [line for line in before.splitlines() if keys(line) != "newTag"]
    # The rendered diff of the target is printed.
    assert "--- overlays/dev (rendered, before)" in out
    assert f"+            image: {ref('0.2.0', 'a')}" in out
    assert f"-            image: {IMAGE}:0.1.0-ray2.60.0" in out


LOOPBACK = "127.0.0.1:5099/support-assistant"


def test_an_image_in_a_loopback_registry_goes_into_dev_as_newname_and_no_further(repo: Repo) -> None:
    source = f"{LOOPBACK}:0.2.0-ray{RAY}@{digest('a')}"
    run(repo, source, "dev")
    assert entry(repo, "dev") == {"name": IMAGE, "newName": LOOPBACK, "newTag": "0.2.0-ray2.60.0",
                                  "digest": digest("a")}
    assert rendered_images(repo, "dev") == {source}
    repo.commit("dev: loopback image")
    with pytest.raises(PromoteError, match=r"^overlays/dev runs 127\.0\.0\.1:5099/support-assistant, an image in a "
                                           r"registry on loopback: only ghcr\.io/acme-platform/support-assistant"):
        run(repo, "dev", "staging")
    # Back to the real registry: newName follows.
    run(repo, ref("0.3.0", "b"), "dev")
    assert entry(repo, "dev")["newName"] == IMAGE and rendered_images(repo, "dev") == {ref("0.3.0", "b")}


def test_dev_to_staging_to_prod_moves_the_same_digest_and_touches_only_the_target(repo: Repo) -> None:
    image = pin(repo, "dev", "0.2.0", "a")
    staging_before = repo.kustomization("staging").read_text()

    out = "\n".join(run(repo, "dev", "staging"))
    assert repo.changed() == ["overlays/staging/kustomization.yaml"]
    assert entry(repo, "staging") == {"name": IMAGE, "newTag": "0.2.0-ray2.60.0", "digest": digest("a")}
    assert rendered_images(repo, "staging") == {image}
    assert "promoted overlays/staging to 0.2.0-ray2.60.0@" in out
    changed_lines = set(repo.kustomization("staging").read_text().splitlines()) ^ set(staging_before.splitlines())
    assert all("newTag:" in line or "digest:" in line for line in changed_lines), changed_lines
    repo.commit("staging")

    run(repo, "staging", "prod")
    assert repo.changed() == ["overlays/prod/kustomization.yaml"]
    assert rendered_images(repo, "prod") == {image}


def test_running_a_promotion_again_changes_nothing(repo: Repo) -> None:
    pin(repo, "dev", "0.2.0", "a")
    assert promote("dev", "staging", repo.root, log=lambda _: None) is True
    repo.commit("staging")

    lines: list[str] = []
    assert promote("dev", "staging", repo.root, log=lines.append) is False
    assert lines == [f"overlays/staging already at 0.2.0-ray2.60.0@{digest('a')}: nothing to do"]
    result = repo.cli("dev", "staging")
    assert result.returncode == 0, result.stderr
    assert "already at 0.2.0-ray2.60.0" in result.stdout
    assert repo.changed() == []


def test_refuses_to_skip_an_environment(repo: Repo) -> None:
    pin(repo, "dev", "0.2.0", "a")
    result = repo.cli("dev", "prod")
    assert result.returncode != 0
    # One line for a person, never a traceback.
    assert result.stderr.strip() == ("promote: dev -> prod: promotions go one step at a time "
                                     "(dev -> staging -> prod); that skips staging")
    assert repo.changed() == []


@pytest.mark.parametrize(("source", "target", "message"), [
    ("prod", "staging", "that goes backwards"),
    ("staging", "dev", "that goes backwards"),
    ("staging", "staging", "source and target are the same environment"),
    ("dev", "qa", "unknown target 'qa'"),
    (ref("0.2.0", "a"), "staging", "an image reference is recorded in dev only"),
])
def test_refuses_other_orders(repo: Repo, source: str, target: str, message: str) -> None:
    with pytest.raises(PromoteError, match=re.escape(message)):
        run(repo, source, target)
    assert repo.changed() == []


def test_refuses_a_dev_without_a_digest(repo: Repo) -> None:
    # The skeleton's dev pins a tag only, as CI's per-merge builds do.
    with pytest.raises(PromoteError) as refused:
        run(repo, "dev", "staging")
    message = str(refused.value)
    assert "overlays/dev/kustomization.yaml" in message and "has no digest" in message
    assert f"make promote FROM={IMAGE}:0.1.0-ray2.60.0@sha256:<digest> TO=dev" in message
    assert repo.changed() == []


def test_refuses_the_placeholder_digest(repo: Repo) -> None:
    # The skeleton's staging carries the all-zero placeholder: that is no release to promote.
    with pytest.raises(PromoteError, match=r"overlays/staging/kustomization\.yaml: .* has no digest"):
        run(repo, "staging", "prod")
    assert repo.changed() == []


def test_refuses_a_downgrade_unless_allowed(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.10.0 is newer than 0.9.0: versions compare as numbers, not as strings.
    pin(repo, "staging", "0.10.0", "a")
    pin(repo, "dev", "0.9.0", "b")
    downgrade = "staging runs app 0.10.0, overlays/dev has 0.9.0: that is a downgrade"
    with pytest.raises(PromoteError, match=re.escape(downgrade)):
        run(repo, "dev", "staging")
    with pytest.raises(PromoteError, match=re.escape("dev runs app 0.9.0, image reference has 0.8.9")):
        run(repo, ref("0.8.9", "c"), "dev")
    refused = repo.cli("dev", "staging")
    assert (refused.returncode, refused.stderr.count("\n")) == (1, 1)
    assert downgrade in refused.stderr and "--allow-downgrade" in refused.stderr
    assert repo.changed() == []

    allowed = repo.cli("dev", "staging", "--allow-downgrade")
    assert allowed.returncode == 0, allowed.stderr
    assert entry(repo, "staging") == {"name": IMAGE, "newTag": "0.9.0-ray2.60.0", "digest": digest("b")}
    assert repo.changed() == ["overlays/staging/kustomization.yaml"]
    # `make promote ... ALLOW_DOWNGRADE=1` reaches the command as an environment variable.
    monkeypatch.setenv("ALLOW_DOWNGRADE", "1")
    assert build_parser().parse_args(["promote", "dev", "staging"]).allow_downgrade is True
    monkeypatch.setenv("ALLOW_DOWNGRADE", "0")
    assert build_parser().parse_args(["promote", "dev", "staging"]).allow_downgrade is False


def test_refuses_a_source_that_does_not_validate(repo: Repo) -> None:
    pin(repo, "dev", "0.2.0", "a")
    patch = repo.root / "overlays" / "dev" / "rayservice-patch.yaml"
    # A field the RayService CRD does not have: kubeconform -strict rejects it.
    patch.write_text(patch.read_text() + "- {op: add, path: /spec/notAField, value: 1}\n")
    repo.commit("broken dev")

    with pytest.raises(PromoteError, match=r"^overlays/dev does not validate, refusing to promote it: overlays/dev: "
                                           r"RayService support-assistant: spec\.notAField: additional property"):
        run(repo, "dev", "staging")
    assert repo.changed() == []


def test_leaves_the_target_unchanged_when_the_result_would_not_validate(repo: Repo) -> None:
    before = repo.kustomization("dev").read_bytes()
    # An image built for another Ray than the RayService's rayVersion.
    refusal = r"^overlays/dev would not validate with 0\.2\.0-ray2\.59\.0, left unchanged: overlays/dev: .*Ray 2\.59\.0"
    with pytest.raises(PromoteError, match=refusal):
        run(repo, ref("0.2.0", "a", ray="2.59.0"), "dev")
    assert repo.kustomization("dev").read_bytes() == before
    assert repo.changed() == []


@pytest.mark.parametrize(("source", "message"), [
    (f"ghcr.io/acme-platform/other:0.2.0-ray{RAY}@{digest('a')}", "the overlays run ghcr.io/acme-platform/"),
    (f"10.0.0.1:5000/support-assistant:0.2.0-ray{RAY}@{digest('a')}", "the overlays run ghcr.io/acme-platform/"),
    (f"127.0.0.1:5000/other:0.2.0-ray{RAY}@{digest('a')}", "the overlays run ghcr.io/acme-platform/"),
    (f"{IMAGE}:0.2.0-ray{RAY}", "needs both the tag and the digest"),
    (f"{IMAGE}@{digest('a')}", "needs both the tag and the digest"),
    (f"{IMAGE}:0.2.0-ray{RAY}@{digest('0')}", "the all-zero digest is the placeholder"),
    (f"{IMAGE}:0.2.0-ray{RAY}@sha256:abc", "digest must be sha256:<64 lowercase hex>"),
    (f"{IMAGE}:latest@{digest('a')}", "is not <app version>-ray<ray version>"),
])
def test_refuses_bad_image_references(repo: Repo, source: str, message: str) -> None:
    with pytest.raises(PromoteError, match=re.escape(message)):
        run(repo, source, "dev")
    assert repo.changed() == []


KUSTOMIZATION = f"""\
# a comment that must survive
images:
  - name: other/image
    newTag: "1.0"
  # comment between entries
  - name: {IMAGE}   # the app
    newTag: 0.1.0-ray2.60.0  # set by promote
patches: []
"""


def test_edit_sets_only_the_two_fields_and_keeps_comments() -> None:
    release = Release("0.2.0-ray2.60.0", digest("e"))
    text = edit_kustomization(KUSTOMIZATION, release)
    assert text == KUSTOMIZATION.replace(
        "    newTag: 0.1.0-ray2.60.0  # set by promote\n",
        f"    newTag: 0.2.0-ray2.60.0  # set by promote\n    digest: {digest('e')}\n")
    # Replacing an existing digest, and a second edit being a fixed point.
    again = edit_kustomization(text, Release("0.3.0-ray2.60.0", digest("f")))
    assert again.count("digest:") == 1 and digest("f") in again and "0.3.0-ray2.60.0  # set by promote" in again
    assert edit_kustomization(again, Release("0.3.0-ray2.60.0", digest("f"))) == again


def test_edit_refuses_layouts_it_cannot_edit_safely(tmp_path) -> None:
    path = tmp_path / "kustomization.yaml"
    flow = f"images: [{{name: {IMAGE}, newTag: 0.1.0-ray2.60.0}}]\n"
    with pytest.raises(PromoteError, match="no block-style"):
        checked_edit(path, flow, Release("0.2.0-ray2.60.0", digest("e")), tmp_path)
