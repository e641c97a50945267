# GPU agreement between the Serve deployments, the Ray node groups and the Kubernetes pods.
package gpu

import data.lib.k8s
import data.lib.ray

# gpu-fit: a replica needs all its GPUs on one node, so some worker pod must have at least that many.
deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	need := ray.num_gpus(d)
	need > 0
	not fits_a_worker(rs, need)
	msg := sprintf("[gpu-fit] %s: %s.ray_actor_options.num_gpus=%v but no worker group has that many GPUs per pod (largest: %v); the replica would stay PENDING_CREATION; fix: lower num_gpus or give a worker group nvidia.com/gpu >= %v", [k8s.ref(rs), d.path, need, largest_worker_gpus(rs), need])
}

fits_a_worker(rs, need) if {
	some g in ray.worker_groups(rs)
	ray.ray_gpus(g) >= need
}

largest_worker_gpus(rs) := max(array.concat([0], [ray.ray_gpus(g) | some g in ray.worker_groups(rs)]))

# gpu-limit-request: the device plugin hands out whole devices, and Kubernetes rejects extended
# resources whose request differs from the limit; a request without a limit is the same mistake.
deny contains msg if {
	some rs in ray.rayservices
	some g in ray.groups(rs)
	some entry in k8s.containers(ray.template_spec(g))
	c := entry.c
	some key in gpu_keys(c)
	req := object.get(c, ["resources", "requests", key], "<unset>")
	lim := object.get(c, ["resources", "limits", key], "<unset>")
	not same_quantity(req, lim)
	msg := sprintf("[gpu-limit-request] %s: %s.template.spec.%s[%s].resources %s request %v != limit %v; fix: set requests.%s equal to limits.%s", [k8s.ref(rs), g.path, entry.kind, c.name, key, req, lim, key, key])
}

gpu_keys(c) := {k |
	some part in ["requests", "limits"]
	some k, _ in object.get(c, ["resources", part], {})
	k8s.is_gpu_key(k)
}

same_quantity(a, b) if k8s.quantity(a) == k8s.quantity(b)

# gpu-start-params: Ray schedules by num-gpus, Kubernetes by the limit; if they differ Ray either
# places replicas on GPUs the pod does not have or leaves paid-for GPUs idle.
deny contains msg if {
	some rs in ray.rayservices
	some g in ray.groups(rs)
	declared := ray.start_params(g)["num-gpus"]
	pod_gpus := k8s.gpu_count(ray.limits(g))
	to_number(declared) != pod_gpus
	msg := sprintf("[gpu-start-params] %s: %s.rayStartParams.num-gpus=%q but the Ray container's nvidia.com/gpu limit is %v; fix: make them equal (or drop num-gpus: KubeRay derives it from the limit)", [k8s.ref(rs), g.path, declared, pod_gpus])
}

deny contains msg if {
	some rs in ray.rayservices
	some g in ray.groups(rs)
	declared := ray.group_gpu_resource(g)
	pod_gpus := k8s.gpu_count(ray.limits(g))
	declared != pod_gpus
	msg := sprintf("[gpu-start-params] %s: %s.resources GPU=%v but the Ray container's nvidia.com/gpu limit is %v; fix: make them equal", [k8s.ref(rs), g.path, declared, pod_gpus])
}
