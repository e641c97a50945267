"""The application builder serveConfigV2 imports (support_assistant.serving.app:build_app).

serveConfigV2 (base/support-assistant/serve-config.yaml) owns every deployment option (replicas,
autoscaling, resources, queues, health checks) and each stage's user_config; nothing here
duplicates those values.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from support_assistant.config import AppArgs, parse
from support_assistant.serving.deployments import (
    GeneratorDeployment,
    RerankerDeployment,
    RetrieverDeployment,
)
from support_assistant.serving.ingress import Ingress


def build_app(args: dict[str, Any]) -> Application:
    app_args = parse(AppArgs, args, "serveConfigV2 applications[].args")
    bundle_dir = app_args.bundle_dir
    return Ingress.bind(
        RetrieverDeployment.bind(bundle_dir),
        RerankerDeployment.bind(bundle_dir),
        GeneratorDeployment.bind(bundle_dir),
        bundle_dir,
    )
