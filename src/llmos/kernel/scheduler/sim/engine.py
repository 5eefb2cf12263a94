"""The discrete-event simulator: recorded jobs on a simulated cluster, scheduled by the
very function and stage objects the daemon uses (:func:`llmos.kernel.scheduler.core.schedule`
with a policy's :class:`Profile`), on a simulated clock with a simulated executor.

The loop follows the daemon's (:meth:`llmos.kernel.daemon.Daemon._schedule`): whenever
something changed (jobs arrived, attempts ended, victims stopped) one pass runs over the
whole queue and every node; its bindings are applied (the resources taken on each node,
the attempt started) and its preemption victims stopped (here at once: the simulated
executor's yield takes no time). A preempted job is queued again (``queued_at`` = now, as
the daemon's requeue does) and keeps only the work up to its last checkpoint (every
``checkpoint_interval_s`` of progress); resuming from a checkpoint costs ``restore_s``.
While jobs wait, a pass also runs every ``tick_s`` of simulated time (the daemon's
periodic pass: aging and attained-service priorities move with time alone). With
``round_s`` (scheduling rounds), passes run only at multiples of it: what happened in
between waits for the next round (far fewer passes over a long, overloaded trace). Each ended
job's service goes into the run's :class:`~llmos.kernel.scheduler.history.ServiceHistory`,
as the daemon's ended jobs go into its own.

Speed: events at the same instant are handled together before one pass; a pass runs only
when the state changed (or a tick is due); the queue and the running set are kept as
dicts updated in place, never rebuilt from the trace.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field, fields, replace

from llmos.kernel.resources import NodeCapacity, NodeState, Request, too_large_reason
from llmos.kernel.scheduler.core import schedule
from llmos.kernel.scheduler.framework import (
    Binding,
    PendingJob,
    Profile,
    RunningJob,
    SchedulerConfig,
    nominate,
)
from llmos.kernel.scheduler.history import ServiceHistory, uses_gpu
from llmos.kernel.scheduler.sim.trace import TraceJob

_PENDING_FIELDS = {f.name for f in fields(PendingJob)}
_RUNNING_FIELDS = {f.name for f in fields(RunningJob)}
GANGS = "extra" in {f.name for f in fields(Binding)}  # multi-node gangs in this scheduler
SAVES = "saved_at" in _RUNNING_FIELDS  # this scheduler weighs the work a preemption loses

SUCCEEDED, TIMED_OUT, REFUSED, NEVER_RAN = "succeeded", "time limit", "refused", "never ran"

MIN_ROUND_S = 1.0  # the shortest scheduling round (SimParams.round_s), simulated seconds

# A run stops with NoProgress past this many times (the trace's span + its total work +
# each job's restore and yield): no schedule that makes progress comes near it.
HORIZON_FACTOR = 100.0


class NoProgress(RuntimeError):
    """The simulation went on far beyond any schedule that makes progress (jobs preempting
    each other for ever: a livelock); the message says how far."""


def profile_for(name: str) -> Profile:
    """The policy ``name`` from :mod:`llmos.kernel.scheduler.policies`; ValueError naming
    the known ones."""
    try:
        from llmos.kernel.scheduler.policies import policy
    except ImportError:  # a scheduler without named policies: only its default profile
        from llmos.kernel.scheduler.profiles import DEFAULT_PROFILE
        if name in ("llmos-easy", "default"):
            return DEFAULT_PROFILE
        raise ValueError(f"unknown policy {name!r} (known: llmos-easy)") from None
    return policy(name)


def known_policies() -> list[str]:
    try:
        from llmos.kernel.scheduler.policies import POLICIES
    except ImportError:
        return ["llmos-easy"]
    return list(POLICIES)


@dataclass
class SimParams:
    checkpoint_interval_s: float = 1800.0  # progress between checkpoints (0: no loss)
    restore_s: float = 60.0  # resuming from a checkpoint costs this much
    tick_s: float = 300.0  # a pass at least this often while jobs wait
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    cpus_per_gpu: float | None = None  # a GPU job's cpu, per GPU (None: the node's share)
    memory_mb_per_gpu: int | None = None
    max_passes_per_instant: int = 64  # preemption chains at one instant stop there
    # Seconds a preemption victim takes to yield (the daemon's grace); 0: at once. While
    # victims are yielding no pass preempts more (the daemon's rule), and they are passed
    # to the scheduler as not checkpointable.
    stop_s: float = 0.0
    # Scheduling rounds: passes only at multiples of round_s of the simulated clock
    # (epoch seconds; what happened in between waits for the next one, as with Slurm's
    # sched_interval or Gavel's rounds); 0: a pass at every instant something changed,
    # as the daemon does. At least MIN_ROUND_S.
    round_s: float = 0.0


class SimJob:
    """One trace job's life in the simulation."""

    __slots__ = (
        "allocs",
        "attained",
        "attempt_start",
        "bindings",
        "done",
        "end",
        "first_start",
        "gpu_memory",
        "lost",
        "next_save",
        "outcome",
        "pending_since",
        "preemptions",
        "promoted_service",
        "ran",
        "request",
        "restore",
        "trace",
        "version",
        "waited",
        "waited_after_run",
    )

    def __init__(self, trace: TraceJob, request: Request):
        self.trace, self.request = trace, request
        self.done = 0.0  # checkpointed progress, seconds
        self.attained = 0.0  # GPU-seconds (cpu-seconds without GPUs) received so far
        self.first_start: float | None = None
        self.end: float | None = None
        self.waited = 0.0  # seconds spent queued, all attempts together
        self.pending_since = trace.submit
        self.attempt_start = 0.0
        self.restore = 0.0  # restore time of the current attempt
        self.preemptions = 0
        self.lost = 0.0  # seconds of work lost to preemptions (restores included)
        self.next_save = math.inf  # the moment of its attempt's next checkpoint
        self.outcome: str | None = None
        self.version = 0  # an end event of an older attempt is stale
        self.allocs: tuple = ()
        self.bindings: list[tuple[float, tuple]] = []  # (time, allocations) per attempt
        # Since its last promotion (PendingJob.promoted_service_s, ran_s, waited_s): the
        # service Tiresias' queues count (None: never promoted), seconds run, seconds
        # waited once it had run
        self.promoted_service: float | None = None
        self.ran = 0.0
        self.waited_after_run = 0.0
        self.gpu_memory = 0  # MB of the GPU its share runs on (RunningJob.gpu_memory_mb)

    @property
    def share(self) -> float:
        """What attained service counts per second, as RunningJob.service counts it."""
        r = self.request
        if r.gpu:
            return float(r.gpu)
        if r.gpu_share_mb:
            return min(1.0, r.gpu_share_mb / self.gpu_memory) if self.gpu_memory > 0 else 1.0
        return r.cpu


@dataclass
class SimResult:
    policy: str
    jobs: list[SimJob]
    gpus: int
    start: float
    end: float
    busy: list[tuple[float, int]]  # (time, GPUs held) at every change
    passes: int
    pass_s: list[float]  # wall seconds of each pass
    wall_s: float
    preemptions: int
    decisions: list[tuple[float, int, str]] = field(default_factory=list)  # (t, job, node)


class Simulator:
    def __init__(self, jobs: list[TraceJob], nodes: list[NodeCapacity], profile: Profile,
                 params: SimParams | None = None, record_decisions: bool = False):
        self.params = params or SimParams()
        if not (self.params.round_s == 0 or MIN_ROUND_S <= self.params.round_s < math.inf):
            raise ValueError(f"round_s must be 0 (no rounds) or at least {MIN_ROUND_S:g} s, "
                             f"not {self.params.round_s:g}")
        self.profile = profile
        self.capacities = nodes
        self.nodes = {cap.name: NodeState(cap) for cap in nodes}
        self.node_list = list(self.nodes.values())
        self.gpus = sum(len(c.gpus) for c in nodes)
        self.jobs = [SimJob(t, self._request(t)) for t in jobs]
        self.by_id = {j.trace.id: j for j in self.jobs}
        self.pending: dict[int, PendingJob] = {}
        self.running: dict[int, RunningJob] = {}
        self.ends: list[tuple[float, int, int]] = []  # (time, job id, version)
        self.stops: list[tuple[float, int, int]] = []  # victims yielding: (time, id, version)
        self.busy_gpus = 0
        self.busy: list[tuple[float, int]] = []
        self.pass_s: list[float] = []
        self.preemptions = 0
        self.history = ServiceHistory()  # what ended jobs received (as the daemon keeps)
        self.record = record_decisions
        self.decisions: list[tuple[float, int, str]] = []

    def _request(self, t: TraceJob) -> Request:
        p = self.params
        gpu_node = next((c for c in self.capacities if c.gpus), None)
        if t.gpus and gpu_node is not None:
            cpu_share = p.cpus_per_gpu or max(1, len(gpu_node.cores) // len(gpu_node.gpus))
            mem_share = p.memory_mb_per_gpu or gpu_node.memory_mb // len(gpu_node.gpus)
        else:
            cpu_share, mem_share = 1.0, 1024
        cpu = t.cpu if t.cpu is not None else cpu_share * max(1, t.gpus)
        memory = t.memory_mb if t.memory_mb is not None else int(mem_share * max(1, t.gpus))
        return Request(cpu=cpu, memory_mb=memory, gpu=t.gpus)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> SimResult:
        began = time.perf_counter()
        arrivals, n = self.jobs, len(self.jobs)
        ai = 0
        now = arrivals[0].trace.submit if arrivals else 0.0
        start, last_pass, passes = now, -math.inf, 0
        tick, rounds = self.params.tick_s, self.params.round_s > 0
        idle_passes = 0
        due = math.inf  # when the pass that a change calls for runs (its round)
        horizon, max_passes = self._limits(start)
        while True:
            candidates = []
            if ai < n:
                candidates.append(arrivals[ai].trace.submit)
            if self.ends:
                candidates.append(self.ends[0][0])
            if self.stops:
                candidates.append(self.stops[0][0])
            # the periodic pass while jobs wait (after a first one, which a change calls
            # for); with rounds, one overdue while nothing waited runs at the next round
            tick_at = math.inf
            if (self.pending and tick > 0 and passes
                    and (self.running or ai < n or idle_passes == 0)):
                tick_at = self._round(max(last_pass + tick, now) if rounds else
                                      last_pass + tick)
                candidates.append(tick_at)
            if self.pending and due < math.inf:
                candidates.append(due)
            if not candidates:
                break
            now = max(now, min(candidates))
            if now > horizon or passes > max_passes:
                self._no_progress(now - start, passes)
            changed = False
            while ai < n and arrivals[ai].trace.submit <= now:
                changed |= self._arrive(arrivals[ai], now)
                ai += 1
            while self.ends and self.ends[0][0] <= now:
                _, job_id, version = heapq.heappop(self.ends)
                job = self.by_id[job_id]
                if job.version == version:
                    self._end(job, now)
                    changed = True
            while self.stops and self.stops[0][0] <= now:
                _, job_id, version = heapq.heappop(self.stops)
                job = self.by_id[job_id]
                if job.version == version and job_id in self.running:
                    self._preempt(job, now)
                    changed = True
            if changed and due == math.inf:
                due = self._round(now)
            if not self.pending:  # nothing to place: the next change calls for its round
                due = math.inf
                continue
            if now >= due or now >= tick_at:
                bound = self._passes(now)
                passes += bound[0]
                last_pass = now
                idle_passes = 0 if (bound[1] or due <= now) else idle_passes + 1
                due = math.inf
        for job in self.jobs:
            if job.outcome is None:
                job.outcome = NEVER_RAN
        return SimResult(self.profile.name, self.jobs, self.gpus, start, now, self.busy,
                         passes, self.pass_s, time.perf_counter() - began, self.preemptions,
                         self.decisions)

    def _round(self, t: float) -> float:
        """The first moment a pass may run at or after ``t``: ``t`` itself, or with
        rounds the next multiple of ``round_s``."""
        r = self.params.round_s
        return t if r <= 0 else math.ceil(t / r) * r

    def _limits(self, start: float) -> tuple[float, int]:
        """(the simulated moment, the number of passes) past which a run is a livelock:
        HORIZON_FACTOR times the trace's span plus its total work (each job's run time,
        restore and yield), and as many passes as ticks over that time plus events."""
        p, jobs = self.params, self.jobs
        span = (max(j.trace.submit for j in jobs) - start) if jobs else 0.0
        work = sum(j.trace.duration + p.restore_s + p.stop_s for j in jobs)
        budget = HORIZON_FACTOR * (span + work + max(p.tick_s, 1.0) + p.round_s)
        ticks = budget / p.tick_s if p.tick_s > 0 else 0.0
        passes = int(min(ticks, 1e12)) + 1000 * (len(jobs) + 1)
        return start + budget, passes

    def _no_progress(self, elapsed: float, passes: int) -> None:
        running = ", ".join(str(i) for i in sorted(self.running)[:5])
        worst = max(self.jobs, key=lambda j: j.preemptions, default=None)
        most = (f"; job {worst.trace.id} was preempted {worst.preemptions:,} times"
                if worst is not None and worst.preemptions else "")
        raise NoProgress(
            f"no progress: livelock? policy {self.profile.name} ran {elapsed:,.0f} simulated "
            f"seconds and {passes:,} passes, over {HORIZON_FACTOR:g}x the trace's span plus "
            f"its total work, with {len(self.pending):,} job(s) waiting and "
            f"{len(self.running):,} running{f' (job {running} ...)' if running else ''}{most}")

    def _passes(self, now: float) -> tuple[int, int]:
        """Passes at ``now`` until one stops no victim; returns (passes, jobs bound)."""
        passes = bound = 0
        for _ in range(self.params.max_passes_per_instant):
            passes += 1
            stopped, started = self._pass(now)
            bound += started
            if not stopped or not self.pending:
                break
        return passes, bound

    def _pass(self, now: float) -> tuple[int, int]:
        began = time.perf_counter()
        if self.params.checkpoint_interval_s > 0 and SAVES:
            self._checkpoints(now)
        running = list(self.running.values())
        if self.stops:  # yielding victims cannot be preempted again (as in the daemon)
            yielding = {job_id for _, job_id, _ in self.stops}
            running = [replace(r, checkpointable=False) if r.id in yielding else r
                       for r in running]
        out = schedule(list(self.pending.values()), self.node_list, running, now,
                       self.params.config, self.profile, self.history)
        self.pass_s.append(time.perf_counter() - began)
        for job_id in getattr(out, "promoted", ()):  # before the bindings: one may start
            self._promote(self.by_id[job_id], now)
        for b in out.bindings:
            self._start(self.by_id[b.job_id], b, now)
        stopped = 0
        plans = [] if self.stops else out.preemptions  # none while victims still yield
        nominate(self.pending, plans, out.held)
        for plan in plans:  # the daemon asks each victim to yield
            for victim in plan.victims:
                if victim not in self.running:
                    continue
                if self.params.stop_s > 0:
                    heapq.heappush(self.stops, (now + self.params.stop_s, victim,
                                                self.by_id[victim].version))
                else:
                    self._preempt(self.by_id[victim], now)
                    stopped += 1
        if out.bindings or stopped:
            self.busy.append((now, self.busy_gpus))
        return stopped, len(out.bindings)

    def _checkpoints(self, now: float) -> None:
        """Each running job's last checkpoint by ``now`` (``RunningJob.saved_at``: what a
        preemption would throw away), every ``checkpoint_interval_s`` of progress."""
        interval = self.params.checkpoint_interval_s
        for job_id, r in self.running.items():
            job = self.by_id[job_id]
            if now >= job.next_save:
                began = job.attempt_start + job.restore  # progress starts after the restore
                k = math.floor((now - began) / interval)
                job.next_save = began + (k + 1) * interval
                self.running[job_id] = replace(r, saved_at=began + k * interval)

    # -- the simulated executor -----------------------------------------------------------

    def _arrive(self, job: SimJob, now: float) -> bool:
        if self._refused(job.request):
            job.outcome = REFUSED
            return False
        job.pending_since = job.trace.submit
        self._enqueue(job, job.trace.submit)
        return True

    def _refused(self, request: Request) -> bool:
        """What the daemon's submission refuses: larger than every node (than the whole
        cluster, when the scheduler places gangs over several nodes)."""
        if request.gpu > self.gpus:
            return True
        return not GANGS and too_large_reason(request, self.capacities) is not None

    def _enqueue(self, job: SimJob, queued_at: float) -> None:
        t = job.trace
        values = {"id": t.id, "request": job.request, "priority": t.priority,
                  "queued_at": queued_at, "timeout_s": t.time_limit_s, "team": t.team,
                  "attained_s": job.attained, "duration_s": t.duration,
                  "checkpointable": t.checkpointable,
                  "promoted_service_s": job.promoted_service, "ran_s": job.ran,
                  "waited_s": job.waited_after_run}
        self.pending[t.id] = PendingJob(**{k: v for k, v in values.items()
                                           if k in _PENDING_FIELDS})

    def _start(self, job: SimJob, binding: Binding, now: float) -> None:
        del self.pending[job.trace.id]
        allocs = (binding.allocation, *getattr(binding, "extra", ()))
        for alloc in allocs:
            self.nodes[alloc.node].take(alloc)
            self.busy_gpus += _whole_gpus(alloc)
        job.allocs = allocs
        job.waited += now - job.pending_since
        if job.ran > 0:  # a wait after it ran (since its last promotion)
            job.waited_after_run += now - job.pending_since
        if job.first_start is None:
            job.first_start = now
        job.attempt_start = now
        job.restore = self.params.restore_s if job.done > 0 else 0.0
        job.gpu_memory = self._shared_gpu_memory(binding.allocation)
        t = job.trace
        values = {"id": t.id, "allocation": binding.allocation, "priority": t.priority,
                  "started_at": now, "timeout_s": t.time_limit_s,
                  "checkpointable": t.checkpointable, "team": t.team,
                  "attained_s": job.attained, "extra": tuple(allocs[1:]),
                  "promoted_service_s": job.promoted_service,
                  "gpu_memory_mb": job.gpu_memory,
                  # nothing saved in this attempt yet; None: nothing is ever lost
                  "saved_at": now if self.params.checkpoint_interval_s > 0 else None}
        job.next_save = now + job.restore + self.params.checkpoint_interval_s
        self.running[t.id] = RunningJob(**{k: v for k, v in values.items()
                                           if k in _RUNNING_FIELDS})
        end = now + job.restore + (t.duration - job.done)
        if t.time_limit_s is not None:
            end = min(end, now + t.time_limit_s)
        job.version += 1
        heapq.heappush(self.ends, (end, t.id, job.version))
        if self.record:
            self.decisions.append((now, t.id, binding.allocation.node))
            job.bindings.append((now, allocs))

    def _promote(self, job: SimJob, now: float) -> None:
        """The starvation guard promoted the waiting ``job``: its counters since promotion
        restart at 0, and it counts as queued from ``now`` (as the daemon's do)."""
        job.promoted_service, job.ran, job.waited_after_run = 0.0, 0.0, 0.0
        self.pending[job.trace.id] = replace(self.pending[job.trace.id], queued_at=now,
                                             promoted_service_s=0.0, ran_s=0.0, waited_s=0.0)

    def _shared_gpu_memory(self, alloc) -> int:
        """The memory (MB) of the GPU a share holds; 0 for anything else."""
        if not getattr(alloc, "gpu_share_mb", 0) or not alloc.gpus:
            return 0
        gpus = {g.index: g for g in self.nodes[alloc.node].capacity.gpus}
        gpu = gpus.get(alloc.gpus[0])
        return gpu.memory_mb if gpu is not None else 0

    def _release(self, job: SimJob, now: float) -> float:
        del self.running[job.trace.id]
        for alloc in job.allocs:
            self.nodes[alloc.node].release(alloc)
            self.busy_gpus -= _whole_gpus(alloc)
        job.allocs = ()
        held = now - job.attempt_start
        job.attained += held * job.share
        job.ran += held
        if job.promoted_service is not None:
            job.promoted_service += held * job.share
        self.busy.append((now, self.busy_gpus))
        return held

    def _end(self, job: SimJob, now: float) -> None:
        held = self._release(job, now)
        progress = held - job.restore
        if job.done + progress + 1e-6 >= job.trace.duration:
            job.outcome = SUCCEEDED
        else:  # stopped at its declared time limit
            job.outcome = TIMED_OUT
        job.end = now
        self.history.add(job.trace.team, job.attained, uses_gpu(job.request))

    def _preempt(self, job: SimJob, now: float) -> None:
        held = self._release(job, now)
        progress = max(0.0, held - job.restore)
        interval = self.params.checkpoint_interval_s
        saved = progress if interval <= 0 else math.floor(progress / interval) * interval
        job.done += saved
        job.lost += held - saved
        job.preemptions += 1
        self.preemptions += 1
        job.version += 1  # its pending end event is stale
        job.pending_since = now
        self._enqueue(job, now)


def _whole_gpus(alloc) -> int:
    return 0 if getattr(alloc, "gpu_share_mb", 0) else len(alloc.gpus)


def simulate(jobs: list[TraceJob], nodes: list[NodeCapacity], policy: str | Profile,
             params: SimParams | None = None, record_decisions: bool = False) -> SimResult:
    profile = profile_for(policy) if isinstance(policy, str) else policy
    return Simulator(jobs, nodes, profile, params, record_decisions).run()
