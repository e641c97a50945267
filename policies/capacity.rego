# Capacity: what the Serve deployments can ask for at their peak must fit what the Ray autoscaler
# can ever start (every group at maxReplicas). Sums are a necessary condition, not a bin packing.
package capacity

import data.lib.k8s
import data.lib.ray

gpu_sharing_annotation := "support-assistant.acme.dev/gpu-sharing"

# Peak demand: every deployment at its max replicas.
gpu_demand(rs) := sum([n | some d in ray.deployments(rs); n := ray.peak_replicas(d) * ray.num_gpus(d)])

cpu_demand(rs) := sum([n | some d in ray.deployments(rs); n := ray.peak_replicas(d) * ray.num_cpus(d)])

# GPU deployments can only run on GPU nodes, so they also need their CPUs there.
gpu_deployments_cpu_demand(rs) := sum([n |
	some d in ray.deployments(rs)
	ray.num_gpus(d) > 0
	n := ray.peak_replicas(d) * ray.num_cpus(d)
])

# Supply: the head counts too (it has num-cpus 0 where the head rule applies).
gpu_supply(rs) := sum([n | some g in ray.groups(rs); n := g.max_pods * ray.ray_gpus(g)])

cpu_supply(rs) := sum([n | some g in ray.groups(rs); n := g.max_pods * ray.ray_cpus(g)])

gpu_nodes_cpu_supply(rs) := sum([n |
	some g in ray.groups(rs)
	ray.ray_gpus(g) > 0
	n := g.max_pods * ray.ray_cpus(g)
])

deny contains msg if {
	some rs in ray.rayservices
	gpu_demand(rs) > gpu_supply(rs)
	msg := sprintf("[capacity-gpu] %s: Serve deployments need up to %v GPUs (sum of max_replicas x num_gpus: %s) but the worker groups can provide at most %v (maxReplicas x GPUs per pod); replicas past that stay pending and the app never becomes healthy; fix: raise the GPU group's maxReplicas or lower max_replicas/num_replicas in overlays/<env>/serve-overrides.yaml", [k8s.ref(rs), gpu_demand(rs), breakdown(rs, "gpu"), gpu_supply(rs)])
}

deny contains msg if {
	some rs in ray.rayservices
	cpu_demand(rs) > cpu_supply(rs)
	msg := sprintf("[capacity-cpu] %s: Serve deployments need up to %v CPUs (sum of max_replicas x num_cpus: %s) but the Ray nodes provide at most %v (maxReplicas x Ray CPUs per pod); fix: raise worker maxReplicas/CPU limits or lower max_replicas/num_replicas in overlays/<env>/serve-overrides.yaml", [k8s.ref(rs), cpu_demand(rs), breakdown(rs, "cpu"), cpu_supply(rs)])
}

deny contains msg if {
	some rs in ray.rayservices
	gpu_deployments_cpu_demand(rs) > gpu_nodes_cpu_supply(rs)
	msg := sprintf("[capacity-cpu] %s: GPU deployments need up to %v CPUs on GPU nodes but the GPU worker groups provide at most %v (maxReplicas x Ray CPUs per pod); fix: raise the GPU group's CPU limit or maxReplicas, or lower the GPU deployments' num_cpus", [k8s.ref(rs), gpu_deployments_cpu_demand(rs), gpu_nodes_cpu_supply(rs)])
}

# One replica's CPUs must fit one Ray node that also has its GPUs (too few GPUs is gpu-fit's finding).
deny contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	candidates := [g | some g in ray.groups(rs); ray.ray_gpus(g) >= ray.num_gpus(d)]
	count(candidates) > 0
	not cpus_fit(candidates, ray.num_cpus(d))
	msg := sprintf("[capacity-cpu] %s: %s.ray_actor_options.num_cpus=%v fits no single Ray node with %v GPUs (most CPUs per pod: %v); fix: lower num_cpus or raise that worker group's CPU limit", [k8s.ref(rs), d.path, ray.num_cpus(d), ray.num_gpus(d), max([ray.ray_cpus(g) | some g in candidates])])
}

cpus_fit(candidates, need) if {
	some g in candidates
	ray.ray_cpus(g) >= need
}

# Fractional GPUs share one device's memory with nothing enforcing the split (Ray only counts),
# so a model that outgrows its share OOMs its neighbour. Someone must have checked the sum.
warn contains msg if {
	some rs in ray.rayservices
	some d in ray.deployments(rs)
	g := ray.num_gpus(d)
	g > 0
	g < 1
	object.get(rs, ["metadata", "annotations", gpu_sharing_annotation], "") != "reviewed"
	msg := sprintf("[gpu-sharing] %s: %s.ray_actor_options.num_gpus=%v shares a GPU with other replicas without memory isolation; fix: check the models' combined GPU memory fits one device, then annotate the RayService %s: \"reviewed\" (see docs/policies.md)", [k8s.ref(rs), d.path, g, gpu_sharing_annotation])
}

breakdown(rs, "gpu") := concat(", ", [sprintf("%s %vx%v", [d.name, ray.peak_replicas(d), ray.num_gpus(d)]) |
	some d in ray.deployments(rs)
	ray.num_gpus(d) > 0
])

breakdown(rs, "cpu") := concat(", ", [sprintf("%s %vx%v", [d.name, ray.peak_replicas(d), ray.num_cpus(d)]) |
	some d in ray.deployments(rs)
])
