# Exposure: the Ray dashboard (8265) accepts job submissions, i.e. remote code execution, and GCS
# (6379) and the Ray client (10001) give full cluster control. Only Serve (8000) may leave the cluster.
package exposure

import data.lib.k8s
import data.lib.ray

sensitive_ports := {8265, 6379, 10001}

# KubeRay's port names (controllers/ray/utils/constant.go) plus whatever the templates call them.
sensitive_port_names contains name if some name in {"dashboard", "gcs-server", "client"}

sensitive_port_names contains p.name if {
	some rs in ray.rayservices
	some g in ray.groups(rs)
	some c in object.get(ray.template_spec(g), "containers", [])
	some p in object.get(c, "ports", [])
	p.containerPort in sensitive_ports
}

external_types := {"LoadBalancer", "NodePort"}

sensitive(port) if port.port in sensitive_ports

sensitive(port) if port.targetPort in sensitive_ports

sensitive(port) if port.targetPort in sensitive_port_names

sensitive(port) if port.name in sensitive_port_names

deny contains msg if {
	some doc in ray.docs
	doc.kind == "Service"
	doc.spec.type in external_types
	some port in object.get(doc.spec, "ports", [])
	sensitive(port)
	msg := sprintf("[exposure-service] %s: spec.type %s exposes port %v (targetPort %v); the Ray dashboard/GCS/client must stay cluster-internal; fix: expose only the Serve port 8000, or use ClusterIP and kubectl port-forward", [k8s.ref(doc), doc.spec.type, port.port, object.get(port, "targetPort", port.port)])
}

deny contains msg if {
	some rs in ray.rayservices
	svc := rs.spec.serveService
	object.get(svc, ["spec", "type"], "ClusterIP") in external_types
	some port in object.get(svc.spec, "ports", [])
	sensitive(port)
	msg := sprintf("[exposure-service] %s: spec.serveService is %s and lists port %v; fix: list only the Serve port 8000", [k8s.ref(rs), svc.spec.type, port.port])
}

# KubeRay appends the GCS, dashboard and client ports to every head Service, including a custom
# headService (controllers/ray/common/service.go BuildServiceForHeadPod), so any external type leaks them.
deny contains msg if {
	some rs in ray.rayservices
	head := rs.spec.rayClusterConfig.headGroupSpec
	t := head_service_type(head)
	t in external_types
	msg := sprintf("[exposure-service] %s: the head Service would be %s (spec.rayClusterConfig.headGroupSpec.serviceType / headService.spec.type), and KubeRay always puts ports 6379, 8265 and 10001 on it; fix: leave it ClusterIP and expose Serve through spec.serveService or an Ingress to port 8000", [k8s.ref(rs), t])
}

head_service_type(head) := head.headService.spec.type if {
	head.headService.spec.type
} else := object.get(head, "serviceType", "ClusterIP")

deny contains msg if {
	some doc in ray.docs
	doc.kind == "Ingress"
	some backend in ingress_backends(doc)
	sensitive_backend(backend.service.port)
	msg := sprintf("[exposure-ingress] %s: backend %s port %v is a Ray control port; fix: route only to the Serve port 8000", [k8s.ref(doc), backend.service.name, object.get(backend.service.port, "number", object.get(backend.service.port, "name", "?"))])
}

sensitive_backend(port) if port.number in sensitive_ports

sensitive_backend(port) if port.name in sensitive_port_names

ingress_backends(doc) := array.concat(
	[doc.spec.defaultBackend | doc.spec.defaultBackend.service],
	[p.backend |
		some rule in object.get(doc.spec, "rules", [])
		some p in object.get(rule, ["http", "paths"], [])
		p.backend.service
	],
)

# enableIngress makes KubeRay create an Ingress to the dashboard port.
deny contains msg if {
	some rs in ray.rayservices
	rs.spec.rayClusterConfig.headGroupSpec.enableIngress == true
	msg := sprintf("[exposure-ingress] %s: spec.rayClusterConfig.headGroupSpec.enableIngress is true, which makes KubeRay publish the dashboard (8265); fix: remove it and use kubectl port-forward", [k8s.ref(rs)])
}

# ---------------------------------------------------------------------------------------------
# Every Ray pod must be selected by an Ingress NetworkPolicy; otherwise any pod in the cluster
# reaches the dashboard and GCS. Pod labels as KubeRay sets them (common/pod.go labelPod): its
# defaults, overridden by the template's and the group's labels, except node-type/group/cluster.
# ray.io/cluster is the generated RayCluster name, unknown here, so a selector on it never matches.
pod_labels(rs, g) := object.union(
	object.union(
		{"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"},
		object.union(object.get(g.spec, ["template", "metadata", "labels"], {}), object.get(g.spec, "labels", {})),
	),
	{
		"ray.io/is-ray-node": "yes",
		"ray.io/node-type": g.kind,
		"ray.io/group": g.name,
		"ray.io/cluster": sprintf("%s-<generated>", [rs.metadata.name]),
	},
)

ingress_policies contains np if {
	some np in ray.docs
	np.kind == "NetworkPolicy"
	restricts_ingress(np)
}

restricts_ingress(np) if "Ingress" in np.spec.policyTypes

restricts_ingress(np) if not np.spec.policyTypes

selected(rs, g) if {
	some np in ingress_policies
	k8s.namespace(np) == k8s.namespace(rs)
	k8s.selector_matches(object.get(np.spec, "podSelector", {}), pod_labels(rs, g))
}

deny contains msg if {
	some rs in ray.rayservices
	some g in ray.groups(rs)
	not selected(rs, g)
	msg := sprintf("[networkpolicy] %s: no Ingress NetworkPolicy in namespace %s selects the %s pods (%s, labels %v); the dashboard and GCS are open to every pod in the cluster; fix: a NetworkPolicy whose podSelector matches app.kubernetes.io/name: support-assistant and ray.io/is-ray-node: \"yes\" (base/support-assistant/networkpolicy.yaml)", [k8s.ref(rs), k8s.namespace(rs), g.name, g.path, pod_labels(rs, g)])
}
