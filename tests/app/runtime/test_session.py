from __future__ import annotations

from pathlib import Path

import pytest
from support_assistant.runtime import session as ort_session
from support_assistant.runtime.session import (
    CPU,
    CUDA,
    OMP_THREADS_ENV,
    PROVIDERS_ENV,
    RAYON_THREADS_ENV,
    SPIN_ENV,
    THREADS_ENV,
    active_provider,
    cap_tokenizer_threads,
    choose_providers,
    intra_op_threads,
    make_session,
    session_options,
    spinning,
)


def test_cuda_preferred_when_available() -> None:
    assert choose_providers([CUDA, CPU], env={}) == [CUDA, CPU]


def test_cpu_only_without_cuda_and_no_other_providers_by_default() -> None:
    assert choose_providers(["AzureExecutionProvider", CPU], env={}) == [CPU]


def test_env_override_is_honoured() -> None:
    assert choose_providers([CUDA, CPU], env={PROVIDERS_ENV: f" {CPU} "}) == [CPU]


def test_env_override_naming_a_missing_provider_is_an_error() -> None:
    with pytest.raises(ValueError, match=f"{PROVIDERS_ENV}.*{CUDA}"):
        choose_providers([CPU], env={PROVIDERS_ENV: f"{CUDA},{CPU}"})


def test_threads_default_to_one_and_env_overrides() -> None:
    assert intra_op_threads({}) == 1
    # What Ray sets in a replica given num_cpus: 2; the explicit variable still wins.
    assert intra_op_threads({OMP_THREADS_ENV: "2"}) == 2
    assert intra_op_threads({OMP_THREADS_ENV: "2", THREADS_ENV: "1"}) == 1
    assert intra_op_threads({OMP_THREADS_ENV: "0"}) == 1
    assert intra_op_threads({THREADS_ENV: "3"}) == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match=THREADS_ENV):
            intra_op_threads({THREADS_ENV: bad})


def test_session_reports_provider_and_logs_no_warnings(minilm_dir: Path, capfd: pytest.CaptureFixture[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger=ort_session.__name__)
    sess = make_session(minilm_dir / "model.onnx")
    assert active_provider(sess) == CPU  # no GPU on the test machine
    assert f"running on {CPU}" in caplog.text
    _, err = capfd.readouterr()
    assert "[W:onnxruntime" not in err and "[E:onnxruntime" not in err


def test_session_uses_env_threads(test_decoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "2")
    sess = make_session(test_decoder_dir / "model.onnx")
    assert sess.get_session_options().intra_op_num_threads == 2


def test_idle_threads_sleep_unless_the_deployment_opts_in(monkeypatch: pytest.MonkeyPatch) -> None:
    assert spinning({}) is False
    assert spinning({SPIN_ENV: "0"}) is False
    assert spinning({SPIN_ENV: " 1 "}) is True
    for bad in ("yes", "true", "2"):
        with pytest.raises(ValueError, match=SPIN_ENV):
            spinning({SPIN_ENV: bad})
    monkeypatch.delenv(SPIN_ENV, raising=False)
    assert session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv(SPIN_ENV, "1")
    assert session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        make_session(tmp_path / "nope.onnx")


def test_tokenizer_pool_capped_unless_already_set() -> None:
    env: dict[str, str] = {}
    cap_tokenizer_threads(2, env)
    assert env == {RAYON_THREADS_ENV: "2"}
    cap_tokenizer_threads(1, env)
    assert env == {RAYON_THREADS_ENV: "2"}
