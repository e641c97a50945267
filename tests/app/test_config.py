"""Typed user_config: the YAML is the only source of the values, and a wrong key fails naming it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from support_assistant.config import ConfigError, IngressConfig, PipelineConfig, parse, parse_user_config

BASE_SERVE_CONFIG = Path(__file__).resolve().parents[2] / "base" / "support-assistant" / "serve-config.yaml"


@pytest.fixture
def serve_config() -> dict:
    return yaml.safe_load(BASE_SERVE_CONFIG.read_text())


def _deployment(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def test_the_base_config_parses_into_every_stage(base_config: PipelineConfig, serve_config: dict) -> None:
    ingress = _deployment(serve_config, "Ingress")["user_config"]
    assert base_config.ingress.max_body_bytes == ingress["max_body_bytes"]
    assert base_config.ingress.stage_timeouts_s.as_dict() == {k: float(v) for k, v in
                                                              ingress["stage_timeouts_s"].items()}
    assert base_config.retriever.candidates == _deployment(serve_config, "Retriever")["user_config"]["candidates"]


def test_a_misspelled_key_fails_naming_it(serve_config: dict) -> None:
    reranker = _deployment(serve_config, "Reranker")["user_config"]
    reranker["max_batchsize"] = reranker.pop("max_batch_size")
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_serve_config(serve_config)
    assert "Reranker.user_config" in str(info.value)
    assert "max_batchsize: unknown key (misspelled?)" in str(info.value)
    assert "max_batch_size: Field required" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_body_bytes", "64k", "max_body_bytes: Input should be a valid integer"),
        ("max_body_bytes", 0, "max_body_bytes: Input should be greater than 0"),
        ("default_top_k", 50, "default_top_k 50 is outside top_k_min..top_k_max"),
        ("stage_timeouts_s", {"normalizer": 1}, "stage_timeouts_s.retriever: Field required"),
    ],
)
def test_wrong_values_fail_naming_the_key(serve_config: dict, key: str, value: object, message: str) -> None:
    raw = copy.deepcopy(_deployment(serve_config, "Ingress")["user_config"])
    raw[key] = value
    with pytest.raises(ConfigError, match=r"^Ingress\.user_config: ") as info:
        parse(IngressConfig, raw, "Ingress.user_config")
    assert message in str(info.value)


def test_an_unknown_deployment_or_a_missing_one_is_named(serve_config: dict) -> None:
    with pytest.raises(ConfigError, match="Rerankr: no such deployment"):
        parse_user_config("Rerankr", {})
    serve_config["applications"][0]["deployments"] = [
        d for d in serve_config["applications"][0]["deployments"] if d["name"] != "Generator"]
    with pytest.raises(ConfigError, match="no deployment Generator"):
        PipelineConfig.from_serve_config(serve_config)
