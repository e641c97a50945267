package operator_test

import data.lib.testdata as td
import data.operator

timeout_path := "/metadata/annotations/ray.io~1initializing-timeout"

with_timeout(value) := td.patched([{"op": "add", "path": timeout_path, "value": value}])

test_initializing_timeout_passes_when_absent if {
	count(td.of("initializing-timeout", operator.deny)) == 0 with input as td.good with data.support_assistant.environment as "dev"
}

test_initializing_timeout_accepts_durations_and_seconds if {
	every value in ["15m", "1h30m", "1.5h", "900", "+60"] {
		count(td.of("initializing-timeout", operator.deny)) == 0 with input as with_timeout(value)
			with data.support_assistant.environment as "dev"
	}
}

test_initializing_timeout_refuses_what_kuberay_refuses if {
	every value in ["15 minutes", "15min", "0", "0s", "-5m", "-30", "soon"] {
		some m in td.of("initializing-timeout", operator.deny) with input as with_timeout(value)
			with data.support_assistant.environment as "dev"
		contains(m, "RayService/support-assistant: metadata.annotations[ray.io/initializing-timeout]")
	}
}
