"""The simulated cluster's shape: node groups of identical nodes, from flags or YAML.

YAML (read with :func:`llmos.schema.load_yaml`: no aliases, bounded nesting)::

    nodes:                      # one entry per group of identical nodes
      - name: a100              # node names: a100-0, a100-1, ...
        count: 16
        gpus: 8
        cpus: 64
        memory_gb: 512
        gpu_memory_gb: 80       # optional (default 80)
        labels: {gpu: a100}     # optional

Every mistake is a :class:`ClusterError` that names the group and the field. Numbers
must be finite and within :data:`LIMITS` (a cluster the simulator can hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmos.kernel.resources import GPU, NodeCapacity
from llmos.kernel.scheduler.sim.trace import shown

GROUP_FIELDS = ("name", "count", "gpus", "cpus", "memory_gb", "gpu_memory_gb", "labels")
MAX_NODES = 100_000  # nodes in the whole cluster
# field: (least, most, default); count, gpus and cpus are whole numbers
LIMITS = {"count": (1, MAX_NODES, None), "gpus": (0, 1024, 8), "cpus": (1, 4096, 64),
          "memory_gb": (0.001, 1 << 20, 512), "gpu_memory_gb": (0.001, 1 << 16, 80)}


class ClusterError(ValueError):
    """A cluster description that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class NodeGroup:
    name: str
    count: int
    gpus: int = 8
    cpus: int = 64
    memory_gb: float = 512
    gpu_memory_gb: float = 80
    labels: dict[str, str] = field(default_factory=dict)

    def capacities(self) -> list[NodeCapacity]:
        gpus = tuple(GPU(i, self.name, int(self.gpu_memory_gb * 1024)) for i in range(self.gpus))
        return [NodeCapacity(f"{self.name}-{i}", tuple(range(self.cpus)),
                             int(self.memory_gb * 1024), gpus, dict(self.labels))
                for i in range(self.count)]


@dataclass(frozen=True)
class Cluster:
    groups: tuple[NodeGroup, ...]

    def capacities(self) -> list[NodeCapacity]:
        return [cap for g in self.groups for cap in g.capacities()]

    @property
    def gpus(self) -> int:
        return sum(g.count * g.gpus for g in self.groups)

    @property
    def nodes(self) -> int:
        return sum(g.count for g in self.groups)

    def describe(self) -> str:
        return " + ".join(f"{g.count} x ({g.gpus} gpu, {g.cpus} cpu, {g.memory_gb:g} GB)"
                          for g in self.groups)


def from_flags(nodes: int, gpus_per_node: int = 8, cpus_per_node: int = 64,
               memory_gb: float = 512, gpu_memory_gb: float = 80) -> Cluster:
    group = _group({"name": "node", "count": nodes, "gpus": gpus_per_node,
                    "cpus": cpus_per_node, "memory_gb": memory_gb,
                    "gpu_memory_gb": gpu_memory_gb}, "the flags")
    return Cluster((group,))


def load_cluster(path: str | Path) -> Cluster:
    from llmos.errors import InvalidRequest
    from llmos.schema import load_yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ClusterError(f"{path}: cannot read the cluster file ({e})") from None
    try:
        data = load_yaml(text, str(path))
    except InvalidRequest as e:
        raise ClusterError(str(e)) from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) \
            or not data["nodes"]:
        raise ClusterError(f"{path}: expected a mapping with a non-empty list 'nodes' of "
                           "node groups (name, count, gpus, cpus, memory_gb, labels)")
    groups = tuple(_group(g, f"{path}, node group {i + 1}") for i, g in enumerate(data["nodes"]))
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ClusterError(f"{path}: two node groups share a name")
    if sum(g.count for g in groups) > MAX_NODES:
        raise ClusterError(f"{path}: {sum(g.count for g in groups):,} nodes in all, over "
                           f"the {MAX_NODES:,} the simulator takes")
    return Cluster(groups)


def _group(data, where: str) -> NodeGroup:
    if not isinstance(data, dict):
        raise ClusterError(f"{where}: a node group must be a mapping")
    unknown = sorted(set(data) - set(GROUP_FIELDS))
    if unknown:
        raise ClusterError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} "
                           f"(known: {', '.join(GROUP_FIELDS)})")
    name = data.get("name", "node")
    if not isinstance(name, str) or not name or not name.replace("-", "").isalnum():
        raise ClusterError(f"{where}: name must be letters, digits and '-', not {name!r}")
    values = {}
    for key, (minimum, maximum, default) in LIMITS.items():
        value = data.get(key, default)
        if value is None:
            raise ClusterError(f"{where}: missing field {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not minimum <= value <= maximum:  # NaN compares False: refused too
            raise ClusterError(f"{where}: {key} must be a number from {minimum:g} to "
                               f"{maximum:,}, not {shown(value)}")
        if key in ("count", "gpus", "cpus") and value != int(value):
            raise ClusterError(f"{where}: {key} must be a whole number, not {value!r}")
        values[key] = int(value) if key in ("count", "gpus", "cpus") else float(value)
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
        raise ClusterError(f"{where}: labels must be a mapping of names to values")
    return NodeGroup(name, labels={k: str(v) for k, v in labels.items()}, **values)
