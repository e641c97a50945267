# Security: who may talk to the Ray cluster itself (GCS, raylet, dashboard, job API).
package security

import data.lib.k8s
import data.lib.ray

# Without token authentication anything that reaches a Ray port (a compromised pod, a port-forward,
# a mis-scoped NetworkPolicy) can submit jobs and run code on the cluster. KubeRay v1.6.2
# (apis/ray/v1/raycluster_types.go AuthOptions) sets RAY_AUTH_MODE=token on every Ray container
# and reads RAY_AUTH_TOKEN from a Secret (key auth_token): the one named in secretName, else one it
# generates per RayCluster. Staging and prod name their own Secret, so the token stays the same
# across NewCluster upgrades and never sits in git.
auth_envs := {"staging", "prod"}

deny contains msg if {
	some env in auth_envs
	ray.is_env(env)
	some rs in ray.rayservices
	problem := auth_problem(object.get(rs.spec.rayClusterConfig, "authOptions", null))
	msg := sprintf("[ray-auth] %s: %s in %s, so anyone who reaches a Ray port can run code on the cluster; fix: set spec.rayClusterConfig.authOptions {mode: token, secretName: <Secret with key auth_token, created outside git>} in overlays/%s/rayservice-patch.yaml", [k8s.ref(rs), problem, env, env])
}

auth_problem(opts) := "spec.rayClusterConfig.authOptions is not set (Ray token authentication is off)" if {
	opts == null
}

auth_problem(opts) := "authOptions.mode is \"disabled\"" if {
	opts != null
	object.get(opts, "mode", "token") != "token"
}

auth_problem(opts) := "authOptions.secretName is not set (the token would be regenerated with every new RayCluster)" if {
	opts != null
	object.get(opts, "mode", "token") == "token"
	object.get(opts, "secretName", "") == ""
}

# KubeRay v1.6.2: Kubernetes-delegated token auth is "currently unsupported for RayJob or
# RayService resources" (the AuthOptions.EnableK8sTokenAuth doc comment).
deny contains msg if {
	some rs in ray.rayservices
	object.get(object.get(rs.spec.rayClusterConfig, "authOptions", {}), "enableK8sTokenAuth", false) == true
	msg := sprintf("[ray-auth-k8s] %s: authOptions.enableK8sTokenAuth is true, which KubeRay v1.6.2 does not support for a RayService; fix: remove it and use mode: token with a secretName", [k8s.ref(rs)])
}
