package general_test

import data.lib.testdata as td

packages := ["general", "gpu", "capacity", "head", "versions", "autoscaling", "podsecurity", "exposure", "resilience"]

all_denies := {m | some pkg in packages; some m in data[pkg].deny}

all_warns := {m | some pkg in packages; some m in data[pkg].warn}

# The test RayService is clean in every environment, so each failing test below breaks one rule.
test_good_input_passes_every_rule_in_every_environment if {
	every env in ["dev", "staging", "prod"] {
		count(all_denies) == 0 with input as td.good with data.support_assistant.environment as env
		count(all_warns) == 0 with input as td.good with data.support_assistant.environment as env
	}
}

# Guards the test above: the package list must reach the rules.
test_all_denies_sees_every_package if {
	broken := td.patched([{"op": "remove", "path": "/spec/upgradeStrategy"}])
	count(all_denies) > 0 with input as broken with data.support_assistant.environment as "dev"
	every pkg in packages {
		is_set(data[pkg].deny) with input as broken with data.support_assistant.environment as "dev"
	}
}

test_input_combined_fails_on_single_document if {
	count(td.of("input-combined", data.general.deny)) == 1 with input as td.rayservice
		with data.support_assistant.environment as "dev"
}

test_environment_from_label_alone if {
	labelled := json.patch(td.rayservice, [{"op": "add", "path": "/metadata/labels", "value": {"app.kubernetes.io/environment": "prod"}}])
	count(td.of("environment", data.general.deny)) == 0 with input as td.input_of([labelled, td.networkpolicy])
}

test_environment_fails_when_unknown if {
	count(td.of("environment", data.general.deny)) == 1 with input as td.good
}

test_environment_fails_when_label_disagrees_with_overlay if {
	labelled := json.patch(td.rayservice, [{"op": "add", "path": "/metadata/labels", "value": {"app.kubernetes.io/environment": "prod"}}])
	some m in td.of("environment", data.general.deny) with input as td.input_of([labelled, td.networkpolicy])
		with data.support_assistant.environment as "staging"
	contains(m, "overlays/staging")
}

test_environment_fails_on_unknown_name if {
	count(td.of("environment", data.general.deny)) == 1 with input as td.good
		with data.support_assistant.environment as "qa"
}

test_serve_config_parse_fails_on_bad_yaml if {
	count(td.of("serve-config-parse", data.general.deny)) == 1 with input as td.patched([{"op": "replace", "path": "/spec/serveConfigV2", "value": "applications: [\n"}])
		with data.support_assistant.environment as "dev"
}

test_serve_config_parse_fails_when_empty if {
	count(td.of("serve-config-parse", data.general.deny)) == 1 with input as td.patched([{"op": "replace", "path": "/spec/serveConfigV2", "value": ""}])
		with data.support_assistant.environment as "dev"
}
