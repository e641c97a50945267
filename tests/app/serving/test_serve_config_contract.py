"""Each overlay's rendered serveConfigV2 against the app it deploys (no Ray cluster needed)."""

from __future__ import annotations

import importlib

import pytest
from ray.serve.deployment import Application, Deployment
from ray.serve.schema import ServeDeploySchema
from repoctl.paths import ENVIRONMENTS
from repoctl.render import serve_config_of
from support_assistant.config import USER_CONFIGS, AppArgs, PipelineConfig, parse


@pytest.fixture(scope="module", params=ENVIRONMENTS)
def serve_config(request, rendered) -> dict:
    return serve_config_of(rendered[request.param])


def _import(import_path: str):
    module, _, attr = import_path.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_config_is_valid_for_the_pinned_ray_serve(serve_config):
    ServeDeploySchema.model_validate(serve_config)


def test_import_path_builds_the_app_and_every_deployment_exists(serve_config):
    for app_config in serve_config["applications"]:
        builder = _import(app_config["import_path"])
        assert isinstance(builder(app_config["args"]), Application)
        module = importlib.import_module(app_config["import_path"].partition(":")[0])
        in_code = {obj.name for obj in vars(module).values() if isinstance(obj, Deployment)}
        in_config = {d["name"] for d in app_config["deployments"]}
        assert in_config == in_code, f"config-only: {in_config - in_code}, code-only: {in_code - in_config}"


def test_every_user_config_and_args_parse_with_the_typed_models(serve_config):
    """What a replica's reconfigure() will accept: an unknown or misspelled key fails here, before merge."""
    PipelineConfig.from_serve_config(serve_config)
    for app_config in serve_config["applications"]:
        parse(AppArgs, app_config["args"], "args")
        assert {d["name"] for d in app_config["deployments"]} == set(USER_CONFIGS)


def test_batch_sizes_fit_max_ongoing_requests(serve_config):
    """@serve.batch never fills a batch larger than the requests a replica may hold."""
    for app_config in serve_config["applications"]:
        for deployment in app_config["deployments"]:
            batch = deployment.get("user_config", {}).get("max_batch_size")
            if batch:
                assert batch <= deployment["max_ongoing_requests"], deployment["name"]


def test_retriever_shortlist_covers_the_largest_top_k(serve_config):
    """A client asking for top_k_max sources must be able to get them."""
    for app_config in serve_config["applications"]:
        by_name = {d["name"]: d for d in app_config["deployments"]}
        candidates = by_name["Retriever"]["user_config"]["candidates"]
        assert candidates >= by_name["Ingress"]["user_config"]["top_k_max"]
