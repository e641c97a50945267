# What the KubeRay operator itself refuses. The API server and kubeconform accept these RayServices (the
# CRD has no rule for them); the operator validates every RayService before reconciling it and, when the
# validation fails, writes Ready=False/ValidationFailed and never creates a cluster (ray-operator v1.6
# controllers/ray/utils/validation.go). tests/cluster shows the real operator doing so.
package operator

import data.lib.k8s
import data.lib.ray

timeout_annotation := "ray.io/initializing-timeout"

# validateInitializingTimeout: a positive Go duration ("15m", "1h30m") or a positive integer of seconds.
deny contains msg if {
	some rs in ray.rayservices
	value := object.get(rs, ["metadata", "annotations", timeout_annotation], "")
	value != ""
	not timeout_ok(value)
	msg := sprintf("[initializing-timeout] %s: metadata.annotations[%s] is %v, which KubeRay refuses (not a positive Go duration like 15m, nor a positive number of seconds): the RayService ends Ready=False/ValidationFailed and is never reconciled; fix: write a duration such as \"15m\"", [k8s.ref(rs), timeout_annotation, json.marshal(value)])
}

timeout_ok(value) if {
	is_string(value)
	# what time.ParseDuration parses (checked first: the builtin raises on anything else)
	regex.match(`^[+-]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`, value)
	time.parse_duration_ns(value) > 0
}

timeout_ok(value) if {
	is_string(value)
	regex.match(`^[+-]?[0-9]+$`, value)
	to_number(value) > 0
}
