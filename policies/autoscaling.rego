# Serve autoscaling sanity and fields that Ray Serve 2.60 / KubeRay v1.6.2 no longer honour.
package autoscaling

import data.lib.k8s
import data.lib.ray

# Serve rejects these at deploy time (AutoscalingConfig.replicas_settings_valid), which leaves the
# RayService stuck unhealthy after Argo CD already reported the sync as successful.
deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	ac := ray.autoscaling(d)
	lo := object.get(ac, "min_replicas", 1)
	hi := object.get(ac, "max_replicas", 1)
	init := object.get(ac, "initial_replicas", lo)
	not ordered(lo, init, hi)
	msg := sprintf("[autoscaling-bounds] %s: %s.autoscaling_config needs min_replicas <= initial_replicas <= max_replicas, got %v <= %v <= %v; fix: correct overlays/<env>/serve-overrides.yaml and run make serve-config", [k8s.ref(rs), d.path, lo, init, hi])
}

ordered(lo, init, hi) if {
	lo <= init
	init <= hi
}

deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	ray.autoscaling(d)
	is_number(d.spec.num_replicas)
	msg := sprintf("[autoscaling-bounds] %s: %s sets both num_replicas (%v) and autoscaling_config, which Serve rejects; fix: drop num_replicas (or set it to auto)", [k8s.ref(rs), d.path, d.spec.num_replicas])
}

# A target above what one replica may hold can never be reached, so the autoscaler never scales up.
deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	target := ray.autoscaling(d).target_ongoing_requests
	limit := d.spec.max_ongoing_requests
	target > limit
	msg := sprintf("[autoscaling-target] %s: %s.autoscaling_config.target_ongoing_requests=%v exceeds max_ongoing_requests=%v, so replicas saturate before the autoscaler adds any; fix: keep target_ongoing_requests <= max_ongoing_requests", [k8s.ref(rs), d.path, target, limit])
}

# Ray Serve 2.60 ignores unknown keys in these schemas (no extra="forbid"), so removed fields
# are dropped silently; deprecated ones are on their way out (ray/serve/config.py, schema.py).
removed_deployment_fields := {
	"max_concurrent_queries": "max_ongoing_requests",
	"route_prefix": "the application's route_prefix",
}

deprecated_autoscaling_fields := {
	"target_num_ongoing_requests_per_replica": "target_ongoing_requests",
	"metrics_interval_s": "the RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S env vars",
	"smoothing_factor": "upscaling_factor/downscaling_factor",
	"upscale_smoothing_factor": "upscaling_factor",
	"downscale_smoothing_factor": "downscaling_factor",
}

deprecated_http_fields := {
	"location": "the top-level proxy_location",
	"middlewares": "FastAPI middleware on the ingress deployment",
	"num_cpus": "nothing (proxies reserve no CPU)",
}

deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	some field, instead in removed_deployment_fields
	field in object.keys(d.spec)
	msg := sprintf("[serve-deprecated] %s: %s.%s is not a Ray Serve 2.60 deployment option and is silently ignored; fix: use %s", [k8s.ref(rs), d.path, field, instead])
}

deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	some field, instead in deprecated_autoscaling_fields
	field in object.keys(ray.autoscaling(d))
	msg := sprintf("[serve-deprecated] %s: %s.autoscaling_config.%s is deprecated or removed in Ray Serve 2.60; fix: use %s", [k8s.ref(rs), d.path, field, instead])
}

deny contains msg if {
	some rs in ray.rayservices
	some field, instead in deprecated_http_fields
	field in object.keys(object.get(ray.serve_config(rs), "http_options", {}))
	msg := sprintf("[serve-deprecated] %s: spec.serveConfigV2 http_options.%s is deprecated in Ray Serve 2.60 and ignored in a Serve config; fix: use %s", [k8s.ref(rs), field, instead])
}

# Marked Deprecated in KubeRay v1.6.2 apis/ray/v1/rayservice_types.go (kuberay #1685): setting them
# suggests health-based failover that KubeRay no longer does.
deprecated_rayservice_fields := {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}

deny contains msg if {
	some rs in ray.rayservices
	some field in deprecated_rayservice_fields
	field in object.keys(rs.spec)
	msg := sprintf("[rayservice-deprecated] %s: spec.%s is deprecated and unused by KubeRay (kuberay #1685); nothing restarts an unhealthy cluster because of it; fix: remove it (use the ray.io/initializing-timeout annotation and alerts instead)", [k8s.ref(rs), field])
}
