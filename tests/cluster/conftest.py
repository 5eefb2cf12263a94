"""A real Ray cluster of three nodes on this machine, started once per test module.

Each node is a raylet of its own (Ray's ``cluster_utils.Cluster``), with 2 CPUs and
labels as ``ray start --labels`` would give them: ``head`` (zone=core, the GCS), ``edge``
(zone=edge) and ``cpu`` (gpu=none; it declares 4 CPUs, more than the machine may have),
named for llmos by the ``llmos.io/name`` label. The
GCS checks the nodes' health every 0.5 s, so a killed node is known dead within about two
seconds (Ray's default is tens of seconds; a production head is tuned the same way).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
          "health_check_initial_delay_ms": 0}
SMALL = {"object_store_memory": 80 << 20}  # the jobs do not use Ray's object store
NODES = {"edge": ({"zone": "edge"}, 2), "cpu": ({"gpu": "none"}, 4)}
GPU_NODES = {"g1": ({"pool": "gpu"}, 1, 2), "g2": ({"pool": "gpu"}, 1, 2)}


class RayTestCluster:
    """``nodes``: name -> (labels, cpus[, gpus]) beside the head. GPUs are Ray's count
    only (this machine has none): llmos places on them, and its jobs see them as
    ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, nodes: dict[str, tuple] = NODES) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "include_dashboard": False, "_system_config": HEALTH,
            "labels": {"llmos.io/name": "head", "zone": "core"}, **SMALL})
        self.nodes = {"head": self.cluster.head_node}
        for name, (labels, *sizes) in nodes.items():
            self.add(name, labels, *sizes)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, name: str, labels: dict[str, str], num_cpus: int = 2, num_gpus: int = 0):
        node = self.cluster.add_node(num_cpus=num_cpus, num_gpus=num_gpus,
                                     labels={"llmos.io/name": name, **labels}, **SMALL)
        self.cluster.wait_for_nodes()
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """The node dies as a machine would: its raylet is SIGKILLed, no goodbye."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    yield from started(NODES)


@pytest.fixture(scope="module")
def gpu_cluster():
    """Two nodes of 2 GPUs each (as Ray counts them) beside a head without: ``g1``, ``g2``."""
    yield from started(GPU_NODES)


def started(nodes: dict[str, tuple]):
    """A cluster of ``nodes`` for a module; afterwards, its agents' node homes are gone."""
    before = set(Path(tempfile.gettempdir()).glob("llmos-node-*"))
    cluster = RayTestCluster(nodes)
    yield cluster
    cluster.shutdown()
    for home in set(Path(tempfile.gettempdir()).glob("llmos-node-*")) - before:
        shutil.rmtree(home, ignore_errors=True)  # the agents' node homes
