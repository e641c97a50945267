package exposure_test

import data.exposure
import data.lib.testdata as td

env := "prod"

service(type, port, target) := {
	"apiVersion": "v1", "kind": "Service",
	"metadata": {"name": "ray-public", "namespace": "support-assistant"},
	"spec": {"type": type, "selector": {"ray.io/node-type": "head"}, "ports": [{"port": port, "targetPort": target}]},
}

ingress(port) := {
	"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
	"metadata": {"name": "ray", "namespace": "support-assistant"},
	"spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "support-assistant-head-svc", "port": port}}}]}}]},
}

with_docs(docs) := td.input_of(array.concat([td.rayservice, td.networkpolicy], docs))

test_exposure_service_passes_for_serve_port_and_internal_services if {
	inp := with_docs([service("LoadBalancer", 80, 8000), service("ClusterIP", 8265, 8265)])
	count(td.of("exposure-service", exposure.deny)) == 0 with input as inp with data.support_assistant.environment as env
}

test_exposure_service_fails_on_load_balancer_dashboard if {
	inp := with_docs([service("LoadBalancer", 443, 8265)])
	some m in td.of("exposure-service", exposure.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "Service/ray-public: spec.type LoadBalancer exposes port 443 (targetPort 8265)")
}

test_exposure_service_fails_on_node_port_by_port_name if {
	inp := with_docs([service("NodePort", 30000, "gcs-server")])
	count(td.of("exposure-service", exposure.deny)) == 1 with input as inp with data.support_assistant.environment as env
}

test_exposure_service_fails_on_external_head_service if {
	inp := td.patched([{"op": "add", "path": concat("", [td.head, "/serviceType"]), "value": "LoadBalancer"}])
	some m in td.of("exposure-service", exposure.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "head Service would be LoadBalancer")
}

test_exposure_service_fails_on_external_custom_head_service if {
	inp := td.patched([{"op": "add", "path": concat("", [td.head, "/headService"]), "value": {"spec": {"type": "NodePort"}}}])
	count(td.of("exposure-service", exposure.deny)) == 1 with input as inp with data.support_assistant.environment as env
}

test_exposure_service_fails_on_serve_service_with_client_port if {
	inp := td.patched([{"op": "add", "path": "/spec/serveService", "value": {"spec": {"type": "LoadBalancer", "ports": [{"name": "serve", "port": 8000}, {"name": "client", "port": 10001}]}}}])
	some m in td.of("exposure-service", exposure.deny) with input as inp with data.support_assistant.environment as env
	contains(m, "spec.serveService is LoadBalancer and lists port 10001")
}

test_exposure_service_allows_external_serve_service if {
	inp := td.patched([{"op": "add", "path": "/spec/serveService", "value": {"spec": {"type": "LoadBalancer", "ports": [{"name": "serve", "port": 8000}]}}}])
	count(td.of("exposure-service", exposure.deny)) == 0 with input as inp with data.support_assistant.environment as env
}

test_exposure_ingress_passes_for_serve_port if {
	count(td.of("exposure-ingress", exposure.deny)) == 0 with input as with_docs([ingress({"number": 8000})])
		with data.support_assistant.environment as env
}

test_exposure_ingress_fails_on_dashboard_backend if {
	some m in td.of("exposure-ingress", exposure.deny) with input as with_docs([ingress({"number": 8265})])
		with data.support_assistant.environment as env
	contains(m, "Ingress/ray: backend support-assistant-head-svc port 8265")
}

test_exposure_ingress_fails_on_named_backend if {
	count(td.of("exposure-ingress", exposure.deny)) == 1 with input as with_docs([ingress({"name": "dashboard"})])
		with data.support_assistant.environment as env
}

test_exposure_ingress_fails_on_enable_ingress if {
	inp := td.patched([{"op": "add", "path": concat("", [td.head, "/enableIngress"]), "value": true}])
	count(td.of("exposure-ingress", exposure.deny)) == 1 with input as inp with data.support_assistant.environment as env
}

test_networkpolicy_passes if {
	count(td.of("networkpolicy", exposure.deny)) == 0 with input as td.good with data.support_assistant.environment as env
}

test_networkpolicy_fails_without_any_policy if {
	msgs := td.of("networkpolicy", exposure.deny) with input as td.input_of([td.rayservice])
		with data.support_assistant.environment as env
	count(msgs) == 3 # head and both worker groups
}

test_networkpolicy_fails_when_selector_misses_the_ray_pods if {
	# KubeRay's default app.kubernetes.io/name is kuberay; the templates override it, so a policy
	# selecting "kuberay" selects nothing.
	np := json.patch(td.networkpolicy, [{"op": "replace", "path": "/spec/podSelector/matchLabels/app.kubernetes.io~1name", "value": "kuberay"}])
	count(td.of("networkpolicy", exposure.deny)) == 3 with input as td.input_of([td.rayservice, np])
		with data.support_assistant.environment as env
}

test_networkpolicy_fails_when_only_some_groups_are_selected if {
	np := json.patch(td.networkpolicy, [{"op": "add", "path": "/spec/podSelector/matchLabels/ray.io~1node-type", "value": "head"}])
	msgs := td.of("networkpolicy", exposure.deny) with input as td.input_of([td.rayservice, np])
		with data.support_assistant.environment as env
	count(msgs) == 2
}

test_networkpolicy_fails_for_egress_only_policy if {
	np := json.patch(td.networkpolicy, [{"op": "replace", "path": "/spec/policyTypes", "value": ["Egress"]}])
	count(td.of("networkpolicy", exposure.deny)) == 3 with input as td.input_of([td.rayservice, np])
		with data.support_assistant.environment as env
}

test_networkpolicy_fails_in_another_namespace if {
	np := json.patch(td.networkpolicy, [{"op": "replace", "path": "/metadata/namespace", "value": "default"}])
	count(td.of("networkpolicy", exposure.deny)) == 3 with input as td.input_of([td.rayservice, np])
		with data.support_assistant.environment as env
}

test_networkpolicy_match_expressions if {
	np := json.patch(td.networkpolicy, [{"op": "replace", "path": "/spec/podSelector", "value": {"matchExpressions": [
		{"key": "ray.io/node-type", "operator": "In", "values": ["head", "worker"]},
		{"key": "ray.io/is-ray-node", "operator": "Exists"},
		{"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["ray-worker-gpu"]},
	]}}])
	msgs := td.of("networkpolicy", exposure.deny) with input as td.input_of([td.rayservice, np])
		with data.support_assistant.environment as env
	count(msgs) == 1
	some m in msgs
	contains(m, "selects the gpu pods")
}
