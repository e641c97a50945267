# What the rules read out of one rendered overlay: the documents, the environment, each RayService's
# Ray node groups with the Ray resources KubeRay gives their pods, and the Serve deployments of its
# serveConfigV2. Run conftest with --combine: input is then [{path, contents}] with one entry per
# YAML document, which rules that relate several resources (NetworkPolicy vs RayService) need.
package lib.ray

import data.lib.k8s

docs contains doc if {
	is_array(input)
	some entry in input
	doc := entry.contents
	is_object(doc)
}

rayservices contains doc if {
	some doc in docs
	doc.kind == "RayService"
}

# ---------------------------------------------------------------------------------------------
# Environment: the overlay's label, cross-checked with what the caller says it rendered
# (run_conftest passes --data with {"support_assistant": {"environment": ENV}}).
environment_label := "app.kubernetes.io/environment"

environments := {"dev", "staging", "prod"}

label_environments contains v if {
	some doc in docs
	v := k8s.labels(doc)[environment_label]
}

param_environment := data.support_assistant.environment

environment := e if {
	count(label_environments) == 1
	some e in label_environments
} else := param_environment

is_env(e) if environment == e

strict_env if environment in {"staging", "prod"}

# ---------------------------------------------------------------------------------------------
# Ray node groups. KubeRay's Ray resources for a pod (ray-operator controllers/ray/common/pod.go):
# the group's `resources` map wins, then rayStartParams, then the Ray container's (index 0) limits.
head_group(rs) := {
	"kind": "head",
	"name": "headgroup",
	"path": "spec.rayClusterConfig.headGroupSpec",
	"spec": rs.spec.rayClusterConfig.headGroupSpec,
	"max_pods": 1,
}

worker_groups(rs) := [g |
	some i, w in object.get(rs.spec.rayClusterConfig, "workerGroupSpecs", [])
	g := {
		"kind": "worker",
		"name": object.get(w, "groupName", sprintf("#%d", [i])),
		"path": sprintf("spec.rayClusterConfig.workerGroupSpecs[%d]", [i]),
		"spec": w,
		# maxReplicas counts replicas of numOfHosts pods each (multi-host groups).
		"max_pods": object.get(w, "maxReplicas", 2147483647) * object.get(w, "numOfHosts", 1),
	}
]

groups(rs) := array.concat([head_group(rs)], worker_groups(rs))

template_spec(group) := object.get(group.spec, ["template", "spec"], {})

ray_container(group) := template_spec(group).containers[0]

start_params(group) := object.get(group.spec, "rayStartParams", {})

limits(group) := object.get(ray_container(group), ["resources", "limits"], {})

requests(group) := object.get(ray_container(group), ["resources", "requests"], {})

# The group's `resources` map entry for cpu/memory/a GPU key, case-insensitive and rounded up to a
# whole number like KubeRay (updateRayStartParamsResources uses Quantity.Value()).
group_resource(group, name) := ceil(k8s.quantity(v)) if {
	some k, v in object.get(group.spec, "resources", {})
	lower(k) == name
}

group_gpu_resource(group) := ceil(k8s.quantity(v)) if {
	some k, v in object.get(group.spec, "resources", {})
	k8s.is_gpu_key(k)
}

ray_cpus(group) := group_resource(group, "cpu") if {
	group_resource(group, "cpu")
} else := to_number(start_params(group)["num-cpus"]) if {
	start_params(group)["num-cpus"]
} else := ceil(k8s.quantity(limits(group).cpu)) if {
	limits(group).cpu
} else := ceil(k8s.quantity(requests(group).cpu)) if {
	requests(group).cpu
} else := 0

ray_gpus(group) := group_gpu_resource(group) if {
	group_gpu_resource(group)
} else := to_number(start_params(group)["num-gpus"]) if {
	start_params(group)["num-gpus"]
} else := k8s.gpu_count(limits(group))

# Custom Ray resources: the group's `resources` map (other keys) and rayStartParams.resources, a
# JSON object written as a string, often wrapped in quotes: '"{\"head_only\": 1}"'.
custom_resources(group) := object.union(start_param_resources(group), group_custom_resources(group))

group_custom_resources(group) := {k: k8s.quantity(v) |
	some k, v in object.get(group.spec, "resources", {})
	not lower(k) in {"cpu", "memory"}
	not k8s.is_gpu_key(k)
}

start_param_resources(group) := json.unmarshal(s) if {
	s := unquote(start_params(group).resources)
	json.is_valid(s)
} else := {}

unquote(s) := replace(trim(s, "'\" "), "\\\"", "\"")

# ---------------------------------------------------------------------------------------------
# Serve deployments of a RayService's serveConfigV2 (a YAML string).
serve_config_text(rs) := object.get(rs.spec, "serveConfigV2", "")

serve_config(rs) := cfg if {
	text := serve_config_text(rs)
	is_string(text)
	yaml.is_valid(text)
	cfg := yaml.unmarshal(text)
	is_object(cfg)
} else := {}

deployments(rs) := [d |
	some app in object.get(serve_config(rs), "applications", [])
	some dep in object.get(app, "deployments", [])
	d := {
		"app": object.get(app, "name", "default"),
		"name": dep.name,
		"spec": dep,
		"path": sprintf("spec.serveConfigV2 applications[%s].deployments[%s]", [object.get(app, "name", "default"), dep.name]),
	}
]

actor_option(d, key, default_value) := v if {
	v := d.spec.ray_actor_options[key]
	v != null
} else := default_value

num_gpus(d) := actor_option(d, "num_gpus", 0)

# Serve gives a replica one CPU when num_cpus is unset (ray/serve/_private/config.py ReplicaConfig).
num_cpus(d) := actor_option(d, "num_cpus", 1)

actor_resources(d) := actor_option(d, "resources", {})

autoscaling(d) := d.spec.autoscaling_config if is_object(d.spec.autoscaling_config)

# The most replicas a deployment can run: autoscaling max_replicas (AutoscalingConfig default 1,
# or 100 with num_replicas: auto, AutoscalingConfig.default()), else num_replicas, else 1.
peak_replicas(d) := object.get(autoscaling(d), "max_replicas", auto_default_max(d)) if {
	autoscaling(d)
} else := 100 if {
	d.spec.num_replicas == "auto"
} else := d.spec.num_replicas if {
	is_number(d.spec.num_replicas)
} else := 1

auto_default_max(d) := 100 if {
	d.spec.num_replicas == "auto"
} else := 1

# ---------------------------------------------------------------------------------------------
# Images: every container image in the overlay, and whether it runs Ray (the Ray container of a
# group, index 0 as in KubeRay, or the autoscaler sidecar, which uses the head image unless set).
images contains {"doc": rs, "where": sprintf("%s.template.spec.%s[%s].image", [g.path, e.kind, e.c.name]), "image": e.c.image, "ray": is_ray} if {
	some rs in rayservices
	some g in groups(rs)
	some i, e in k8s.containers(template_spec(g))
	is_ray := i == 0
}

images contains {"doc": rs, "where": "spec.rayClusterConfig.autoscalerOptions.image", "image": img, "ray": true} if {
	some rs in rayservices
	img := rs.spec.rayClusterConfig.autoscalerOptions.image
}

images contains {"doc": w.doc, "where": sprintf("%s.%s[%s].image", [w.where, e.kind, e.c.name]), "image": e.c.image, "ray": false} if {
	some w in k8s.workload_pod_specs
	some e in k8s.containers(w.spec)
}

# "ghcr.io/x/y:0.1.0-ray2.60.0@sha256:..." -> name, tag ("" if none), digest ("" if none).
# The tag is after the last ":" of the last path segment, so a registry port is not a tag.
image_parts(img) := {"name": name, "tag": tag, "digest": digest} if {
	at := split(img, "@")
	digest := nth_or_empty(at, 1)
	segments := split(at[0], "/")
	last := segments[count(segments) - 1]
	colon := split(last, ":")
	tag := nth_or_empty(colon, 1)
	name := concat("/", array.concat(array.slice(segments, 0, count(segments) - 1), [colon[0]]))
}

# The Ray version an image carries: "<app>-ray2.60.0" tags (this repo's convention), or the leading
# version of upstream rayproject/ray* tags ("2.60.0-py311-gpu").
image_ray_version(img) := m[0][2] if {
	m := regex.find_all_string_submatch_n(`(^|-)ray([0-9]+\.[0-9]+\.[0-9]+)`, image_parts(img).tag, 1)
	count(m) == 1
} else := m[0][1] if {
	regex.match(`(^|/)rayproject/ray(-ml|-llm)?$`, image_parts(img).name)
	m := regex.find_all_string_submatch_n(`^([0-9]+\.[0-9]+\.[0-9]+)`, image_parts(img).tag, 1)
	count(m) == 1
}

nth_or_empty(arr, i) := arr[i] if {
	count(arr) > i
} else := ""
