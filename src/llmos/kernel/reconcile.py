"""Start-up reconciliation: make the daemon's picture match what is really running.

For every job the store says is SCHEDULED or RUNNING, ask its executor what became of
the attempt: still alive (adopt it and keep watching), ended (record how), or provably
never started (requeue it: the daemon died between binding and launching, so no launch
file, claim or result of this attempt exists, or its launch file was revoked before a
runner claimed it). Jobs the store says are PENDING (or caught mid-preemption) go back in
the queue. Nothing is lost, no attempt is started a second time while its first process
lives, and none that never ran is recorded as failed.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from llmos.kernel.executors import Exit, Handle
from llmos.kernel.gangs import GangExecutor, allocations_of
from llmos.kernel.jobs import JobState, transition
from llmos.kernel.resources import Allocation
from llmos.store.models import Job

log = logging.getLogger("llmos.daemon")


def reconcile(daemon) -> None:
    with daemon.db.session() as s:
        active = s.scalars(
            select(Job).where(Job.state.in_([JobState.SCHEDULED.value, JobState.RUNNING.value]))
            .order_by(Job.id)
        ).all()
        for job in active:
            _recover(daemon, s, job)
        for job in s.scalars(select(Job).where(Job.state == JobState.PREEMPTED.value)):
            transition(s, job, JobState.PENDING, "requeued after preemption (daemon restarted)")
        s.flush()
        pending = s.scalars(
            select(Job).where(Job.state == JobState.PENDING.value).order_by(Job.id)
        ).all()
        for job in pending:
            daemon.enqueue(s, job)
    if active:
        log.info("reconciled %d active jobs; %d running", len(active), len(daemon.running))


def _recover(daemon, s, job: Job) -> None:
    allocations = allocations_of(job.allocation)
    executor = daemon.executor(job.executor)
    if len(allocations) > 1:  # a gang over several nodes: every rank
        executor = GangExecutor(executor)
        found = executor.recover(job.id, job.attempt, daemon.workdir(job.id), allocations,
                                 _stored_ref(job))
    else:
        found = executor.recover(job.id, job.attempt, daemon.workdir(job.id), job.memory_mb,
                                 _stored_ref(job))
    if found is None:
        transition(s, job, JobState.PENDING, "requeued: the daemon stopped before it started")
        return
    taken: list[Allocation] = []
    try:
        for allocation in allocations:
            daemon.nodes.take(allocation)
            taken.append(allocation)
    except ValueError as e:
        # A node is gone, or shrank (new settings) under a live process: stop it and
        # run it again.
        for allocation in taken:
            daemon.nodes.release(allocation)
        if isinstance(found, Handle):
            executor.kill(found)
        log.warning("job %s no longer fits its node (%s); requeued", job.id, e)
        where = (f"its node {allocations[0].node}" if len(allocations) == 1 else
                 f"a node of its gang ({', '.join(a.node for a in allocations)})")
        transition(s, job, JobState.PENDING,
                   f"requeued: {where} is gone or its resources changed")
        return
    if isinstance(found, Handle):
        if job.state == JobState.SCHEDULED.value:
            daemon.record_handle(job, found)
            transition(s, job, JobState.RUNNING, f"started as {found.describe()} (adopted)")
        daemon.track(job, found)
        return
    assert isinstance(found, Exit)
    if job.state == JobState.SCHEDULED.value:
        transition(s, job, JobState.RUNNING, "started (found ended after a daemon restart)")
    daemon.track(job, Handle(job.id, job.attempt, daemon.workdir(job.id), job.memory_mb,
                             _stored_ref(job) or {}))
    daemon._finish(s, job, daemon.running[job.id], found)


def _stored_ref(job: Job) -> dict | None:
    """The executor's reference to a RUNNING job's attempt (None for a SCHEDULED one,
    whose launch may not have happened); rows from before handles were stored give
    their pid."""
    if job.state != JobState.RUNNING.value:
        return None
    if job.handle:
        return job.handle
    return {"pid": job.pid, "pid_started": job.pid_started} if job.pid else None
