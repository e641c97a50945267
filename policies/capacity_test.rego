package capacity_test

import data.capacity
import data.lib.testdata as td

env := "prod"

test_capacity_gpu_passes if {
	count(td.of("capacity-gpu", capacity.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

# 2 x 0.5 (Reranker) + 3 x 1 (Generator) = 4 GPUs > 2 GPU pods x 1 GPU.
test_capacity_gpu_fails_when_peak_exceeds_worker_gpus if {
	msgs := td.of("capacity-gpu", capacity.deny) with input as td.serve_patched([{"op": "replace", "path": concat("", [td.generator, "/autoscaling_config/max_replicas"]), "value": 3}])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "need up to 4 GPUs")
	contains(m, "at most 2")
}

test_capacity_gpu_counts_num_replicas_and_num_of_hosts if {
	# num_replicas 3 x 1 GPU + 2 x 0.5 = 4 needs numOfHosts 2 on the GPU group (2 x 2 x 1 = 4).
	ops := [
		{"op": "remove", "path": concat("", [td.generator, "/autoscaling_config"])},
		{"op": "add", "path": concat("", [td.generator, "/num_replicas"]), "value": 3},
	]
	count(td.of("capacity-gpu", capacity.deny)) == 1 with input as td.serve_patched(ops)
		with data.support_assistant.environment as env
	cfg := yaml.marshal(json.patch(td.serve_config, ops))
	hosts := td.patched([
		{"op": "replace", "path": "/spec/serveConfigV2", "value": cfg},
		{"op": "add", "path": concat("", [td.gpu_group, "/numOfHosts"]), "value": 2},
	])
	count(td.of("capacity-gpu", capacity.deny)) == 0 with input as hosts with data.support_assistant.environment as env
}

test_capacity_cpu_passes if {
	count(td.of("capacity-cpu", capacity.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

# 50 x 0.5 CPUs for Ingress alone exceed (2 + 2) x 4 worker CPUs (the head has num-cpus 0).
test_capacity_cpu_fails_when_peak_exceeds_ray_cpus if {
	msgs := td.of("capacity-cpu", capacity.deny) with input as td.serve_patched([{"op": "replace", "path": concat("", [td.ingress, "/autoscaling_config/max_replicas"]), "value": 50}])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "at most 16")
}

test_capacity_cpu_fails_when_gpu_deployments_outgrow_gpu_node_cpus if {
	msgs := td.of("capacity-cpu", capacity.deny) with input as td.serve_patched([{"op": "replace", "path": concat("", [td.reranker, "/ray_actor_options/num_cpus"]), "value": 4}])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "GPU deployments need up to 9 CPUs on GPU nodes")
}

test_capacity_cpu_fails_when_one_replica_fits_no_node if {
	msgs := td.of("capacity-cpu", capacity.deny) with input as td.serve_patched([
		{"op": "replace", "path": concat("", [td.ingress, "/ray_actor_options/num_cpus"]), "value": 5},
		{"op": "replace", "path": concat("", [td.ingress, "/autoscaling_config/max_replicas"]), "value": 1},
	])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "fits no single Ray node")
}

test_serve_default_num_cpus_is_one if {
	# Without num_cpus Serve reserves 1 CPU: 17 Ingress replicas then exceed 16 CPUs.
	msgs := td.of("capacity-cpu", capacity.deny) with input as td.serve_patched([
		{"op": "remove", "path": concat("", [td.ingress, "/ray_actor_options/num_cpus"])},
		{"op": "replace", "path": concat("", [td.ingress, "/autoscaling_config/max_replicas"]), "value": 15},
	])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "Ingress 15x1")
}

test_gpu_sharing_passes_with_annotation if {
	count(td.of("gpu-sharing", capacity.warn)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_gpu_sharing_warns_without_annotation if {
	msgs := td.of("gpu-sharing", capacity.warn) with input as td.patched([{"op": "remove", "path": "/metadata/annotations"}])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "deployments[Reranker]")
	contains(m, "support-assistant.acme.dev/gpu-sharing")
}

test_gpu_sharing_is_not_a_deny if {
	count(capacity.deny) == 0 with input as td.patched([{"op": "remove", "path": "/metadata/annotations"}])
		with data.support_assistant.environment as env
}
