# Test inputs for the policy unit tests: a compact RayService shaped like the real one that passes
# every rule in every environment, and helpers to break one thing at a time.
package lib.testdata

image := "ghcr.io/acme-platform/support-assistant:0.1.0-ray2.60.0@sha256:1111111111111111111111111111111111111111111111111111111111111111"

container_security := {
	"allowPrivilegeEscalation": false,
	"capabilities": {"drop": ["ALL"]},
}

pod_security := {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}

pod_labels(component) := {"app.kubernetes.io/name": "support-assistant", "app.kubernetes.io/component": component}

serve_config := {
	"proxy_location": "EveryNode",
	"http_options": {"host": "0.0.0.0", "port": 8000},
	"applications": [{
		"name": "support-assistant",
		"route_prefix": "/",
		"import_path": "support_assistant.serve_app:build_app",
		"deployments": [
			{
				"name": "Ingress",
				"max_ongoing_requests": 64,
				"autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
				"ray_actor_options": {"num_cpus": 0.5},
			},
			{
				"name": "Reranker",
				"max_ongoing_requests": 16,
				"autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
				"ray_actor_options": {"num_cpus": 1, "num_gpus": 0.5},
			},
			{
				"name": "Generator",
				"max_ongoing_requests": 8,
				"autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 4},
				"ray_actor_options": {"num_cpus": 1, "num_gpus": 1},
			},
		],
	}],
}

ray_container(name, ports, resources) := {
	"name": name,
	"image": image,
	"ports": ports,
	"resources": resources,
	"securityContext": container_security,
}

rayservice := {
	"apiVersion": "ray.io/v1",
	"kind": "RayService",
	"metadata": {
		"name": "support-assistant",
		"namespace": "support-assistant",
		"annotations": {"support-assistant.acme.dev/gpu-sharing": "reviewed"},
	},
	"spec": {
		"serveConfigV2": yaml.marshal(serve_config),
		"upgradeStrategy": {"type": "NewCluster"},
		"rayClusterConfig": {
			"rayVersion": "2.60.0",
			"enableInTreeAutoscaling": true,
			"gcsFaultToleranceOptions": {"redisAddress": "redis:6379"},
			"autoscalerOptions": {
				"resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
				"securityContext": object.union(container_security, {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}),
			},
			"headGroupSpec": {
				"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
				"template": {
					"metadata": {"labels": pod_labels("ray-head")},
					"spec": {
						"securityContext": pod_security,
						"containers": [ray_container(
							"ray-head",
							[
								{"name": "gcs-server", "containerPort": 6379},
								{"name": "dashboard", "containerPort": 8265},
								{"name": "client", "containerPort": 10001},
								{"name": "serve", "containerPort": 8000},
							],
							{"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}},
						)],
					},
				},
			},
			"workerGroupSpecs": [
				{
					"groupName": "cpu",
					"minReplicas": 1,
					"maxReplicas": 2,
					"rayStartParams": {},
					"template": {
						"metadata": {"labels": pod_labels("ray-worker-cpu")},
						"spec": {
							"securityContext": pod_security,
							"containers": [ray_container(
								"ray-worker",
								[{"name": "serve", "containerPort": 8000}],
								{"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
							)],
						},
					},
				},
				{
					"groupName": "gpu",
					"minReplicas": 1,
					"maxReplicas": 2,
					"rayStartParams": {"num-gpus": "1"},
					"template": {
						"metadata": {"labels": pod_labels("ray-worker-gpu")},
						"spec": {
							"securityContext": pod_security,
							"containers": [ray_container(
								"ray-worker",
								[{"name": "serve", "containerPort": 8000}],
								{
									"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
									"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
								},
							)],
						},
					},
				},
			],
		},
	},
}

networkpolicy := {
	"apiVersion": "networking.k8s.io/v1",
	"kind": "NetworkPolicy",
	"metadata": {"name": "support-assistant-ray", "namespace": "support-assistant"},
	"spec": {
		"podSelector": {"matchLabels": {"app.kubernetes.io/name": "support-assistant", "ray.io/is-ray-node": "yes"}},
		"policyTypes": ["Ingress"],
		"ingress": [{"ports": [{"port": 8000, "protocol": "TCP"}]}],
	},
}

# conftest --combine input: one entry per YAML document.
input_of(docs) := [{"path": "rendered.yaml", "contents": d} | some d in docs]

good := input_of([rayservice, networkpolicy])

# The RayService with JSON-patch ops applied, in an input with the NetworkPolicy.
patched(ops) := input_of([json.patch(rayservice, ops), networkpolicy])

# The RayService with JSON-patch ops applied to its (parsed) serveConfigV2.
serve_patched(ops) := patched([{
	"op": "replace",
	"path": "/spec/serveConfigV2",
	"value": yaml.marshal(json.patch(serve_config, ops)),
}])

# Paths into the serve config's deployments, by position in serve_config above.
ingress := "/applications/0/deployments/0"

reranker := "/applications/0/deployments/1"

generator := "/applications/0/deployments/2"

head := "/spec/rayClusterConfig/headGroupSpec"

cpu_group := "/spec/rayClusterConfig/workerGroupSpecs/0"

gpu_group := "/spec/rayClusterConfig/workerGroupSpecs/1"

# The findings of one rule (its "[id]" prefix) in a set of messages.
of(id, msgs) := {m | some m in msgs; startswith(m, sprintf("[%s]", [id]))}
