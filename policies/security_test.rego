package security_test

import data.lib.testdata as td
import data.security

with_auth(opts) := td.patched([{"op": "add", "path": "/spec/rayClusterConfig/authOptions", "value": opts}])

test_ray_auth_passes_with_token_and_secret if {
	every env in ["staging", "prod"] {
		count(td.of("ray-auth", security.deny)) == 0 with input as with_auth({"mode": "token", "secretName": "ray-auth"})
			with data.support_assistant.environment as env
	}
}

test_ray_auth_fails_without_auth_options_in_staging_and_prod if {
	every env in ["staging", "prod"] {
		some m in td.of("ray-auth", security.deny) with input as td.good with data.support_assistant.environment as env
		contains(m, "authOptions is not set")
	}
	count(td.of("ray-auth", security.deny)) == 0 with input as td.good with data.support_assistant.environment as "dev"
}

test_ray_auth_fails_when_disabled if {
	some m in td.of("ray-auth", security.deny) with input as with_auth({"mode": "disabled", "secretName": "ray-auth"})
		with data.support_assistant.environment as "prod"
	contains(m, "mode is \"disabled\"")
}

test_ray_auth_fails_without_secret_name if {
	some m in td.of("ray-auth", security.deny) with input as with_auth({"mode": "token"})
		with data.support_assistant.environment as "staging"
	contains(m, "secretName is not set")
}

test_ray_auth_mode_defaults_to_token if {
	count(td.of("ray-auth", security.deny)) == 0 with input as with_auth({"secretName": "ray-auth"})
		with data.support_assistant.environment as "prod"
}

test_ray_auth_k8s_refused_for_a_rayservice if {
	inp := with_auth({"mode": "token", "secretName": "ray-auth", "enableK8sTokenAuth": true})
	count(td.of("ray-auth-k8s", security.deny)) == 1 with input as inp with data.support_assistant.environment as "dev"
	count(td.of("ray-auth-k8s", security.deny)) == 0 with input as with_auth({"mode": "token"})
		with data.support_assistant.environment as "dev"
}
