"""`repoctl simulate`: an overlay's worker groups as a multi-node Ray cluster on this machine.

The overlay's RayService is translated into Ray autoscaler node types by Ray's own KubeRay code
(cluster.derive_autoscaling_config), only the provider is switched to Ray's fake multi-node one,
and the overlay's exact serveConfigV2 (num_gpus kept) is deployed on it. Scenarios (scenarios.py)
drive load and faults; observe.py samples the cluster into the report (report.py).
"""
