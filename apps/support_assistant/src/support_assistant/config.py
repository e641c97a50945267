"""Typed configuration: each deployment's `user_config` and the application's `args`, as
serveConfigV2 sets them (base/support-assistant/serve-config.yaml plus the overlays).

The YAML is the only place the values live; these models hold no defaults for them, so a key the
YAML forgets fails the deploy instead of falling back to a number written in code, and
`extra="forbid"` turns a misspelled key into an error that names it. Serve calls `reconfigure`
with the user_config, so a bad config fails the replica's start (DEPLOY_FAILED) with this message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

STAGES = ("normalizer", "retriever", "reranker", "generator")
# The application's name in serveConfigV2 (base/support-assistant/serve-config.yaml).
APP_NAME = "support-assistant"


class ConfigError(ValueError):
    """A user_config or args that does not match its model; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StageTimeouts(_Strict):
    """Seconds each stage may take for one request before the ingress answers 504 naming it."""

    normalizer: PositiveFloat
    retriever: PositiveFloat
    reranker: PositiveFloat
    generator: PositiveFloat

    def as_dict(self) -> dict[str, float]:
        return {stage: getattr(self, stage) for stage in STAGES}

    def total(self) -> float:
        """The longest a request can spend in the stages; must stay under Serve's request_timeout_s."""
        return sum(self.as_dict().values())


class NormalizerConfig(_Strict):
    max_chars: PositiveInt


class IngressConfig(_Strict):
    max_body_bytes: PositiveInt
    max_question_chars: PositiveInt
    top_k_min: PositiveInt
    top_k_max: PositiveInt
    default_top_k: PositiveInt
    # Requests one ingress replica lets into the pipeline at once; more get a JSON 503 with
    # Retry-After before any stage runs (serving/admission.py).
    max_in_flight: PositiveInt
    # A request body that has not all arrived by then is refused (408): a trickling client must
    # not hold one of the ingress's max_ongoing_requests slots.
    body_read_timeout_s: PositiveFloat
    # Retry-After (seconds) on a 503 when the stage gave no hint of its own (a dead replica, or
    # /readyz while a stage is down); backpressure rejections carry the deployment's
    # backpressure_config.retry_after_s.
    retry_after_s: PositiveInt
    stage_timeouts_s: StageTimeouts
    # The normalizer runs inside the ingress: its work (~0.04 ms) is far cheaper than a call to
    # another replica (docs/benchmarks.md).
    normalizer: NormalizerConfig

    @model_validator(mode="after")
    def _top_k_range(self) -> IngressConfig:
        if not self.top_k_min <= self.default_top_k <= self.top_k_max:
            raise ValueError(f"default_top_k {self.default_top_k} is outside top_k_min..top_k_max "
                             f"({self.top_k_min}..{self.top_k_max})")
        return self


class RetrieverConfig(_Strict):
    # The BM25 shortlist handed to the reranker (its cost grows linearly with it).
    candidates: PositiveInt


class BatchingConfig(_Strict):
    max_batch_size: PositiveInt
    batch_wait_timeout_s: NonNegativeFloat


class RerankerConfig(BatchingConfig):
    pass


class GeneratorConfig(BatchingConfig):
    # False: answer extractively even when the bundle holds a language model (a load test, or a
    # rollback that keeps the bundle).
    use_language_model: bool
    # Abstractive mode (a language model in the bundle).
    max_new_tokens: PositiveInt
    max_prompt_tokens: PositiveInt
    temperature: float = Field(ge=0.0, le=2.0)
    # The grounding guard's threshold for each sentence encoder it may run with (the bundle's
    # reranker model, by name): a generated sentence whose best support is below it is dropped.
    # Calibrated on the labelled questions per encoder (bench/guard_calibration.py); a bundle whose
    # encoder has no entry cannot run the language model unguarded, so its replica refuses to start.
    grounding_thresholds: dict[str, float]
    # Extractive mode (no language model), and the fallback: sentences in the answer.
    answer_sentences: PositiveInt


class AppArgs(_Strict):
    """serveConfigV2 applications[].args."""

    bundle_dir: str = Field(min_length=1)


# Deployment name in serveConfigV2 -> the model of its user_config.
USER_CONFIGS: dict[str, type[_Strict]] = {
    "Ingress": IngressConfig,
    "Retriever": RetrieverConfig,
    "Reranker": RerankerConfig,
    "Generator": GeneratorConfig,
}


Model = TypeVar("Model", bound=BaseModel)


def parse(model: type[Model], raw: Mapping[str, Any] | None, where: str) -> Model:
    """`raw` as `model`, or ConfigError naming `where` and each offending key."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(raw).__name__}")
    try:
        # Strict: "3" is not a number and true is not a count. JSON mode still takes an int where a
        # float is meant (a YAML timeout written as `2`).
        return model.model_validate_json(json.dumps(dict(raw or {})))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: "
            + ("unknown key (misspelled?)" if err["type"] == "extra_forbidden" else err["msg"])
            for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def parse_user_config(deployment: str, raw: Mapping[str, Any] | None) -> BaseModel:
    if deployment not in USER_CONFIGS:
        raise ConfigError(f"{deployment}: no such deployment (known: {', '.join(USER_CONFIGS)})")
    return parse(USER_CONFIGS[deployment], raw, f"{deployment}.user_config")


class PipelineConfig(_Strict):
    """Every stage's user_config of one application, as typed objects."""

    ingress: IngressConfig
    retriever: RetrieverConfig
    reranker: RerankerConfig
    generator: GeneratorConfig

    @classmethod
    def from_serve_config(cls, serve_config: Mapping[str, Any], app: str = APP_NAME) -> PipelineConfig:
        """From a parsed serveConfigV2 (or base/support-assistant/serve-config.yaml)."""
        apps = [a for a in serve_config.get("applications", []) if a.get("name") == app]
        if not apps:
            raise ConfigError(f"serveConfigV2: no application named {app!r}")
        deployments = {d["name"]: d.get("user_config") for d in apps[0].get("deployments", [])}
        missing = [name for name in USER_CONFIGS if name not in deployments]
        if missing:
            raise ConfigError(f"serveConfigV2 application {app!r}: no deployment {', '.join(missing)}")
        return cls(**{name.lower(): parse_user_config(name, deployments[name]) for name in USER_CONFIGS})
