package resilience_test

import data.lib.testdata as td
import data.resilience

test_gcs_ft_passes if {
	count(td.of("gcs-ft", resilience.deny)) == 0 with input as td.good with data.support_assistant.environment as "prod"
}

test_gcs_ft_fails_in_prod_without_redis if {
	inp := td.patched([{"op": "remove", "path": "/spec/rayClusterConfig/gcsFaultToleranceOptions"}])
	count(td.of("gcs-ft", resilience.deny)) == 1 with input as inp with data.support_assistant.environment as "prod"
	every env in ["dev", "staging"] {
		count(td.of("gcs-ft", resilience.deny)) == 0 with input as inp with data.support_assistant.environment as env
	}
}

test_gcs_ft_fails_with_empty_address if {
	inp := td.patched([{"op": "replace", "path": "/spec/rayClusterConfig/gcsFaultToleranceOptions/redisAddress", "value": ""}])
	count(td.of("gcs-ft", resilience.deny)) == 1 with input as inp with data.support_assistant.environment as "prod"
}

test_upgrade_strategy_passes if {
	every t in ["NewCluster", "None"] {
		count(td.of("upgrade-strategy", resilience.deny)) == 0 with input as td.patched([{"op": "replace", "path": "/spec/upgradeStrategy/type", "value": t}])
			with data.support_assistant.environment as "dev"
	}
}

test_upgrade_strategy_fails_when_unset if {
	inp := td.patched([{"op": "remove", "path": "/spec/upgradeStrategy"}])
	some m in td.of("upgrade-strategy", resilience.deny) with input as inp with data.support_assistant.environment as "dev"
	contains(m, "spec.upgradeStrategy.type is \"<unset>\"")
}

test_upgrade_strategy_fails_on_unknown_type if {
	inp := td.patched([{"op": "replace", "path": "/spec/upgradeStrategy/type", "value": "Recreate"}])
	count(td.of("upgrade-strategy", resilience.deny)) == 1 with input as inp with data.support_assistant.environment as "dev"
}
