"""The test cluster of tests/ray_cluster.py comes up on a loaded machine: a node whose ``ray start`` gives up (Ray
waits a fixed 30 s for its raylet to register with the GCS: "The current node timed out during startup") is reaped
and started again, and the cluster is handed out only once the GCS lists both nodes alive with their resources."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import ray_cluster
from ray_cluster import alive_nodes


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_node_whose_ray_start_gives_up_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ray_cluster._command
    calls: list[tuple[str, int]] = []

    def first_worker_start_gives_up(name: str, args: list[str], temp_dir: Path, attempt: int) -> list[str]:
        calls.append((name, attempt))
        if name == "worker" and attempt == 1:  # what `ray start` prints and does when its raylet is too slow
            return [sys.executable, "-c", "import sys, time; time.sleep(2); print('Exception: The current node "
                    "timed out during startup. This could happen because some of the raylet failed to startup or "
                    "the GCS has become overloaded.'); sys.exit(1)"]
        return real(name, args, temp_dir, attempt)

    monkeypatch.setattr(ray_cluster, "_command", first_worker_start_gives_up)
    with ray_cluster.ray_cluster() as cluster:
        assert ("worker", 2) in calls and ("head", 2) not in calls
        nodes = alive_nodes(cluster.address)
        assert set(nodes) == {cluster.head.node_id, cluster.worker.node_id}
        assert nodes[cluster.worker.node_id].get("hyla_test_worker") == 1.0  # its resources are registered
        assert (cluster.temp_dir / "worker-1.log").read_text().count("timed out during startup") == 1
