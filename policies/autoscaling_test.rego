package autoscaling_test

import data.autoscaling
import data.lib.testdata as td

env := "prod"

test_autoscaling_bounds_passes if {
	count(td.of("autoscaling-bounds", autoscaling.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_autoscaling_bounds_fails_when_initial_above_max if {
	inp := td.serve_patched([{"op": "replace", "path": concat("", [td.ingress, "/autoscaling_config/initial_replicas"]), "value": 3}])
	some m in td.of("autoscaling-bounds", autoscaling.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "got 1 <= 3 <= 2")
}

test_autoscaling_bounds_fails_when_min_above_max if {
	inp := td.serve_patched([
		{"op": "replace", "path": concat("", [td.ingress, "/autoscaling_config/min_replicas"]), "value": 3},
		{"op": "remove", "path": concat("", [td.ingress, "/autoscaling_config/initial_replicas"])},
	])
	some m in td.of("autoscaling-bounds", autoscaling.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "got 3 <= 3 <= 2")
}

test_autoscaling_bounds_fails_with_num_replicas_and_autoscaling if {
	inp := td.serve_patched([{"op": "add", "path": concat("", [td.ingress, "/num_replicas"]), "value": 2}])
	some m in td.of("autoscaling-bounds", autoscaling.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "both num_replicas")
}

test_autoscaling_bounds_allows_num_replicas_auto if {
	inp := td.serve_patched([{"op": "add", "path": concat("", [td.ingress, "/num_replicas"]), "value": "auto"}])
	count(td.of("autoscaling-bounds", autoscaling.deny)) == 0 with input as inp with data.support_assistant.environment as env
}

test_autoscaling_target_passes if {
	count(td.of("autoscaling-target", autoscaling.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_autoscaling_target_fails_above_max_ongoing_requests if {
	inp := td.serve_patched([{"op": "replace", "path": concat("", [td.reranker, "/autoscaling_config/target_ongoing_requests"]), "value": 32}])
	some m in td.of("autoscaling-target", autoscaling.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "target_ongoing_requests=32 exceeds max_ongoing_requests=16")
}

test_serve_deprecated_passes if {
	count(td.of("serve-deprecated", autoscaling.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_serve_deprecated_fails_on_max_concurrent_queries if {
	inp := td.serve_patched([{"op": "add", "path": concat("", [td.generator, "/max_concurrent_queries"]), "value": 8}])
	some m in td.of("serve-deprecated", autoscaling.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "max_concurrent_queries")
	contains(m, "use max_ongoing_requests")
}

test_serve_deprecated_fails_on_old_autoscaling_target if {
	inp := td.serve_patched([{"op": "add", "path": concat("", [td.generator, "/autoscaling_config/target_num_ongoing_requests_per_replica"]), "value": 2}])
	some m in td.of("serve-deprecated", autoscaling.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "use target_ongoing_requests")
}

test_serve_deprecated_fails_on_http_location if {
	inp := td.serve_patched([{"op": "add", "path": "/http_options/location", "value": "HeadOnly"}])
	some m in td.of("serve-deprecated", autoscaling.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "http_options.location")
}

test_rayservice_deprecated_passes if {
	count(td.of("rayservice-deprecated", autoscaling.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_rayservice_deprecated_fails_on_unhealthy_thresholds if {
	inp := td.patched([
		{"op": "add", "path": "/spec/serviceUnhealthySecondThreshold", "value": 900},
		{"op": "add", "path": "/spec/deploymentUnhealthySecondThreshold", "value": 300},
	])
	count(td.of("rayservice-deprecated", autoscaling.deny)) == 2 with input as inp with data.support_assistant.environment as env
}
