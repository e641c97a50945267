# Resilience: what keeps Serve answering when the head dies or the cluster is upgraded.
package resilience

import data.lib.k8s
import data.lib.ray

# Without GCS fault tolerance a head restart loses the cluster's metadata: every Serve replica is
# restarted and prod is down until the new cluster is ready (kuberay #1153).
deny contains msg if {
	ray.is_env("prod")
	some rs in ray.rayservices
	not gcs_ft_configured(rs)
	msg := sprintf("[gcs-ft] %s: spec.rayClusterConfig.gcsFaultToleranceOptions.redisAddress is not set in prod; a head pod restart takes every Serve app down; fix: add gcsFaultToleranceOptions (redisAddress, redisPassword from a Secret) in overlays/prod/rayservice-patch.yaml", [k8s.ref(rs)])
}

gcs_ft_configured(rs) if {
	addr := rs.spec.rayClusterConfig.gcsFaultToleranceOptions.redisAddress
	is_string(addr)
	addr != ""
}

# Left unset, the operator's ENABLE_ZERO_DOWNTIME env var decides (default NewCluster, which needs
# a second cluster's worth of GPUs during every upgrade; rayservice_controller.go
# isZeroDowntimeUpgradeEnabled). An environment must choose on purpose, in git (kuberay #1476).
upgrade_types := {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}

deny contains msg if {
	some rs in ray.rayservices
	not object.get(rs.spec, ["upgradeStrategy", "type"], "<unset>") in upgrade_types
	msg := sprintf("[upgrade-strategy] %s: spec.upgradeStrategy.type is %q; fix: set it explicitly to one of %v in overlays/<env>/rayservice-patch.yaml", [k8s.ref(rs), object.get(rs.spec, ["upgradeStrategy", "type"], "<unset>"), sort(upgrade_types)])
}
