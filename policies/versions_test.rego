package versions_test

import data.lib.testdata as td
import data.versions

image_path(group) := concat("", [group, "/template/spec/containers/0/image"])

test_ray_version_passes if {
	count(td.of("ray-version", versions.deny)) == 0 with input as td.good with data.support_assistant.environment as "prod"
}

test_ray_version_fails_when_tag_and_ray_version_differ if {
	inp := td.patched([{"op": "replace", "path": "/spec/rayClusterConfig/rayVersion", "value": "2.59.0"}])
	msgs := td.of("ray-version", versions.deny) with input as inp with data.support_assistant.environment as "prod"
	count(msgs) == 3 # head and both worker groups
	some m in msgs
	contains(m, "carries Ray 2.60.0")
}

test_ray_version_fails_when_tag_has_no_ray_version if {
	inp := td.patched([{"op": "replace", "path": image_path(td.gpu_group), "value": "ghcr.io/acme-platform/support-assistant:0.1.0"}])
	some m in td.of("ray-version", versions.deny) with input as inp with data.support_assistant.environment as "dev"
	contains(m, "carries Ray <none>")
}

test_ray_version_reads_upstream_ray_tags if {
	inp := td.patched([{"op": "add", "path": "/spec/rayClusterConfig/autoscalerOptions/image", "value": "rayproject/ray:2.60.0-py311"}])
	count(td.of("ray-version", versions.deny)) == 0 with input as inp with data.support_assistant.environment as "dev"
}

test_ray_version_checks_the_autoscaler_image if {
	inp := td.patched([{"op": "add", "path": "/spec/rayClusterConfig/autoscalerOptions/image", "value": "rayproject/ray:2.9.0"}])
	some m in td.of("ray-version", versions.deny) with input as inp with data.support_assistant.environment as "dev"
	contains(m, "autoscalerOptions.image")
}

test_image_tag_passes if {
	count(td.of("image-tag", versions.deny)) == 0 with input as td.good with data.support_assistant.environment as "dev"
}

test_image_tag_fails_on_latest if {
	inp := td.patched([{"op": "replace", "path": image_path(td.cpu_group), "value": "ghcr.io/acme-platform/support-assistant:latest"}])
	count(td.of("image-tag", versions.deny)) == 1 with input as inp with data.support_assistant.environment as "dev"
}

test_image_tag_fails_when_untagged if {
	inp := td.patched([{"op": "add", "path": concat("", [td.cpu_group, "/template/spec/containers/-"]), "value": {"name": "sidecar", "image": "registry.local:5000/fluent-bit"}}])
	some m in td.of("image-tag", versions.deny) with input as inp with data.support_assistant.environment as "dev"
	contains(m, "containers[sidecar]")
}

test_image_parts_treats_registry_port_as_name if {
	parts := data.lib.ray.image_parts("registry.local:5000/team/app:1.2@sha256:abc")
	parts == {"name": "registry.local:5000/team/app", "tag": "1.2", "digest": "sha256:abc"}
}

test_image_digest_passes if {
	count(td.of("image-digest", versions.deny)) == 0 with input as td.good with data.support_assistant.environment as "prod"
}

test_image_digest_fails_in_staging_and_prod_without_digest if {
	inp := td.patched([{"op": "replace", "path": image_path(td.head), "value": "ghcr.io/acme-platform/support-assistant:0.1.0-ray2.60.0"}])
	every env in ["staging", "prod"] {
		count(td.of("image-digest", versions.deny)) == 1 with input as inp with data.support_assistant.environment as env
	}
	count(td.of("image-digest", versions.deny)) == 0 with input as inp with data.support_assistant.environment as "dev"
}

test_image_digest_placeholder_warns if {
	zeros := "ghcr.io/acme-platform/support-assistant:0.1.0-ray2.60.0@sha256:0000000000000000000000000000000000000000000000000000000000000000"
	inp := td.patched([{"op": "replace", "path": image_path(td.head), "value": zeros}])
	count(td.of("image-digest-placeholder", versions.warn)) == 1 with input as inp with data.support_assistant.environment as "prod"
	count(td.of("image-digest-placeholder", versions.warn)) == 0 with input as td.good with data.support_assistant.environment as "prod"
}
