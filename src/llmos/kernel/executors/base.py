"""The executor interface, the plain data it exchanges with the daemon, and the registry.

An executor reports the nodes it can run on (:meth:`Executor.nodes`), starts one attempt
of a job on the node its :class:`LaunchPlan`'s allocation names, reports how it ended as
an :class:`Exit`, and can signal or stop it. What it hands back for a started attempt, a
:class:`Handle`, carries an opaque reference (``ref``: JSON the daemon stores with the
job) from which the same executor finds the attempt again after a daemon restart — a
local process id, or a node and its agent; the daemon never looks inside. Executors are picked by name through the
``executors`` kind of :mod:`llmos.extensions` (the ``llmos.executors`` entry-point group:
``local`` built in the same way a Ray executor would register), and import their engines
lazily.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmos import extensions
from llmos.kernel.resources import Allocation, NodeInfo


@dataclass(frozen=True)
class LaunchPlan:
    job_id: int
    attempt: int
    program: str
    params: dict[str, Any]
    allocation: Allocation
    workdir: Path
    api_url: str | None = None
    # The job's own API token and the CA bundle to trust the API with (TLS). The token
    # reaches the job through its launch file, never through its environment.
    api_token: str | None = None
    api_ca: str | None = None
    # Who the job runs for, and the host folders it may read ("/": anywhere) — the
    # sandbox shows it those and no others; programs that read host paths check them.
    team: str | None = None
    read_roots: tuple[str, ...] = ()
    # Checkpoints: ``remote_checkpoints`` makes the job store each checkpoint as an
    # artifact through the API too (a remote executor asks for it: the next attempt may
    # run on another node); ``checkpoint_artifact`` is the newest one stored so far,
    # which the job restores when its folder holds none.
    remote_checkpoints: bool = False
    checkpoint_artifact: int | None = None
    # LLMOS_REQUIRE_ISOLATION is in force: an executor whose node cannot sandbox the job
    # refuses to start it (the daemon checks its own machine at submit; a node checks here).
    require_isolation: bool = False
    # One rank of a gang over several nodes (kernel/gangs.py), else None: {"rank",
    # "nodes", "leader": the leader node's address, "port": free there, "gpus": each
    # rank's GPU count} — plain JSON.
    gang: dict[str, Any] | None = None


def gang_environment(gang: dict[str, Any]) -> dict[str, str]:
    """What one rank of a gang finds in its environment: what ``torch.distributed``'s
    ``env://`` initialisation reads (one process per node: its rank is its node's), and
    what a program that starts one process per GPU builds on: the node rank and count,
    and each node's GPU count (``LLMOS_GANG_GPUS``, in rank order)."""
    rank, nodes = str(gang["rank"]), str(gang["nodes"])
    return {"MASTER_ADDR": str(gang["leader"]), "MASTER_PORT": str(gang["port"]),
            "RANK": rank, "WORLD_SIZE": nodes, "LOCAL_RANK": "0", "NODE_RANK": rank,
            "NNODES": nodes, "LLMOS_GANG_GPUS": ",".join(str(g) for g in gang["gpus"])}


@dataclass
class Handle:
    """A running attempt, as the executor tracks it.

    ``ref`` is the executor's own reference to the attempt, plain JSON that the daemon
    stores (``jobs.handle``) and gives back to :meth:`Executor.recover` after a restart:
    the local executor's ``pid`` and ``pid_started`` (which guards against pid reuse),
    a remote executor's node and agent. ``where`` in it, when present, says in words
    where the attempt runs. ``workdir`` is the job's folder on the daemon's machine, where
    its reports and logs are read (a remote executor mirrors them there as it polls).
    ``extra`` is the daemon's own bookkeeping, never stored."""

    job_id: int
    attempt: int
    workdir: Path
    memory_mb: int
    ref: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return int(self.ref.get("pid") or 0)

    @property
    def pid_started(self) -> float:
        return float(self.ref.get("pid_started") or 0.0)

    def describe(self) -> str:
        return self.ref.get("where") or f"process {self.pid}"


class ExitKind(str, enum.Enum):
    SUCCEEDED = "succeeded"
    YIELDED = "yielded"  # the program returned after being asked to yield
    FAILED = "failed"  # the program raised or exited non-zero
    MEMORY = "memory"  # stopped for going over its memory limit
    KILLED = "killed"  # ended by a signal the daemon did not send
    LOST = "lost"  # the process vanished while no daemon watched it


@dataclass(frozen=True)
class Exit:
    kind: ExitKind
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""
    result: dict[str, Any] | None = None


class Executor(Protocol):
    name: str

    def nodes(self) -> list[NodeInfo]:
        """The nodes this executor runs jobs on, as they are now (capacity, labels,
        address, state: a node that died is reported LOST with the reason)."""

    def launch(self, plan: LaunchPlan) -> Handle:
        """Start the attempt on the node ``plan.allocation.node`` names."""

    def poll(self, handle: Handle) -> Exit | None:
        """How the attempt ended, or None while it runs (a remote executor also brings
        the attempt's new log lines and reports to ``handle.workdir``)."""

    def recover(self, job_id: int, attempt: int, workdir: Path, memory_mb: int,
                ref: dict[str, Any] | None) -> Handle | Exit | None:
        """After a daemon restart, find an attempt a previous daemon started from its
        stored ``ref`` (None: bound, but no handle was stored): a Handle when it still
        runs, its Exit when it ended, None when it provably never started."""

    def request_yield(self, handle: Handle) -> None: ...

    def terminate(self, handle: Handle) -> None:
        """Ask the whole attempt to stop (SIGTERM to its process group)."""

    def kill(self, handle: Handle) -> None:
        """Stop it now (SIGKILL to its process group)."""

    def memory_used_mb(self, handle: Handle) -> float | None: ...

    def close(self) -> None: ...


class UnknownExecutor(ValueError):
    pass


class NodeUnavailable(RuntimeError):
    """Raised by :meth:`Executor.launch` when the attempt's node is gone or unknown: the
    attempt never started, so the daemon requeues the job (no failure counted) and
    refreshes its nodes."""


def executor_class(name: str) -> type:
    """The executor class registered as ``name``; UnknownExecutor lists the others."""
    try:
        return extensions.executors.load(name)
    except extensions.UnknownExtension as e:
        raise UnknownExecutor(str(e)) from None


def available_executors() -> list[str]:
    return extensions.executors.names()
