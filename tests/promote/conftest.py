from __future__ import annotations

from pathlib import Path

import pytest
from promote_repo import Repo, make_repo
from repoctl import validate


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    copy = make_repo(tmp_path)
    # In-process promotions validate the copy: keep its rendered output inside the copy too.
    monkeypatch.setattr(validate, "RENDERED", copy.root / ".cache" / "rendered")
    return copy
