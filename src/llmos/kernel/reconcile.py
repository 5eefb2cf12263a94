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
    executor = daemon.executor(job.executor)
    found = executor.recover(
        job.id, job.attempt, daemon.workdir(job.id), job.memory_mb,
        job.pid if job.state == JobState.RUNNING.value else None, job.pid_started,
    )
    if found is None:
        transition(s, job, JobState.PENDING, "requeued: the daemon stopped before it started")
        return
    allocation = Allocation.from_json(job.allocation)
    try:
        daemon.node.take(allocation)
    except ValueError:
        # The node shrank (new settings) under a live process: stop it and run it again.
        if isinstance(found, Handle):
            executor.kill(found)
        log.warning("job %s no longer fits this node; requeued", job.id)
        transition(s, job, JobState.PENDING, "requeued: this node's resources changed")
        return
    if isinstance(found, Handle):
        if job.state == JobState.SCHEDULED.value:
            job.pid, job.pid_started = found.pid, found.pid_started
            transition(s, job, JobState.RUNNING, f"started as process {found.pid} (adopted)")
        daemon.track(job, found)
        return
    assert isinstance(found, Exit)
    if job.state == JobState.SCHEDULED.value:
        transition(s, job, JobState.RUNNING, "started (found ended after a daemon restart)")
    daemon.track(job, Handle(job.id, job.attempt, job.pid or 0, job.pid_started or 0.0,
                             daemon.workdir(job.id), job.memory_mb))
    daemon._finish(s, job, daemon.running[job.id], found)
