# Pod security: the namespace enforces Pod Security "restricted", so a pod missing any of these is
# rejected at creation; KubeRay then retries forever and the RayService never becomes ready.
# Resources: without requests the scheduler overpacks nodes; without limits one replica can
# starve the raylet on its node.
package podsecurity

import data.lib.k8s
import data.lib.ray

# Every pod template in the overlay, with what its containers run as.
pods contains {"doc": rs, "where": sprintf("%s.template.spec", [g.path]), "spec": ray.template_spec(g)} if {
	some rs in ray.rayservices
	some g in ray.groups(rs)
}

pods contains w if some w in k8s.workload_pod_specs

containers contains {"doc": p.doc, "where": sprintf("%s.%s[%s]", [p.where, e.kind, e.c.name]), "c": e.c, "pod": p.spec} if {
	some p in pods
	some e in k8s.containers(p.spec)
}

# The autoscaler is a sidecar KubeRay adds to the head pod from autoscalerOptions.
containers contains {"doc": rs, "where": "spec.rayClusterConfig.autoscalerOptions", "c": c, "pod": ray.template_spec(ray.head_group(rs))} if {
	some rs in ray.rayservices
	rs.spec.rayClusterConfig.enableInTreeAutoscaling == true
	opts := object.get(rs.spec.rayClusterConfig, "autoscalerOptions", {})
	c := {"resources": object.get(opts, "resources", {}), "securityContext": object.get(opts, "securityContext", {})}
}

deny contains msg if {
	some x in containers
	some part in ["requests", "limits"]
	some res in ["cpu", "memory"]
	not x.c.resources[part][res]
	msg := sprintf("[pod-resources] %s: %s.resources.%s.%s is not set; fix: set %s %s (requests for scheduling, limits so one replica cannot starve the node)", [k8s.ref(x.doc), x.where, part, res, part, res])
}

# Container settings override the pod's, as in Kubernetes.
effective(x, key) := x.c.securityContext[key] if {
	key in object.keys(object.get(x.c, "securityContext", {}))
} else := x.pod.securityContext[key]

# Predicates rather than `not effective(...) == true`: a negated comparison with an undefined
# call is false in Rego, which would let a missing field pass.
non_root(x) if effective(x, "runAsNonRoot") == true

confined(x) if effective(x, "seccompProfile").type in {"RuntimeDefault", "Localhost"}

deny contains msg if {
	some x in containers
	not non_root(x)
	msg := sprintf("[pod-security-context] %s: %s: runAsNonRoot is not true (container or pod securityContext); fix: set securityContext.runAsNonRoot: true", [k8s.ref(x.doc), x.where])
}

deny contains msg if {
	some x in containers
	not x.c.securityContext.allowPrivilegeEscalation == false
	msg := sprintf("[pod-security-context] %s: %s.securityContext.allowPrivilegeEscalation is not false; fix: set allowPrivilegeEscalation: false", [k8s.ref(x.doc), x.where])
}

deny contains msg if {
	some x in containers
	not "ALL" in object.get(x.c, ["securityContext", "capabilities", "drop"], [])
	msg := sprintf("[pod-security-context] %s: %s.securityContext.capabilities.drop does not contain ALL; fix: set capabilities: {drop: [ALL]}", [k8s.ref(x.doc), x.where])
}

deny contains msg if {
	some x in containers
	not confined(x)
	msg := sprintf("[pod-security-context] %s: %s: seccompProfile.type is not RuntimeDefault (container or pod securityContext); fix: set securityContext.seccompProfile: {type: RuntimeDefault}", [k8s.ref(x.doc), x.where])
}
