# Preconditions every other package relies on: combined input, a known environment, a parseable
# serveConfigV2. Without these the other rules would pass vacuously.
package general

import data.lib.k8s
import data.lib.ray

deny contains msg if {
	not is_array(input)
	msg := "[input-combined] conftest input is a single document: run `conftest test --combine --all-namespaces` on the rendered overlay so rules can relate resources (e.g. NetworkPolicy and RayService)"
}

deny contains msg if {
	is_array(input)
	not ray.environment
	msg := sprintf("[environment] cannot tell the environment: no %s label on the rendered resources and no data.support_assistant.environment; fix: add `labels: [{pairs: {%s: <env>}}]` to overlays/<env>/kustomization.yaml (or pass --data as tools/repoctl/policy.py does)", [ray.environment_label, ray.environment_label])
}

deny contains msg if {
	count(ray.label_environments) > 1
	msg := sprintf("[environment] metadata.labels.%s has several values %v in one overlay; fix: set it once, in overlays/<env>/kustomization.yaml `labels:`", [ray.environment_label, sort(ray.label_environments)])
}

deny contains msg if {
	some e in ray.label_environments
	ray.param_environment
	e != ray.param_environment
	msg := sprintf("[environment] metadata.labels.%s is %q but this is overlays/%s; fix: correct the label in overlays/%s/kustomization.yaml (copied from another overlay?)", [ray.environment_label, e, ray.param_environment, ray.param_environment])
}

deny contains msg if {
	e := ray.environment
	not e in ray.environments
	msg := sprintf("[environment] unknown environment %q; fix: use one of %v", [e, sort(ray.environments)])
}

deny contains msg if {
	some rs in ray.rayservices
	text := ray.serve_config_text(rs)
	not serve_config_ok(text)
	msg := sprintf("[serve-config-parse] %s: spec.serveConfigV2 is empty or not a YAML mapping with applications; fix: check components/serve-config and `make serve-config`", [k8s.ref(rs)])
}

serve_config_ok(text) if {
	is_string(text)
	yaml.is_valid(text)
	cfg := yaml.unmarshal(text)
	is_object(cfg)
	count(object.get(cfg, "applications", [])) > 0
}
