package head_test

import data.head
import data.lib.testdata as td

test_head_num_cpus_passes if {
	count(td.of("head-num-cpus", head.deny)) == 0 with input as td.good with data.support_assistant.environment as "prod"
}

test_head_num_cpus_fails_in_staging_and_prod if {
	inp := td.patched([{"op": "remove", "path": concat("", [td.head, "/rayStartParams/num-cpus"])}])
	every env in ["staging", "prod"] {
		some m in td.of("head-num-cpus", head.deny) with input as inp with data.support_assistant.environment as env
		contains(m, "Ray would give the head 2 CPUs")
	}
}

test_head_num_cpus_allows_head_cpus_in_dev if {
	inp := td.patched([{"op": "remove", "path": concat("", [td.head, "/rayStartParams/num-cpus"])}])
	count(td.of("head-num-cpus", head.deny)) == 0 with input as inp with data.support_assistant.environment as "dev"
}

test_head_num_cpus_sees_group_resources if {
	inp := td.patched([{"op": "add", "path": concat("", [td.head, "/resources"]), "value": {"CPU": "1"}}])
	count(td.of("head-num-cpus", head.deny)) == 1 with input as inp with data.support_assistant.environment as "prod"
}

test_head_pinned_passes_when_a_worker_offers_the_resource if {
	inp := td.patched([
		{"op": "add", "path": concat("", [td.cpu_group, "/rayStartParams/resources"]), "value": "'\"{\\\"bm25_index\\\": 1}\"'"},
		{"op": "replace", "path": "/spec/serveConfigV2", "value": yaml.marshal(json.patch(td.serve_config, [{"op": "add", "path": concat("", [td.ingress, "/ray_actor_options/resources"]), "value": {"bm25_index": 0.1}}]))},
	])
	count(td.of("head-pinned", head.deny)) == 0 with input as inp with data.support_assistant.environment as "prod"
}

test_head_pinned_fails_when_only_the_head_offers_it if {
	inp := td.patched([
		{"op": "add", "path": concat("", [td.head, "/rayStartParams/resources"]), "value": "{\"head_only\": 1}"},
		{"op": "replace", "path": "/spec/serveConfigV2", "value": yaml.marshal(json.patch(td.serve_config, [{"op": "add", "path": concat("", [td.ingress, "/ray_actor_options/resources"]), "value": {"head_only": 0.01}}]))},
	])
	some m in td.of("head-pinned", head.deny) with input as inp with data.support_assistant.environment as "prod"
	contains(m, "pinned to the head")
}

test_head_pinned_fails_when_nobody_offers_it if {
	inp := td.serve_patched([{"op": "add", "path": concat("", [td.ingress, "/ray_actor_options/resources"]), "value": {"tpu": 1}}])
	some m in td.of("head-pinned", head.deny) with input as inp with data.support_assistant.environment as "prod"
	contains(m, "offered by no Ray node")
}
