"""repoctl.local_run.local_overlay: what `make run`, the full-size load run and the bench deploy is the
overlay's own serveConfigV2, changed only where a laptop cannot honour it, with the RAY_SERVE_*
settings of the overlay's Ray containers."""

from __future__ import annotations

from pathlib import Path

from repoctl.local_run import local_overlay, logical_cpus_needed
from repoctl.render import ray_serve_env_of, serve_config_of


def test_the_local_overlay_is_the_rendered_one_made_local(rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    overlay = local_overlay("dev", tmp_path / "bundle", port=8123)
    rendered_config = serve_config_of(rendered["dev"])
    assert overlay.serve_env == ray_serve_env_of(rendered["dev"])
    assert overlay.serve_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert overlay.config["http_options"] == {**rendered_config["http_options"], "host": "127.0.0.1", "port": 8123}
    local_app, = overlay.config["applications"]
    assert local_app["args"]["bundle_dir"] == str((tmp_path / "bundle").resolve())
    deployments = {d["name"]: d for d in local_app["deployments"]}
    for original in rendered_config["applications"][0]["deployments"]:
        local = deployments[original["name"]]
        assert "num_gpus" not in local.get("ray_actor_options", {})  # mapped to CPU: no GPU here
        assert {k: v for k, v in local.items() if k != "ray_actor_options"} == {
            k: v for k, v in original.items() if k != "ray_actor_options"}
    assert logical_cpus_needed(overlay.config) >= len(deployments)
