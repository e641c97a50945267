package podsecurity_test

import data.lib.testdata as td
import data.podsecurity

env := "prod"

container(group) := concat("", [group, "/template/spec/containers/0"])

test_pod_resources_passes if {
	count(td.of("pod-resources", podsecurity.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_pod_resources_fails_without_cpu_limit if {
	inp := td.patched([{"op": "remove", "path": concat("", [container(td.cpu_group), "/resources/limits/cpu"])}])
	msgs := td.of("pod-resources", podsecurity.deny) with input as inp with data.support_assistant.environment as env
	count(msgs) == 1
	some m in msgs
	contains(m, "workerGroupSpecs[0].template.spec.containers[ray-worker].resources.limits.cpu is not set")
}

test_pod_resources_fails_without_autoscaler_requests if {
	inp := td.patched([{"op": "remove", "path": "/spec/rayClusterConfig/autoscalerOptions/resources/requests"}])
	msgs := td.of("pod-resources", podsecurity.deny) with input as inp with data.support_assistant.environment as env
	count(msgs) == 2
	some m in msgs
	contains(m, "autoscalerOptions.resources.requests.memory")
}

test_pod_resources_covers_plain_workloads if {
	deployment := {
		"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "proxy"},
		"spec": {"template": {"spec": {
			"securityContext": td.pod_security,
			"containers": [{"name": "envoy", "image": "envoy:1.30", "securityContext": td.container_security}],
		}}},
	}
	msgs := td.of("pod-resources", podsecurity.deny) with input as td.input_of([td.rayservice, td.networkpolicy, deployment])
		with data.support_assistant.environment as env
	count(msgs) == 4
}

test_pod_security_context_passes if {
	count(td.of("pod-security-context", podsecurity.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_pod_security_context_fails_without_run_as_non_root if {
	inp := td.patched([{"op": "remove", "path": concat("", [td.gpu_group, "/template/spec/securityContext/runAsNonRoot"])}])
	some m in td.of("pod-security-context", podsecurity.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "runAsNonRoot is not true")
}

test_pod_security_context_container_overrides_pod if {
	inp := td.patched([{"op": "add", "path": concat("", [container(td.gpu_group), "/securityContext/runAsNonRoot"]), "value": false}])
	count(td.of("pod-security-context", podsecurity.deny)) == 1 with input as inp with data.support_assistant.environment as env
}

test_pod_security_context_fails_with_privilege_escalation if {
	inp := td.patched([{"op": "remove", "path": concat("", [container(td.head), "/securityContext/allowPrivilegeEscalation"])}])
	some m in td.of("pod-security-context", podsecurity.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "allowPrivilegeEscalation is not false")
}

test_pod_security_context_fails_without_drop_all if {
	inp := td.patched([{"op": "replace", "path": concat("", [container(td.head), "/securityContext/capabilities/drop"]), "value": ["NET_RAW"]}])
	some m in td.of("pod-security-context", podsecurity.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "drop does not contain ALL")
}

test_pod_security_context_fails_without_seccomp if {
	inp := td.patched([{"op": "remove", "path": concat("", [td.cpu_group, "/template/spec/securityContext/seccompProfile"])}])
	some m in td.of("pod-security-context", podsecurity.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "seccompProfile.type is not RuntimeDefault")
}

test_pod_security_context_accepts_container_level_seccomp if {
	inp := td.patched([
		{"op": "remove", "path": concat("", [td.cpu_group, "/template/spec/securityContext/seccompProfile"])},
		{"op": "add", "path": concat("", [container(td.cpu_group), "/securityContext/seccompProfile"]), "value": {"type": "RuntimeDefault"}},
	])
	count(td.of("pod-security-context", podsecurity.deny)) == 0 with input as inp with data.support_assistant.environment as env
}

test_pod_security_context_checks_the_autoscaler if {
	inp := td.patched([{"op": "remove", "path": "/spec/rayClusterConfig/autoscalerOptions/securityContext"}])
	msgs := td.of("pod-security-context", podsecurity.deny) with input as inp with data.support_assistant.environment as env

	# The head pod's runAsNonRoot and seccomp apply to the sidecar; escalation and capabilities do not.
	count(msgs) == 2
}
