package gpu_test

import data.gpu
import data.lib.testdata as td

env := "prod"

test_gpu_fit_passes if {
	count(td.of("gpu-fit", gpu.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_gpu_fit_fails_when_no_worker_has_enough_gpus if {
	msgs := td.of("gpu-fit", gpu.deny) with input as td.serve_patched([{"op": "replace", "path": concat("", [td.generator, "/ray_actor_options/num_gpus"]), "value": 2}])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "deployments[Generator].ray_actor_options.num_gpus=2")
}

# A head with GPUs does not count: Serve replicas should not run there.
test_gpu_fit_ignores_head_gpus if {
	inp := td.patched([
		{"op": "add", "path": concat("", [td.head, "/template/spec/containers/0/resources/limits/nvidia.com~1gpu"]), "value": "2"},
		{"op": "add", "path": concat("", [td.head, "/template/spec/containers/0/resources/requests/nvidia.com~1gpu"]), "value": "2"},
	])
	broken := json.patch(inp[0].contents, [{"op": "replace", "path": "/spec/serveConfigV2", "value": yaml.marshal(json.patch(td.serve_config, [{"op": "replace", "path": concat("", [td.generator, "/ray_actor_options/num_gpus"]), "value": 2}]))}])
	count(td.of("gpu-fit", gpu.deny)) == 1 with input as td.input_of([broken, td.networkpolicy])
		with data.support_assistant.environment as env
}

test_gpu_limit_request_passes if {
	count(td.of("gpu-limit-request", gpu.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_gpu_limit_request_fails_when_request_differs if {
	msgs := td.of("gpu-limit-request", gpu.deny) with input as td.patched([{"op": "replace", "path": concat("", [td.gpu_group, "/template/spec/containers/0/resources/requests/nvidia.com~1gpu"]), "value": "2"}])
		with data.support_assistant.environment as env
	count(msgs) == 1
}

test_gpu_limit_request_fails_when_limit_missing if {
	msgs := td.of("gpu-limit-request", gpu.deny) with input as td.patched([
		{"op": "remove", "path": concat("", [td.gpu_group, "/template/spec/containers/0/resources/limits/nvidia.com~1gpu"])},
		{"op": "remove", "path": concat("", [td.gpu_group, "/rayStartParams/num-gpus"])},
	])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "limit <unset>")
}

test_gpu_start_params_passes if {
	count(td.of("gpu-start-params", gpu.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_gpu_start_params_fails_when_num_gpus_differs_from_limit if {
	msgs := td.of("gpu-start-params", gpu.deny) with input as td.patched([{"op": "replace", "path": concat("", [td.gpu_group, "/rayStartParams/num-gpus"]), "value": "2"}])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "num-gpus=\"2\"")
}

test_gpu_start_params_fails_when_group_resources_disagree if {
	msgs := td.of("gpu-start-params", gpu.deny) with input as td.patched([{"op": "add", "path": concat("", [td.gpu_group, "/resources"]), "value": {"GPU": "4"}}])
		with data.support_assistant.environment as env
	some m in msgs
	contains(m, "resources GPU=4")
}
