"""A gang over several nodes in the daemon: one attempt of the job per node, started,
watched, stopped and found again after a restart together.

A job that asks for it (``multi_node``: its program is distributed) and is larger than
every node is placed by the scheduler over the fewest nodes
(:mod:`llmos.kernel.scheduler.gang`); its binding holds one allocation per node, the
leader's first. The daemon stores them all with the job (:func:`stored`: the leader's
allocation, the others under ``"gang"``) and starts the job through
:class:`GangExecutor`, which wraps the job's executor (Ray's: a gang needs nodes):

- each node runs the job's program once, as rank ``r`` of ``n``, with the environment
  ``torch.distributed`` reads (:func:`llmos.kernel.executors.base.gang_environment`):
  ``MASTER_ADDR``/``MASTER_PORT`` (the leader node's address and a port free there),
  ``RANK``/``WORLD_SIZE`` and ``NODE_RANK``/``NNODES``, and ``LLMOS_GANG_GPUS`` (each
  rank's GPU count, in rank order: parts may differ); the process sees its node's GPUs;
- the leader (rank 0) is the job: its folder, logs, reports, checkpoints and result are
  the job's (every rank restores from its checkpoint: state kept by the other ranks
  alone, such as optimizer shards, is not saved; a program with side effects, such as
  registering a model, does them on rank 0); rank ``r``'s files are mirrored to
  ``rank-<r>/`` in the job's folder;
- it runs while any rank runs; one rank ending badly (or lost with its node) stops the
  others (SIGTERM, SIGKILL after STOP_GRACE_S; while the daemon stops the job itself,
  its own escalation), and the job ends, once every rank has, as that rank ended (as
  torchrun: any rank's failure is the job's); it succeeds when every rank has;
- yield, terminate and kill go to every rank; each rank is held to its own node's
  share of the memory.

The state lives in the handle (``ref["gang"]``: each rank's own reference, stored with the
job; ``extra``: each rank's handle and how those that ended ended), so the wrapper itself
holds none. Isolation: each rank runs in its node's sandbox exactly as a single-node job
does (its team's user, its folder, its read roots); the ranks talk over the network,
which the daemon allows only where jobs share the host's (``LLMOS_JOB_NETWORK=host``, or
no sandbox): elsewhere such a job is refused, with that reason. On a shared network the
rendezvous port and the collectives carry no authentication (as with torchrun): a job
of another team on the same network could connect to them. Gangs are for clusters whose
network the teams may share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmos.kernel.executors.base import Exit, ExitKind, Executor, Handle, LaunchPlan
from llmos.kernel.resources import Allocation

GANG = "gang"  # the key of the further allocations, and of the ranks' references
FINE = (ExitKind.SUCCEEDED, ExitKind.YIELDED)
STOP_GRACE_S = 10.0  # after one rank failed: the others' SIGTERM, then SIGKILL


def stored(allocations: Sequence[Allocation]) -> dict:
    """What the job row keeps of its allocations (the leader's, plus the others')."""
    leader, *others = allocations
    data = leader.to_json()
    if others:
        data[GANG] = [a.to_json() for a in others]
    return data


def allocations_of(data: dict) -> tuple[Allocation, ...]:
    """Every allocation a stored ``allocation`` holds, the leader's first."""
    return (Allocation.from_json(data),
            *(Allocation.from_json(a) for a in data.get(GANG) or ()))


def describe(allocations: Sequence[Allocation]) -> str:
    """Where a job was bound, in words."""
    if len(allocations) == 1:
        a = allocations[0]
        return f"{a.node} (cores {','.join(str(c) for c in sorted(a.cores))}"
    gpus = sum(len(a.gpus) for a in allocations)
    return (f"{', '.join(a.node for a in allocations)} (a gang of {gpus} gpu over "
            f"{len(allocations)} nodes, led by {allocations[0].node}")


def rank_workdir(workdir: Path, rank: int) -> Path:
    """Where rank ``rank``'s files are on the daemon's machine (the leader's: the job's)."""
    return workdir if rank == 0 else workdir / f"rank-{rank}"


def is_gang(handle: Handle) -> bool:
    return GANG in handle.ref


class GangExecutor:
    """The job's executor, for a gang: every call goes to each rank's attempt."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.name = inner.name

    # -- start ---------------------------------------------------------------------------

    def launch(self, plan: LaunchPlan, allocations: Sequence[Allocation],
               leader_address: str) -> Handle:
        """Start rank r on ``allocations[r]``'s node, the leader first; a rank that cannot
        start kills those started (the error goes on: NodeUnavailable requeues the job)."""
        free_port = getattr(self.inner, "free_port", None)
        if free_port is None:
            raise RuntimeError(f"the {self.name} executor cannot run a gang over nodes")
        gang = {"leader": leader_address, "port": int(free_port(allocations[0].node)),
                "nodes": len(allocations), "gpus": [len(a.gpus) for a in allocations]}
        handles: list[Handle] = []
        try:
            for rank, allocation in enumerate(allocations):
                handles.append(self.inner.launch(replace(
                    plan, allocation=allocation, workdir=rank_workdir(plan.workdir, rank),
                    gang={**gang, "rank": rank},
                    # the leader's checkpoints are the job's; every rank restores from them
                    remote_checkpoints=plan.remote_checkpoints and rank == 0)))
        except BaseException:
            for started in handles:
                self.inner.kill(started)
            raise
        return self._handle(plan.job_id, plan.attempt, plan.workdir, allocations, handles)

    def _handle(self, job_id: int, attempt: int, workdir: Path,
                allocations: Sequence[Allocation], parts: list[Handle]) -> Handle:
        leader = parts[0].ref
        ref: dict[str, Any] = {GANG: [p.ref for p in parts],
                               "where": f"{len(parts)} ranks: "
                               + "; ".join(p.describe() for p in parts)}
        for key in ("pid", "pid_started"):  # the leader's, for people (``llmos jobs get``)
            if key in leader:
                ref[key] = leader[key]
        handle = Handle(job_id, attempt, workdir, sum(a.memory_mb for a in allocations), ref)
        handle.extra.update(parts=parts, limits=[a.memory_mb for a in allocations],
                            nodes=[a.node for a in allocations], ended={}, bad=[])
        return handle

    # -- watch ---------------------------------------------------------------------------

    def poll(self, handle: Handle) -> Exit | None:
        """None until every rank has ended (a rank stopped after another failed included:
        its node's resources are free only then); then the job's end."""
        for rank, part in enumerate(handle.extra["parts"]):
            if rank not in handle.extra["ended"]:
                found = self.inner.poll(part)
                if found is not None:
                    self._ended(handle, rank, found)
        return self._outcome(handle)

    def node_lost(self, handle: Handle, node: str, reason: str) -> None:
        """``node`` died: its rank ended with it (the next poll stops the others)."""
        for rank, name in enumerate(handle.extra["nodes"]):
            if name == node and rank not in handle.extra["ended"]:
                self._ended(handle, rank, Exit(ExitKind.LOST,
                                               message=f"node {node} was lost: {reason}"))

    def _ended(self, handle: Handle, rank: int, found: Exit) -> None:
        """Rank ``rank`` ended. The first to end badly stops the others: SIGTERM, then
        SIGKILL after STOP_GRACE_S, unless the daemon is stopping the job already (its
        own escalation goes on: a rank saving its checkpoint keeps its grace)."""
        extra = handle.extra
        extra["ended"][rank] = found
        if found.kind in FINE:
            return
        extra["bad"].append(rank)
        if len(extra["bad"]) == 1 and not extra.get("stopping"):
            for part in self._running(handle):
                self.inner.terminate(part)
            extra["kill_at"] = time.monotonic() + STOP_GRACE_S

    def _outcome(self, handle: Handle) -> Exit | None:
        extra = handle.extra
        parts, ended, bad = extra["parts"], extra["ended"], extra["bad"]
        if len(ended) < len(parts):
            if (bad and not extra.get("stopping")
                    and time.monotonic() >= extra.get("kill_at", math.inf)):
                self._kill_running(handle)
                extra["kill_at"] = math.inf  # once: the ranks' own polls say when they end
            return None
        if not bad:
            return ended[0]  # the leader's: its result is the job's
        # the rank whose end explains the others': a lost node first, else the first
        rank = next((r for r in bad if ended[r].kind is ExitKind.LOST), bad[0])
        found = ended[rank]
        return replace(found, message=f"rank {rank} of {len(parts)} (on "
                       f"{extra['nodes'][rank]}) ended: {found.message or found.kind.value}")

    def memory_over(self, handle: Handle) -> str | None:
        """Why a running rank is over its own node's share of the memory, or None."""
        limits = handle.extra["limits"]
        for rank, part in enumerate(handle.extra["parts"]):
            if rank in handle.extra["ended"]:
                continue
            used = self.inner.memory_used_mb(part)
            if used is not None and used > limits[rank]:
                return (f"exceeded its memory limit: rank {rank} (on "
                        f"{handle.extra['nodes'][rank]}) {used:.0f} MB resident > "
                        f"{limits[rank]} MB")
        return None

    def recover(self, job_id: int, attempt: int, workdir: Path,
                allocations: Sequence[Allocation], ref: dict | None) -> Handle | Exit | None:
        """After a daemon restart: each rank found from its stored reference (or, when
        the gang's was never stored, by its node). A gang some of whose ranks never
        started did not start (those started are killed): None."""
        refs = (ref or {}).get(GANG) or [{"node": a.node} for a in allocations]
        found = [self.inner.recover(job_id, attempt, rank_workdir(workdir, rank), a.memory_mb,
                                    part_ref)
                 for rank, (a, part_ref) in enumerate(zip(allocations, refs, strict=True))]
        if any(f is None for f in found):
            for f in found:
                if isinstance(f, Handle):
                    self.inner.kill(f)
            return None
        parts = [f if isinstance(f, Handle) else
                 Handle(job_id, attempt, rank_workdir(workdir, rank), a.memory_mb,
                        dict(part_ref))
                 for rank, (f, a, part_ref) in enumerate(zip(found, allocations, refs))]
        handle = self._handle(job_id, attempt, workdir, allocations, parts)
        for rank, f in enumerate(found):
            if isinstance(f, Exit):
                self._ended(handle, rank, f)
        outcome = self._outcome(handle)
        return handle if outcome is None else outcome

    # -- signal --------------------------------------------------------------------------

    def _running(self, handle: Handle) -> list[Handle]:
        ended = handle.extra["ended"]
        return [p for rank, p in enumerate(handle.extra["parts"]) if rank not in ended]

    def _kill_running(self, handle: Handle) -> None:
        for part in self._running(handle):
            self.inner.kill(part)

    def request_yield(self, handle: Handle) -> None:
        for part in self._running(handle):
            self.inner.request_yield(part)

    def terminate(self, handle: Handle) -> None:
        for part in self._running(handle):
            self.inner.terminate(part)

    def kill(self, handle: Handle) -> None:
        self._kill_running(handle)
