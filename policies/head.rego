# The head runs GCS, the dashboard and the Serve controller; replicas there compete with them and
# die with the head.
package head

import data.lib.k8s
import data.lib.ray

deny contains msg if {
	ray.strict_env
	some rs in ray.rayservices
	g := ray.head_group(rs)
	ray.ray_cpus(g) != 0
	msg := sprintf("[head-num-cpus] %s: %s.rayStartParams.num-cpus must be \"0\" in %s (Ray would give the head %v CPUs and schedule Serve replicas there); fix: set rayStartParams num-cpus: \"0\" (and no CPU in headGroupSpec.resources)", [k8s.ref(rs), g.path, ray.environment, ray.ray_cpus(g)])
}

# A custom resource only the head offers pins the replica to the head; one nobody offers leaves
# it pending forever.
deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	some name, amount in ray.actor_resources(d)
	amount > 0
	not offered_by_a_worker(rs, name, amount)
	msg := sprintf("[head-pinned] %s: %s.ray_actor_options.resources.%s=%v is %s; fix: drop the custom resource or offer it on a worker group (rayStartParams.resources or the group's resources)", [k8s.ref(rs), d.path, name, amount, where(rs, name, amount)])
}

offered_by_a_worker(rs, name, amount) if {
	some g in ray.worker_groups(rs)
	object.get(ray.custom_resources(g), name, 0) >= amount
}

where(rs, name, amount) := "offered only by the head, so the replica is pinned to the head" if {
	object.get(ray.custom_resources(ray.head_group(rs)), name, 0) >= amount
} else := "offered by no Ray node, so the replica can never be scheduled"
