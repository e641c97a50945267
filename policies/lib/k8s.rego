# Kubernetes helpers shared by the policy packages: quantities, pod templates, label selectors.
package lib.k8s

# A resource quantity ("500m", "4", 4, "16Gi") as a number; YAML may give either type.
quantity(q) := q if is_number(q)

quantity(q) := units.parse(q) if {
	is_string(q)
	regex.match(`^[+-]?[0-9.]+([eE][+-]?[0-9]+)?[a-zA-Z]*$`, q)
}

# "Kind/name" for messages, so every finding names the resource it is about.
ref(doc) := sprintf("%s/%s", [doc.kind, object.get(doc, ["metadata", "name"], "<unnamed>")])

namespace(doc) := object.get(doc, ["metadata", "namespace"], "default")

labels(doc) := object.get(doc, ["metadata", "labels"], {})

# Extended resources like nvidia.com/gpu or amd.com/gpu: KubeRay treats any key ending in "gpu"
# as a GPU (ray-operator controllers/ray/utils/resources.go IsGPUResourceKey).
is_gpu_key(key) if endswith(lower(key), "gpu")

gpu_count(resource_list) := sum([quantity(v) | some k, v in resource_list; is_gpu_key(k)])

# Every container of a pod spec, with where it sits, for messages.
containers(pod_spec) := array.concat(
	[{"kind": "containers", "c": c} | some c in object.get(pod_spec, "containers", [])],
	[{"kind": "initContainers", "c": c} | some c in object.get(pod_spec, "initContainers", [])],
)

# Plain Kubernetes workloads and where their pod template is; Ray pods come from lib.ray.
workload_pod_specs contains {"doc": doc, "where": "spec.template.spec", "spec": doc.spec.template.spec} if {
	some doc in data.lib.ray.docs
	doc.kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
}

workload_pod_specs contains {"doc": doc, "where": "spec.jobTemplate.spec.template.spec", "spec": s} if {
	some doc in data.lib.ray.docs
	doc.kind == "CronJob"
	s := doc.spec.jobTemplate.spec.template.spec
}

workload_pod_specs contains {"doc": doc, "where": "spec", "spec": doc.spec} if {
	some doc in data.lib.ray.docs
	doc.kind == "Pod"
}

# metav1.LabelSelector semantics (an empty selector matches every pod).
selector_matches(selector, pod_labels) if {
	every k, v in object.get(selector, "matchLabels", {}) {
		pod_labels[k] == v
	}
	every e in object.get(selector, "matchExpressions", []) {
		expression_matches(e, pod_labels)
	}
}

expression_matches(e, pod_labels) if {
	e.operator == "In"
	pod_labels[e.key] in e.values
}

expression_matches(e, pod_labels) if {
	e.operator == "NotIn"
	not pod_labels[e.key] in e.values
}

expression_matches(e, pod_labels) if {
	e.operator == "Exists"
	pod_labels[e.key]
}

expression_matches(e, pod_labels) if {
	e.operator == "DoesNotExist"
	not pod_labels[e.key]
}
