"""The simulated executor as a daemon executor: a cluster of simulated nodes on which an
attempt "runs" without any process, until :meth:`SimExecutor.finish` ends it.

It lets a real :class:`~llmos.kernel.daemon.Daemon` (its store, queue, node accounting,
scheduling pass and binding) run over the same simulated cluster as the simulator, so a
test can check that both make the same decisions on the same input. Register a class for
a given cluster with :func:`executor_for` under a name of the ``executors`` extension
kind, and set ``LLMOS_EXECUTOR`` to that name. Nothing is executed and nothing of a job
can reach the daemon's secrets: no process is started at all.
"""

from __future__ import annotations

from pathlib import Path

from llmos.kernel.executors.base import Exit, ExitKind, Handle, LaunchPlan
from llmos.kernel.resources import NodeCapacity, NodeInfo


class SimExecutor:
    """Nodes from ``capacities``; launches are recorded (``launched``), never executed."""

    capacities: tuple[NodeCapacity, ...] = ()
    isolation_level = "full"
    isolation_detail = "simulated: no process is started"
    remote = False

    def __init__(self, settings=None):
        self.settings = settings
        self.launched: list[LaunchPlan] = []
        self.ended: dict[int, Exit] = {}

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(cap, address="simulated") for cap in self.capacities]

    def launch(self, plan: LaunchPlan) -> Handle:
        self.launched.append(plan)
        Path(plan.workdir).mkdir(parents=True, exist_ok=True)
        return Handle(plan.job_id, plan.attempt, Path(plan.workdir), 1 << 30,
                      ref={"where": f"simulated on {plan.allocation.node}"})

    def finish(self, job_id: int, kind: ExitKind = ExitKind.SUCCEEDED) -> None:
        """End the job's attempt at the next poll."""
        self.ended[job_id] = Exit(kind, exit_code=0 if kind is ExitKind.SUCCEEDED else 1)

    def poll(self, handle: Handle) -> Exit | None:
        return self.ended.pop(handle.job_id, None)

    def recover(self, job_id: int, attempt: int, workdir: Path, memory_mb: int,
                ref: dict) -> Handle | None:
        return None  # a simulated attempt does not outlive its daemon

    def request_yield(self, handle: Handle) -> None:
        self.finish(handle.job_id, ExitKind.YIELDED)

    def terminate(self, handle: Handle) -> None:
        self.finish(handle.job_id, ExitKind.KILLED)

    def kill(self, handle: Handle) -> None:
        self.finish(handle.job_id, ExitKind.KILLED)

    def memory_used_mb(self, handle: Handle) -> float | None:
        return None

    def close(self) -> None:
        pass


def executor_for(capacities: list[NodeCapacity]) -> type[SimExecutor]:
    """A :class:`SimExecutor` class whose nodes are ``capacities``."""
    return type("SimClusterExecutor", (SimExecutor,), {"capacities": tuple(capacities)})
