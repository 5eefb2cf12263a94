"""Hardware as vectors: discovery, requests, and exact accounting per node.

A request is a vector (cpu, memory_mb, gpu, gpu_memory_mb, gpu_share_mb). A node hands
out concrete cores (in thousandths, so 0.5 cpu is possible and two halves share one core),
memory, whole GPUs, and shares of one GPU by its memory (``gpu_share_mb``: serving
replicas and small jobs; two 20 GB shares fit on one 40 GB GPU), and never more than it
has: :meth:`NodeState.allocate` refuses anything that does not fit. A GPU that holds a
share is never handed out whole, and a GPU held whole takes no share. The executor names
the shared GPU in ``CUDA_VISIBLE_DEVICES`` and tells the job its budget
(``LLMOS_GPU_MEMORY_MB``); the budget is advisory (frameworks cap themselves by it, e.g.
``torch.cuda.set_per_process_memory_fraction``). This module knows nothing about jobs or
the database.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

MILLI = 1000  # a core is accounted in thousandths


@dataclass(frozen=True)
class Request:
    cpu: float = 1.0
    memory_mb: int = 1024
    gpu: int = 0
    gpu_memory_mb: int = 0
    # A share of one GPU, by its memory (with gpu == 0): the job gets that GPU in
    # CUDA_VISIBLE_DEVICES alongside other shares, never alone.
    gpu_share_mb: int = 0

    @property
    def millicores(self) -> int:
        return round(self.cpu * MILLI)

    def describe(self) -> str:
        parts = [f"{_num(self.cpu)} cpu", f"{self.memory_mb} MB memory"]
        if self.gpu:
            parts.append(f"{self.gpu} gpu")
        if self.gpu_memory_mb:
            parts.append(f"{self.gpu_memory_mb} MB per gpu")
        if self.gpu_share_mb:
            parts.append(f"a {self.gpu_share_mb} MB share of a gpu")
        return ", ".join(parts)


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_mb: int


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    cores: tuple[int, ...]
    memory_mb: int
    gpus: tuple[GPU, ...] = ()
    # What jobs may select the node by (``gpu=h100``, ``zone=edge``); not accounting.
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


# A node's state, as the scheduler and ``llmos nodes`` see it: only READY nodes take new
# work; DRAINING nodes finish (or hand back) what they run; LOST nodes are gone.
READY, DRAINING, LOST = "ready", "draining", "lost"
NODE_STATES = (READY, DRAINING, LOST)


@dataclass(frozen=True)
class NodeInfo:
    """A node as an executor reports it: its capacity (with labels), where it is, and
    whether it is usable (``state``, with the reason when it is not ready)."""

    capacity: NodeCapacity
    address: str = ""
    state: str = READY
    reason: str = ""
    node_id: str = ""  # the engine's own id (Ray's node id); the name is llmos's

    @property
    def name(self) -> str:
        return self.capacity.name


@dataclass(frozen=True)
class Allocation:
    """What one job holds on one node: core -> millicores, memory, GPU indices; with
    ``gpu_share_mb`` the one GPU in ``gpus`` is shared and the job holds that much of its
    memory."""

    node: str
    cores: dict[int, int]
    memory_mb: int
    gpus: tuple[int, ...] = ()
    gpu_share_mb: int = 0

    @property
    def cpu(self) -> float:
        return sum(self.cores.values()) / MILLI

    @property
    def whole_gpus(self) -> int:
        """GPUs held whole (a share holds none)."""
        return 0 if self.gpu_share_mb else len(self.gpus)

    def to_json(self) -> dict:
        data = {
            "node": self.node,
            "cores": {str(c): m for c, m in self.cores.items()},
            "memory_mb": self.memory_mb,
            "gpus": list(self.gpus),
        }
        if self.gpu_share_mb:
            data["gpu_share_mb"] = self.gpu_share_mb
        return data

    @classmethod
    def from_json(cls, data: dict) -> Allocation:
        return cls(
            node=data["node"],
            cores={int(c): int(m) for c, m in data["cores"].items()},
            memory_mb=int(data["memory_mb"]),
            gpus=tuple(int(g) for g in data.get("gpus", ())),
            gpu_share_mb=int(data.get("gpu_share_mb", 0)),
        )


def too_large_reason(request: Request, nodes: list[NodeCapacity]) -> str | None:
    """Why no node could ever run ``request``, or None when some node could."""
    if request.gpu_memory_mb and not request.gpu:
        return "gpu_memory_mb needs gpu >= 1"
    if request.gpu_share_mb and request.gpu:
        return "gpu_share_mb (a share of one gpu) and gpu (whole gpus) exclude each other"
    reasons = []
    for cap in nodes:
        biggest = max((g.memory_mb for g in cap.gpus), default=0)
        eligible = [g for g in cap.gpus if g.memory_mb >= request.gpu_memory_mb]
        if request.millicores > len(cap.cores) * MILLI:
            reasons.append(f"needs {_num(request.cpu)} cpu, node {cap.name} has {len(cap.cores)}")
        elif request.memory_mb > cap.memory_mb:
            reasons.append(
                f"needs {request.memory_mb} MB memory, node {cap.name} has {cap.memory_mb} MB"
            )
        elif request.gpu > len(eligible):
            if request.gpu_memory_mb and request.gpu <= len(cap.gpus):
                reasons.append(
                    f"needs {request.gpu_memory_mb} MB per gpu, node {cap.name}'s largest "
                    f"gpu has {biggest} MB"
                )
            else:
                reasons.append(f"needs {request.gpu} gpu, node {cap.name} has {len(cap.gpus)}")
        elif request.gpu_share_mb > biggest:
            reasons.append(f"needs a {request.gpu_share_mb} MB share of a gpu, node "
                           f"{cap.name}'s largest gpu has {biggest} MB")
        else:
            return None
    return "request larger than any node: " + "; ".join(reasons) if reasons else "no nodes"


@dataclass
class NodeState:
    """Free and used resources of one node, exactly accounted."""

    capacity: NodeCapacity
    core_used: dict[int, int] = field(default_factory=dict)
    memory_used: int = 0
    gpus_used: set[int] = field(default_factory=set)
    state: str = READY  # READY | DRAINING | LOST: only a ready node takes new work
    gpu_shared: dict[int, int] = field(default_factory=dict)  # gpu -> MB held by shares
    # sum(core_used.values()), kept as cores are taken and released (the scheduler asks for
    # the free cpu of thousands of nodes per pass)
    milli_used: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        for core in self.capacity.cores:
            self.core_used.setdefault(core, 0)
        self.milli_used = sum(self.core_used.values())

    @property
    def name(self) -> str:
        return self.capacity.name

    @property
    def free_millicores(self) -> int:
        return len(self.core_used) * MILLI - self.milli_used

    @property
    def free_memory_mb(self) -> int:
        return self.capacity.memory_mb - self.memory_used

    def free_gpus(self, min_memory_mb: int = 0) -> list[int]:
        """The GPUs nobody holds, whole or by a share."""
        shared, used = self.gpu_shared, self.gpus_used
        if not shared and not min_memory_mb:
            return [g.index for g in self.capacity.gpus if g.index not in used]
        return [
            g.index
            for g in self.capacity.gpus
            if g.index not in self.gpus_used and g.memory_mb >= min_memory_mb
            and not shared.get(g.index)
        ]

    def share_gpu(self, memory_mb: int) -> int | None:
        """The GPU a share of ``memory_mb`` goes to: the fullest already-shared GPU with
        room (packing shares keeps whole GPUs free), else the smallest free GPU that holds
        it; None when none can."""
        best, best_key = None, None
        for g in self.capacity.gpus:
            if g.index in self.gpus_used:
                continue
            used = self.gpu_shared.get(g.index, 0)
            room = g.memory_mb - used
            if room < memory_mb:
                continue
            key = (0 if used else 1, room)
            if best_key is None or key < best_key:
                best, best_key = g.index, key
        return best

    def shortfall(self, request: Request) -> str | None:
        """None when ``request`` fits now, else what is missing ("needs 2 cpu, 1 free")."""
        need = request.millicores
        if need > self.free_millicores or self._pick_cores(need) is None:
            return f"needs {_num(request.cpu)} cpu, {_num(self.free_millicores / MILLI)} free"
        if request.memory_mb > self.free_memory_mb:
            return f"needs {request.memory_mb} MB memory, {self.free_memory_mb} MB free"
        if request.gpu and len(self.free_gpus(request.gpu_memory_mb)) < request.gpu:
            return f"needs {request.gpu} gpu, {len(self.free_gpus(request.gpu_memory_mb))} free"
        if request.gpu_share_mb and self.share_gpu(request.gpu_share_mb) is None:
            return f"needs a {request.gpu_share_mb} MB share of a gpu, no gpu has that free"
        return None

    def fits(self, request: Request) -> bool:
        # Cheapest first: on a busy GPU cluster most nodes have no free GPU, and the core
        # checks walk every core (64 on a GPU server).
        return (
            (not request.gpu or len(self.free_gpus(request.gpu_memory_mb)) >= request.gpu)
            and request.memory_mb <= self.free_memory_mb
            and (not request.gpu_share_mb or self.share_gpu(request.gpu_share_mb) is not None)
            and request.millicores <= self.free_millicores
            and self._pick_cores(request.millicores) is not None
        )

    def allocate(self, request: Request) -> Allocation:
        """Reserve concrete cores, memory and GPUs; raises ValueError when it does not fit."""
        cores = (self._pick_cores(request.millicores)
                 if request.millicores <= self.free_millicores else None)
        if (cores is None or request.memory_mb > self.free_memory_mb
                or (request.gpu and len(self.free_gpus(request.gpu_memory_mb)) < request.gpu)
                or (request.gpu_share_mb and self.share_gpu(request.gpu_share_mb) is None)):
            reason = self.shortfall(request) or "does not fit"
            raise ValueError(f"cannot allocate on {self.name}: {reason}")
        if request.gpu_share_mb:
            allocation = Allocation(self.name, cores, request.memory_mb,
                                    (self.share_gpu(request.gpu_share_mb),),
                                    request.gpu_share_mb)
        else:
            gpus = tuple(self.free_gpus(request.gpu_memory_mb)[: request.gpu])
            allocation = Allocation(self.name, cores, request.memory_mb, gpus)
        self.take(allocation)
        return allocation

    def take(self, allocation: Allocation) -> None:
        """Account an allocation made earlier (the daemon's restart path)."""
        for core, milli in allocation.cores.items():
            if core not in self.core_used or self.core_used[core] + milli > MILLI:
                raise ValueError(f"core {core} would be oversubscribed on {self.name}")
        if allocation.memory_mb > self.free_memory_mb:
            raise ValueError(f"memory would be oversubscribed on {self.name}")
        if set(allocation.gpus) & self.gpus_used:
            raise ValueError(f"gpu would be oversubscribed on {self.name}")
        share = allocation.gpu_share_mb
        if share:
            sizes = {g.index: g.memory_mb for g in self.capacity.gpus}
            for g in allocation.gpus:
                if g not in sizes or self.gpu_shared.get(g, 0) + share > sizes[g]:
                    raise ValueError(f"gpu {g} memory would be oversubscribed on {self.name}")
        elif any(self.gpu_shared.get(g) for g in allocation.gpus):
            raise ValueError(f"gpu is shared on {self.name}; it cannot be held whole")
        for core, milli in allocation.cores.items():
            self.core_used[core] += milli
            self.milli_used += milli
        self.memory_used += allocation.memory_mb
        if share:
            for g in allocation.gpus:
                self.gpu_shared[g] = self.gpu_shared.get(g, 0) + share
        else:
            self.gpus_used |= set(allocation.gpus)

    def release(self, allocation: Allocation) -> None:
        for core, milli in allocation.cores.items():
            before = self.core_used.get(core)
            if before is None:  # a core this node no longer has (it shrank under the job)
                continue
            self.core_used[core] = max(0, before - milli)
            self.milli_used -= before - self.core_used[core]
        self.memory_used = max(0, self.memory_used - allocation.memory_mb)
        if allocation.gpu_share_mb:
            for g in allocation.gpus:
                left = self.gpu_shared.get(g, 0) - allocation.gpu_share_mb
                if left > 0:
                    self.gpu_shared[g] = left
                else:
                    self.gpu_shared.pop(g, None)
        else:
            self.gpus_used -= set(allocation.gpus)

    def _pick_cores(self, need: int) -> dict[int, int] | None:
        """Whole idle cores for the integer part; for the fraction, the fullest core that
        still has room (packing fractions keeps whole cores free), else several partly
        used cores together."""
        whole, frac = divmod(need, MILLI)
        idle = [c for c, used in self.core_used.items() if used == 0]
        if len(idle) < whole:
            return None
        picked = {c: MILLI for c in idle[:whole]}
        if frac:
            room = sorted(
                ((used, c) for c, used in self.core_used.items()
                 if c not in picked and used < MILLI),
                reverse=True,
            )
            single = [c for used, c in room if MILLI - used >= frac]
            if single:
                picked[single[0]] = frac
                return picked
            # No one core has room: spread the fraction over partly used cores.
            for used, core in room:
                take = min(MILLI - used, frac)
                picked[core] = take
                frac -= take
                if not frac:
                    break
            if frac:
                return None
        return picked

    def snapshot(self) -> dict:
        cap = self.capacity
        return {
            "name": cap.name,
            "capacity": {
                "cpu": len(cap.cores),
                "memory_mb": cap.memory_mb,
                "gpu": len(cap.gpus),
            },
            "free": {
                "cpu": self.free_millicores / MILLI,
                "memory_mb": self.free_memory_mb,
                "gpu": len(self.free_gpus()),
            },
            "labels": dict(cap.labels),
            "state": self.state,
            "cores": sorted(cap.cores),
            "gpus": [
                {"index": g.index, "name": g.name, "memory_mb": g.memory_mb,
                 "free": g.index not in self.gpus_used and not self.gpu_shared.get(g.index),
                 **({"shared_mb": self.gpu_shared[g.index]}
                    if self.gpu_shared.get(g.index) else {})}
                for g in cap.gpus
            ],
        }


def _num(x: float) -> str:
    return f"{x:g}"


# --- discovery --------------------------------------------------------------------------


def discover_node(
    cpus: int | None = None,
    memory_mb: int | None = None,
    reserved_memory_mb: int = 512,
    gpus: str | None = None,
    name: str | None = None,
    labels: dict[str, str] | None = None,
) -> NodeCapacity:
    """This machine's resources, with optional overrides (from the settings)."""
    cores = tuple(sorted(os.sched_getaffinity(0)))
    if cpus is not None:
        cores = cores[:cpus] if cpus <= len(cores) else tuple(range(cpus))
    if memory_mb is None:
        memory_mb = max(256, _physical_memory_mb() - reserved_memory_mb)
    found = discover_gpus()
    if gpus is not None:
        wanted = {int(x) for x in gpus.split(",") if x.strip()}
        found = tuple(g for g in found if g.index in wanted)
    return NodeCapacity(name or socket.gethostname(), cores, memory_mb, found, dict(labels or {}))


def _physical_memory_mb() -> int:
    import psutil

    total = psutil.virtual_memory().total
    # A container's memory limit (cgroup v2, then v1) is the real ceiling.
    for limit_file in (
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total // (1 << 20)


def discover_gpus() -> tuple[GPU, ...]:
    """NVIDIA GPUs through torch.cuda; nothing (and no torch import) without a driver."""
    if not (Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()):
        return ()
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(GPU(index, props.name, props.total_memory // (1 << 20)))
    return tuple(found)
