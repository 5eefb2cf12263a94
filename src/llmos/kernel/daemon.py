"""The daemon's control loop: the store holds the desired state, executors the actual one.

One thread runs :meth:`Daemon.step` whenever something changes (a submission or a cancel
wakes it) and at least every ``tick_s``. A step
1. refreshes the nodes from the executor (:mod:`llmos.kernel.nodes`: a node joining,
   draining or dying); the running jobs of a node that died end as lost, and are retried
   elsewhere per their ``max_retries``;
2. supervises running attempts: reads their reports, notices exits, enforces timeouts
   and memory limits, escalates stops (yield -> SIGTERM -> SIGKILL);
3. schedules: one pure pass of the scheduler's profile (``self.profile``) over the
   in-memory queue and every node, then binds and launches each job on its node.

The daemon is the only writer of job states after submission; every transition is
stored with its reason. On start it reconciles the store with the processes that are
actually alive (:mod:`llmos.kernel.reconcile`), so a daemon killed with ``kill -9``
loses nothing and never runs an attempt twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import replace
from typing import Callable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from llmos.config import Settings
from llmos.kernel import events
from llmos.kernel.attempts import StopIntent, Tracked, begin_stop, escalate, memory_over
from llmos.kernel.executors import (Executor, Exit, ExitKind, Handle, LaunchPlan,
                                    NodeUnavailable, executor_class)
from llmos.kernel.gangs import GangExecutor, allocations_of, describe, is_gang, stored
from llmos.kernel.jobs import (PRIORITY_RANK, JobState, Service, recent_services, request_of,
                               service_of, transition)
from llmos.kernel.nodes import Nodes
from llmos.kernel.resources import NodeCapacity
from llmos.kernel.scheduler import (
    PendingJob,
    Profile,
    Quota,
    RunningJob,
    SchedulerConfig,
    schedule,
)
from llmos.kernel.scheduler.framework import job_named, nominate
from llmos.kernel.scheduler.history import KEEP as HISTORY_KEEP
from llmos.kernel.scheduler.history import ServiceHistory
from llmos.kernel.scheduler.policies import policy
from llmos.kernel.stats import KernelStats
from llmos.store.db import Database
from llmos.store.models import Job, Team, utcnow

log = logging.getLogger("llmos.daemon")

MEMORY_CHECK_S = 0.5
RESCHEDULE_S = 5.0  # a pass even when nothing changed: aging moves jobs up over time


class Daemon:
    def __init__(self, settings: Settings, db: Database, api_url: str | None = None,
                 node: NodeCapacity | None = None,
                 job_token: Callable[[int], str] | None = None):
        self.settings = settings
        self.db = db
        self.api_url = api_url or settings.client_url
        # Mints the API token a starting job gets (the security layer provides it; the
        # kernel only hands it over).
        self.job_token = job_token
        # Every node jobs may run on, kept in step with the executor (a fixed ``node``,
        # for tests and benchmarks, stands in for this machine's discovery).
        self.nodes = Nodes(self, fixed=node)
        # A gang larger than every node spans nodes (kernel/gangs.py) where its ranks can
        # reach each other: jobs share the host's network, or run unsandboxed.
        self.config = SchedulerConfig(
            aging_s=settings.aging_s,
            multi_node=settings.job_network == "host" or settings.sandbox == "off",
            single_node_reason="a gang over several nodes needs its ranks on the network: "
            "LLMOS_JOB_NETWORK=host")
        # The scheduling policy (settings.scheduler_policy, kernel/scheduler/policies.py).
        self.profile: Profile = policy(settings.scheduler_policy)
        self.lock = threading.RLock()
        self.pending: dict[int, PendingJob] = {}
        self.running: dict[int, Tracked] = {}
        self.dependents: dict[int, set[int]] = defaultdict(set)
        self.last_pass_ms = 0.0
        # Pass times, preemptions, queue waits, run times and outcomes, read by the
        # monitor at scrape time (plain data: the kernel imports nothing of the monitor).
        self.stats = KernelStats()
        # What ended jobs received, per team: the policy's estimate of a job's remaining
        # service (kernel/scheduler/history.py); read back from the store at start.
        self.history = ServiceHistory()
        self._dirty = True  # something changed since the last scheduling pass
        self._last_pass_at = 0.0
        self._reasons: dict[int, str] = {}
        # Called (with no arguments, outside any transaction) after jobs ended: a pipeline
        # run advances at once instead of at its next poll. Must return quickly.
        self.on_jobs_ended: list[Callable[[], None]] = []
        self._ended = False
        self._executors: dict[str, Executor] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        from llmos.kernel.reconcile import reconcile

        self.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.reload_quotas()
        with self.lock:
            self.nodes.sync(time.time(), force=True)  # an unreachable cluster fails here
            with self.db.session() as s:  # before reconcile, which may end jobs (and add)
                for team, gpu, service in recent_services(s, HISTORY_KEEP):
                    self.history.add(team, service, gpu)
            reconcile(self)
        self._thread = threading.Thread(target=self._loop, name="llmos-control", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the loop; then stop running jobs (and requeue them) or leave them running."""
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        with self.lock:
            if self.settings.shutdown_jobs == "stop":
                self._stop_all_for_shutdown()
            for executor in self._executors.values():
                executor.close()

    def wake(self) -> None:
        self._wake.set()

    def reload_quotas(self) -> None:
        """Read every team's quota from the store (at start, and after a change)."""
        with self.db.session() as s:
            quotas = {t.name: Quota(cpu=t.quota_cpu, memory_mb=t.quota_memory_mb,
                                    gpu=t.quota_gpu, jobs=t.quota_jobs)
                      for t in s.scalars(select(Team))}
        with self.lock:
            self.config = replace(self.config, quotas=quotas)
            self._dirty = True
        self.wake()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.settings.tick_s)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                with self.lock:
                    self.step()
            except Exception:  # the loop must outlive any one bad step
                log.exception("control loop step failed")
            self._announce_endings()

    def _announce_endings(self) -> None:
        if not self._ended:
            return
        self._ended = False
        for listener in self.on_jobs_ended:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the loop
                log.exception("a job-end listener failed")

    def step(self) -> None:
        now = time.time()
        self.nodes.sync(now)
        self._supervise(now)
        if self.nodes.stale:  # an attempt ended lost: see which node died before placing
            self.nodes.sync(now, refresh=True)
        self._schedule(now)

    def executor(self, name: str) -> Executor:
        if name not in self._executors:
            self._executors[name] = executor_class(name)(self.settings)
        return self._executors[name]

    def _executor_of(self, tracked: Tracked) -> Executor:
        """The executor that watches and stops ``tracked`` (every rank, for a gang)."""
        ex = self.executor(tracked.executor)
        return GangExecutor(ex) if is_gang(tracked.handle) else ex

    def isolation(self, executor: str | None = None) -> tuple[str, str]:
        """How jobs of ``executor`` (default: the configured one) are kept from each other
        and from the daemon: ("full" | "partial" | "none", in words)."""
        sandbox = getattr(self.executor(executor or self.settings.executor), "sandbox", None)
        if sandbox is None:
            ex = self.executor(executor or self.settings.executor)
            return (getattr(ex, "isolation_level", "full"),
                    getattr(ex, "isolation_detail", "isolated by the executor"))
        if sandbox.mode == "users":
            return "full", "each job runs as its team's own system user in its own namespaces"
        return ("partial" if sandbox.isolated else "none"), sandbox.reason

    def isolation_refusal(self, executor: str | None = None) -> str | None:
        """Why a job may not run now because it could not be isolated
        (``LLMOS_REQUIRE_ISOLATION``), or None."""
        level, reason = self.isolation(executor)
        if level != "none" or not self.isolation_required():
            return None
        required = self.settings.require_isolation
        return (f"jobs are not isolated from each other or from the daemon on this machine "
                f"({reason}); LLMOS_REQUIRE_ISOLATION={required} refuses to run them"
                + (" while more than one team exists" if required == "auto" else "")
                + ". Run the daemon as root with bubblewrap installed, or set "
                "LLMOS_REQUIRE_ISOLATION=off to accept the risk")

    def isolation_required(self) -> bool:
        """Whether jobs must run isolated (LLMOS_REQUIRE_ISOLATION: on; or auto, once more
        than one team exists)."""
        required = self.settings.require_isolation
        if required != "auto":
            return required == "on"
        with self.db.session() as s:
            return (s.scalar(select(func.count()).select_from(Team)) or 0) > 1

    def workdir(self, job_id: int):
        return self.settings.jobs_dir / str(job_id)

    # -- the queue ----------------------------------------------------------------------

    def enqueue(self, session: Session, job: Job) -> None:
        """Put a PENDING job in the in-memory queue (on submit, retry, requeue, restart)."""
        waiting = []
        ready = job.queued_at.timestamp()  # when it could run: its last dependency ended
        for dep_id in job.depends_on:
            dep = session.get(Job, dep_id)
            if dep.state in (JobState.FAILED.value, JobState.CANCELLED.value):
                self._fail_dependent(session, job, dep)
                return
            if dep.state != JobState.SUCCEEDED.value:
                waiting.append(dep_id)
                self.dependents[dep_id].add(job.id)
            elif dep.ended_at is not None:
                ready = max(ready, dep.ended_at.timestamp())
        got = service_of(session, job) if job.attempt else Service(0.0, 0.0, 0.0, None)
        if job.promoted_at is not None:  # promoted while it waited: queued since then
            ready = max(ready, job.promoted_at.timestamp())
        self.pending[job.id] = PendingJob(
            id=job.id, request=request_of(job), priority=PRIORITY_RANK[job.priority],
            queued_at=ready, timeout_s=job.timeout_s, team=job.team,
            waiting_for=tuple(waiting),
            selector=tuple(sorted((job.node_labels or {}).items())),
            group=job.spread_group, spread=bool(job.spread),
            anti_affinity=bool(job.anti_affinity), attained_s=got.attained_s,
            checkpointable=bool(job.checkpointable), ran_s=got.ran_s, waited_s=got.waited_s,
            promoted_service_s=got.promoted_service_s, multi_node=bool(job.multi_node))
        self._reasons[job.id] = job.reason or ""
        self._dirty = True

    def submitted(self, job_ids: list[int]) -> None:
        """Called after jobs were committed as PENDING."""
        with self.lock, self.db.session() as s:
            for job_id in job_ids:
                job = s.get(Job, job_id)
                if job is not None and job.state == JobState.PENDING.value:
                    self.enqueue(s, job)
        self.wake()

    def cancel(self, job_id: int) -> str:
        """Cancel a job: at once when queued; by stopping its process when running.
        Returns the job's state afterwards."""
        with self.lock, self.db.session() as s:
            job = s.get(Job, job_id)
            if job.state in (JobState.PENDING.value, JobState.PREEMPTED.value):
                self.pending.pop(job_id, None)
                self._dirty = True
                transition(s, job, JobState.CANCELLED, "cancelled by the user")
                self._note_end(job, ran=False)
                self._cascade_failure(s, job)
                self._ended = True
                self.wake()  # the loop announces it, after this commits
            elif job_id in self.running:
                job.cancel_requested = True
                self._begin_stop(self.running[job_id], StopIntent.CANCEL, "cancelled by the user",
                                 time.time(), grace=self.settings.cancel_grace_s)
            return job.state

    # -- supervision --------------------------------------------------------------------

    def _supervise(self, now: float) -> None:
        if not self.running:
            return
        for job_id, tracked in list(self.running.items()):
            # One job at a time, each in its own transaction: whatever one job's reports do
            # to it, the others are still watched, finished and timed out.
            try:
                with self.db.session() as s:
                    self._supervise_one(s, job_id, tracked, now)
            except Exception:  # noqa: BLE001 - logged; the loop goes on with the others
                log.exception("supervising job %s failed; its reports since the last "
                              "tick are skipped", job_id)
                # read that batch again from the stored offset, and skip it this time
                tracked.handle.extra["events_offset"] = None
                tracked.handle.extra["skip_events"] = True

    def _supervise_one(self, s: Session, job_id: int, tracked: Tracked, now: float) -> None:
        self._read_events(s, job_id, tracked)
        ended = self._executor_of(tracked).poll(tracked.handle)
        if ended is not None:
            self._finish(s, s.get(Job, job_id), tracked, ended)
        elif tracked.stop is not None:
            escalate(self._executor_of(tracked), tracked, now, self.settings.cancel_grace_s)
        else:
            self._enforce_limits(tracked, now)

    def _read_events(self, s: Session, job_id: int, tracked: Tracked) -> None:
        """Apply what the job reported (progress, metrics, artifacts) since the last read."""
        offset = tracked.handle.extra.get("events_offset")
        if offset is None:
            offset = s.get(Job, job_id).events_offset
        new_offset, evs = events.read_new(tracked.handle.workdir, offset)
        if new_offset != offset:
            job = s.get(Job, job_id)
            if not tracked.handle.extra.pop("skip_events", False):
                events.apply(s, job, evs)
            job.events_offset = new_offset
        tracked.handle.extra["events_offset"] = new_offset

    def _enforce_limits(self, tracked: Tracked, now: float) -> None:
        job = tracked.job
        if job.timeout_s and now - job.started_at >= job.timeout_s:
            self._begin_stop(tracked, StopIntent.TIMEOUT, f"timed out after {job.timeout_s:g}s",
                             now, grace=self.settings.cancel_grace_s)
            return
        if now >= tracked.memory_check_at:
            tracked.memory_check_at = now + MEMORY_CHECK_S
            over = memory_over(self._executor_of(tracked), tracked)
            if over:
                self._begin_stop(tracked, StopIntent.MEMORY, over, now, 0)

    def _begin_stop(self, tracked: Tracked, intent: StopIntent, reason: str, now: float,
                    grace: float) -> None:
        begin_stop(self._executor_of(tracked), tracked, intent, reason, now, grace,
                   self.settings.cancel_grace_s)

    # -- endings -------------------------------------------------------------------------

    def _finish(self, s: Session, job: Job, tracked: Tracked, ended: Exit) -> None:
        """Record how an attempt ended, free its resources, and decide what comes next."""
        del self.running[job.id]
        for allocation in allocations_of(job.allocation):
            self.nodes.release(allocation)
        self._dirty = True
        self._ended = True
        if ended.kind is ExitKind.LOST:
            self.nodes.stale = True
        job.exit_code = ended.exit_code
        job.signal = ended.signal
        self._read_events(s, job.id, tracked)
        intent = tracked.stop.intent if tracked.stop else None
        if intent is StopIntent.CANCEL:
            transition(s, job, JobState.CANCELLED, "cancelled by the user")
            self._note_end(job, ran=True)
            self._cascade_failure(s, job)
        elif intent is StopIntent.SHUTDOWN:
            transition(s, job, JobState.PENDING, "requeued: the daemon shut down while it ran")
            self.enqueue(s, job)
        elif intent is StopIntent.PREEMPT:
            transition(s, job, JobState.PREEMPTED, tracked.stop.reason)
            transition(s, job, JobState.PENDING, "requeued after preemption; resumes from "
                       "its checkpoint")
            self.enqueue(s, job)
        elif ended.kind in (ExitKind.SUCCEEDED, ExitKind.YIELDED):
            job.result = (ended.result or {}).get("return")
            transition(s, job, JobState.SUCCEEDED, "exited with code 0")
            self._note_end(job, ran=True)
            self._release_dependents(s, job)
        else:
            limits = (StopIntent.TIMEOUT, StopIntent.MEMORY)
            reason = tracked.stop.reason if intent in limits else ended.message
            self.fail_or_retry(s, job, reason)

    def fail_or_retry(self, s: Session, job: Job, reason: str) -> None:
        job.failures += 1
        if job.failures <= job.max_retries:
            transition(s, job, JobState.PENDING,
                       f"{reason}; retry {job.failures} of {job.max_retries}")
            self.enqueue(s, job)
        else:
            transition(s, job, JobState.FAILED, reason)
            # it ran when its last start came after its last binding (not a failed launch)
            self._note_end(job, ran=bool(job.started_at and job.scheduled_at
                                         and job.started_at >= job.scheduled_at))
            self._cascade_failure(s, job)

    def _note_end(self, job: Job, ran: bool) -> None:
        started = job.started_at.timestamp() if ran and job.started_at else None
        self.stats.ended(job.team, job.state, started, (job.ended_at or utcnow()).timestamp())
        session = Session.object_session(job)
        if job.started_at is not None and session is not None:  # it ran, in some attempt
            self.history.add(job.team, service_of(session, job).attained_s,
                             bool(job.gpu or job.gpu_share_mb))

    def _release_dependents(self, s: Session, job: Job) -> None:
        for dep_id in self.dependents.pop(job.id, ()):
            waiting = self.pending.get(dep_id)
            if waiting is not None:
                rest = tuple(i for i in waiting.waiting_for if i != job.id)
                # ready to run from now: its wait (aging, the starvation guard) starts here
                ready = time.time() if not rest else waiting.queued_at
                self.pending[dep_id] = replace(waiting, waiting_for=rest,
                                               queued_at=max(waiting.queued_at, ready))
                self._dirty = True

    def _cascade_failure(self, s: Session, job: Job) -> None:
        for dep_id in self.dependents.pop(job.id, ()):
            dependent = s.get(Job, dep_id)
            if dependent is not None and dependent.state == JobState.PENDING.value:
                self._fail_dependent(s, dependent, job)

    def _fail_dependent(self, s: Session, job: Job, dep: Job) -> None:
        self.pending.pop(job.id, None)
        self._dirty = True
        self._ended = True
        transition(s, job, JobState.FAILED,
                   f"dependency job {dep.id} {dep.state.lower()}; not started")
        self._note_end(job, ran=False)
        self._cascade_failure(s, job)

    def _stop_all_for_shutdown(self) -> None:
        now = time.time()
        for tracked in self.running.values():
            self._begin_stop(tracked, StopIntent.SHUTDOWN, "the daemon shut down", now,
                             grace=self.settings.cancel_grace_s)
        deadline = now + self.settings.cancel_grace_s + 5
        while self.running and time.time() < deadline:
            self._supervise(time.time())
            time.sleep(0.05)

    # -- scheduling ------------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        if not self.pending or (not self._dirty and now - self._last_pass_at < RESCHEDULE_S):
            return
        self._dirty = False
        self._last_pass_at = now
        running = [  # one being stopped (a gang with a failed rank too) is no victim
            replace(t.job, checkpointable=False) if t.stop or t.handle.extra.get("bad")
            else t.job for t in self.running.values()
        ]
        started = time.perf_counter()
        out = schedule(list(self.pending.values()), self.nodes.schedulable(), running, now,
                       self.config, self.profile, self.history)
        self.last_pass_ms = (time.perf_counter() - started) * 1000
        self.stats.scheduled(self.last_pass_ms / 1000)
        if out.promoted:  # before the bindings: a promoted job may start at once
            self._promote(out.promoted)
        if out.bindings:
            self._bind(out.bindings)
        self._write_reasons(out.reasons)
        carried = out.preemptions if out.preemptions and not any(
            t.stop and t.stop.intent is StopIntent.PREEMPT for t in self.running.values()
        ) else []  # none while victims still yield
        nominate(self.pending, carried, out.held)
        for plan in carried:
            for victim in plan.victims:
                if victim in self.running:
                    self.stats.preempted(self.running[victim].job.team)
                    tracked = self.running[victim]
                    waiting = self.pending.get(plan.for_job)
                    by = job_named(plan.for_job, waiting.team if waiting else None,
                                   tracked.job.team)
                    self._begin_stop(tracked, StopIntent.PREEMPT,
                                     f"preempted by higher-priority {by}",
                                     now, grace=self.settings.preempt_grace_s)

    def _promote(self, job_ids: list[int]) -> None:
        """The policy promoted these waiting jobs (Tiresias' starvation guard): its
        counters of their service and waits start again from now, in the store too."""
        at = utcnow()
        with self.db.session() as s:
            for job_id in job_ids:
                waiting = self.pending.get(job_id)
                if waiting is None:
                    continue
                s.get(Job, job_id).promoted_at = at
                self.pending[job_id] = replace(waiting, queued_at=at.timestamp(),
                                               promoted_service_s=0.0, ran_s=0.0, waited_s=0.0)
            s.commit()

    def _bind(self, bindings) -> None:
        launched: list[tuple[int, Handle | Exception]] = []
        with self.db.session() as s:
            jobs = {b.job_id: s.get(Job, b.job_id) for b in bindings}
            for b in bindings:
                job = jobs[b.job_id]
                allocations = (b.allocation, *b.extra)
                for allocation in allocations:
                    self.nodes.take(allocation)
                del self.pending[job.id]
                self._reasons.pop(job.id, None)
                job.attempt += 1
                job.node = b.allocation.node
                job.allocation = stored(allocations)
                job.pid = job.pid_started = job.handle = None
                transition(s, job, JobState.SCHEDULED, f"bound to {describe(allocations)}"
                           + (", backfilled)" if b.backfilled else ")"))
            s.commit()  # SCHEDULED is durable before any process exists
            isolate = self.isolation_required()
            for b in bindings:
                job = jobs[b.job_id]
                try:
                    token = self.job_token(job.id) if self.job_token else None
                    roots = job.read_roots
                    if roots is None:  # a job submitted before read_roots were recorded
                        roots = [str(r) for r in self.settings.ingest_root_dirs]
                    executor = self.executor(job.executor)
                    plan = LaunchPlan(job.id, job.attempt, job.program, job.params,
                                      b.allocation, self.workdir(job.id), self.api_url,
                                      token, self.settings.api_ca, job.team, tuple(roots),
                                      remote_checkpoints=getattr(executor, "remote", False),
                                      checkpoint_artifact=job.checkpoint_artifact,
                                      require_isolation=isolate)
                    if b.extra:  # a gang over several nodes: one rank on each
                        leader = self.nodes.info[b.allocation.node].address
                        launched.append((job.id, GangExecutor(executor).launch(
                            plan, (b.allocation, *b.extra), leader)))
                    else:
                        launched.append((job.id, executor.launch(plan)))
                except Exception as e:  # noqa: BLE001 - e.g. fork failed: the job fails, not us
                    launched.append((job.id, e))
            for job_id, handle in launched:
                job = jobs[job_id]
                if isinstance(handle, Exception):
                    for allocation in allocations_of(job.allocation):
                        self.nodes.release(allocation)
                    if isinstance(handle, NodeUnavailable):  # it never ran: no failure
                        self.nodes.stale = True
                        transition(s, job, JobState.PENDING, f"not started: {handle}")
                        self.enqueue(s, job)
                    else:
                        self.fail_or_retry(s, job, f"could not start: {handle}")
                    continue
                self.record_handle(job, handle)
                transition(s, job, JobState.RUNNING, f"started as {handle.describe()}")
                self.stats.started(job.team, job.queued_at.timestamp(),
                                   job.started_at.timestamp())
                self.track(job, handle)

    @staticmethod
    def record_handle(job: Job, handle: Handle) -> None:
        """Store the executor's reference to the attempt (and its pid, for people)."""
        job.handle = dict(handle.ref)
        job.pid, job.pid_started = (handle.pid or None), (handle.pid_started or None)

    def track(self, job: Job, handle: Handle) -> None:
        allocation, *extra = allocations_of(job.allocation)
        started = (job.started_at or utcnow()).timestamp()
        handle.extra["events_offset"] = job.events_offset
        got = Service(0.0, 0.0, 0.0, None)
        session = Session.object_session(job)
        if job.attempt > 1 and session is not None:  # service of its earlier attempts
            got = service_of(session, job)
        self.running[job.id] = Tracked(
            RunningJob(job.id, allocation, PRIORITY_RANK[job.priority], started, job.timeout_s,
                       job.checkpointable, job.team, job.spread_group, got.attained_s,
                       extra=tuple(extra), promoted_service_s=got.promoted_service_s),
            handle, job.executor)

    # -- nodes ---------------------------------------------------------------------------

    def node_lost(self, name: str, reason: str) -> None:
        """A node died: each attempt running there ended as lost (retried elsewhere per
        its job's ``max_retries``; a checkpointable job resumes from its last checkpoint
        stored as an artifact). Its processes died with the node's agent, so none of them
        runs on while its retry starts."""
        lost = Exit(ExitKind.LOST, message=f"node {name} was lost: {reason}")
        for job_id, tracked in list(self.running.items()):
            if all(a.node != name for a in tracked.job.allocations):
                continue
            if is_gang(tracked.handle):  # its next poll stops its other ranks, then ends it
                GangExecutor(self.executor(tracked.executor)).node_lost(
                    tracked.handle, name, reason)
                continue
            with self.db.session() as s:
                self._finish(s, s.get(Job, job_id), tracked, lost)

    def drain(self, name: str, now: float | None = None) -> list[int]:
        """Move work off a node: it takes no new jobs; its checkpointable jobs yield and
        resume elsewhere; others run to their end (serving replicas are replaced by the
        serving controller before they stop). Returns the jobs asked to yield."""
        now = now or time.time()
        moved = []
        for job_id, tracked in self.running.items():
            on_node = any(a.node == name for a in tracked.job.allocations)
            if on_node and tracked.job.checkpointable:
                self._begin_stop(tracked, StopIntent.PREEMPT, f"node {name} is draining",
                                 now, grace=self.settings.preempt_grace_s)
                moved.append(job_id)
        self._dirty = True
        self.wake()
        return moved

    def _write_reasons(self, reasons: dict[int, str]) -> None:
        changed = [
            {"id": job_id, "reason": reason}
            for job_id, reason in reasons.items()
            if self._reasons.get(job_id) != reason
        ]
        if not changed:
            return
        with self.db.session() as s:
            s.execute(update(Job), changed)
        for row in changed:
            self._reasons[row["id"]] = row["reason"]
