"""The policies' own stages: queue orders, head-of-line blocking, the attained-service
rules (Tiresias' discretized 2D-LAS, llmos' aging classes), team fair share, and the
preemption and reservation rules that go with them. :mod:`.policies` lists them in
profiles; the generic stages are in :mod:`.profiles` and :mod:`.gang`, the choice of
preemption victims in :mod:`.preemption`.

Attained service (``PendingJob.attained_s``, ``RunningJob.service(now)``) is GPU-seconds:
GPUs held x seconds run over every attempt (cpu-seconds for a job without GPUs), the
"2D" of Tiresias' 2D-LAS (spatial x temporal). No rule here needs to know a duration,
except :class:`ShortestFirst` (the ``sjf`` oracle). llmos' classes are those of the
service a job is expected to still need, learnt from its team's finished jobs
(:mod:`.history`, passed in as ``Cycle.history``), or of the service it received while
its team has too few finished jobs (plain LAS).

Constants are round figures chosen before any trace was looked at, never fitted:
LAS classes are decades of GPU-seconds (10^3, 10^4, 10^5: about 17 GPU-minutes, 2.8
GPU-hours, 28 GPU-hours); waiting lifts a job one class per decade of waiting beyond
``aging_s`` (1x, 10x, 100x ``aging_s``); a checkpointable job is preempted for a job of
its priority class only after it ran one quantum (``aging_s``) in its attempt and while
less than a quantum of its work is unsaved, so such a preemption costs at most the restore plus
a quantum (and its yield) against at least a quantum gained. The one
constant set after runs on the development trace is the starvation guard's
(``STARVE_AGINGS``: the lift's third decade, 100x ``aging_s``; 10x preempted far too often).
"""

from __future__ import annotations

import math
from collections import defaultdict
from operator import attrgetter

import numpy as np

from llmos.kernel.resources import MILLI, Allocation, NodeState
from llmos.kernel.scheduler import stages
from llmos.kernel.scheduler.columns import Columns, classes, decades, running_sums
from llmos.kernel.scheduler.framework import (
    OK,
    Cycle,
    PendingJob,
    Reservation,
    RunningJob,
    Status,
    job_named,
    spans_nodes,
)
from llmos.kernel.scheduler.gang import GangBackfill
from llmos.kernel.scheduler.history import uses_gpu
from llmos.kernel.scheduler.preemption import VictimIndex
from llmos.kernel.scheduler.profiles import Nodes, Stage

# --- orders -----------------------------------------------------------------------------------

_ARRIVAL = attrgetter("queued_at", "id")  # (time queued, id), built in C


class ArrivalOrder(Stage):
    """Queue sort: strict arrival order (time queued, then id); no classes."""

    name = "arrival-order"

    def order(self, jobs: list[PendingJob], cycle: Cycle) -> list[PendingJob]:
        return sorted(jobs, key=_ARRIVAL)


class HeadBlock(Stage):
    """Strict FIFO's head-of-line blocking. Post-filter: the first job that finds no room
    blocks the queue; pre-filter: every job after it waits (no backfill). A job that can
    NEVER run, or waits for its dependencies or its quota, blocks nobody."""

    name = "head-block"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = None
        return True

    def pre_filter(self, cycle: Cycle, job: PendingJob) -> Status:
        head = cycle.state[self]
        if head is None:
            return OK
        # the reason, made once per pass for the head's team and once for the others (a
        # long FIFO queue waits behind one job)
        same = head[1] == job.team
        status = head[2].get(same)
        if status is None:
            who = job_named(head[0], head[1], job.team)
            status = head[2][same] = Status.wait(
                f"waiting for {who} at the head of the queue (fifo)")
        return status

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        cycle.state[self] = (job.id, job.team, {})
        return False


class ShortestFirst(Stage):
    """Queue sort (oracle): shortest ``duration_s`` first (unknown last), then arrival."""

    name = "shortest-first"

    def order(self, jobs: list[PendingJob], cycle: Cycle) -> list[PendingJob]:
        inf = math.inf
        return sorted(jobs, key=lambda j: (inf if j.duration_s is None else j.duration_s,
                                           j.queued_at, j.id))


# --- Tiresias: discretized 2D-LAS ------------------------------------------------------------

TIRESIAS_THRESHOLDS = (3600.0,)  # GPU-seconds: K = 2 queues split at one GPU-hour
# The starvation guard (the paper's PROMOTEKNOB): a job below the top queue that has
# waited this many times as long as it ran, both counted since its last promotion, goes
# back to the top queue, at its tail, with its counters at 0 (so it is not demoted at once).
STARVE_LIMIT = 10.0


def tiresias_queue(attained: float, thresholds: tuple[float, ...] = TIRESIAS_THRESHOLDS) -> int:
    q = 0
    for t in thresholds:
        if attained < t:
            break
        q += 1
    return q


def starved(job: PendingJob, now: float) -> bool:
    """Whether the starvation guard promotes ``job`` now: below the top queue, it ran
    since its last promotion and has waited since (earlier waits and this one)
    STARVE_LIMIT times as long."""
    return (job.ran_s > 0 and tiresias_queue(job.queue_service_s) > 0
            and job.waited_s + now - job.queued_at >= STARVE_LIMIT * job.ran_s)


def tiresias_pending_queue(job: PendingJob, now: float) -> int:
    """Its queue by the service it received since its last promotion; 0 when the
    starvation guard promotes it now (at the tail of queue 0: as if queued now)."""
    return 0 if starved(job, now) else tiresias_queue(job.queue_service_s)


class TiresiasQueues(Stage):
    """Queue sort: Tiresias' queues (least attained GPU-service first, discretized), FIFO
    (time queued) inside a queue. Post-filter: preemption of checkpointable running jobs
    of lower-priority queues, for every job that finds no room while such jobs run."""

    name = "tiresias"

    def begin(self, cycle: Cycle) -> bool:
        now = cycle.now
        queue = {r.id: tiresias_queue(r.queue_service(now)) for r in cycle.running
                 if r.checkpointable}
        pool = {r.id: r for r in cycle.running if queue.get(r.id, 0) > 0}  # queue 0: never
        cycle.state[self] = VictimIndex(cycle, pool, queue,
                                        key=lambda r: (-queue[r.id], -r.started_at))
        return True

    def order(self, jobs: list[PendingJob], cycle: Cycle) -> list[PendingJob]:
        """By (:func:`tiresias_pending_queue`, time queued, id), worked out as columns.
        The jobs the starvation guard promotes now go to ``cycle.out.promoted``."""
        cols = Columns(jobs)
        ran, queued = cols.col("ran_s"), cols.col("queued_at")
        served = classes(cols.col("queue_service_s"), TIRESIAS_THRESHOLDS)
        promote = ((ran > 0) & (served > 0)
                   & (cols.col("waited_s") + cycle.now - queued >= STARVE_LIMIT * ran))
        queue = np.where(promote, 0, served)
        if promote.any():  # each joins the top queue at its tail: queued from now on
            cycle.out.promoted.extend(cols.values("id")[i] for i in np.flatnonzero(promote))
            queued = np.where(promote, cycle.now, queued)
        return cols.taken(np.lexsort((cols.col("id"), queued, queue)))

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        """Preempt for ``job`` (True: go on with the next blocked job; False: no job after
        it can preempt in this pass)."""
        victims: VictimIndex = cycle.state[self]
        mine = tiresias_pending_queue(job, cycle.now)
        if not victims.above(mine):
            return False  # the queue is sorted: no job after this one has a lower queue
        plans = victims.take_for(cycle, job, mine, spans_nodes(cycle.config, job))
        cycle.out.preemptions.extend(plans or ())
        return True


# --- llmos: priority classes x service classes (expected need), aging, fair share -------------

LAS_THRESHOLDS = (1e3, 1e4, 1e5)  # GPU-seconds (cpu-seconds without GPUs): decades
STARVE_AGINGS = 100  # waited this many aging_s (ready to run): preempts as class 0


def las_class(attained: float) -> int:
    return tiresias_queue(attained, LAS_THRESHOLDS)


def need_class(history, team: str | None, attained: float, gpu: bool = True) -> int:
    """The class of the service a job of ``team`` that received ``attained`` is expected to
    still need (``history``'s estimate from the team's ended jobs of the same kind, with
    GPUs or without, :mod:`.history`), or, without an estimate, of the service it received
    (plain LAS). Smaller runs first."""
    if history is not None:
        left = history.remaining(team, attained, gpu)
        if left is not None:
            return las_class(left)
    return las_class(attained)


def waiting_lift(waited: float, aging_s: float) -> int:
    """Classes a wait lifts: one at ``aging_s``, one more per decade beyond (10x, 100x
    ``aging_s``...; counted by comparing, as :meth:`LasAging.order` does for a queue)."""
    if waited < aging_s:
        return 0
    ratio, lift = waited / aging_s, 1
    while ratio >= 10.0 ** lift:
        lift += 1
    return lift


def llmos_rank(job: PendingJob, now: float, aging_s: float, max_rank: int,
               history=None) -> tuple[int, int]:
    """(priority class, aged as today, negated; service class (:func:`need_class`)
    lowered by the wait): smaller runs first. A job expected to need much waits at most
    ~100x aging_s behind those expected to need little, which never wait behind it
    unless it has waited."""
    waited = now - job.queued_at
    rank = min(max_rank, job.priority + (1 if waited >= aging_s else 0))
    cls = need_class(history, job.team, job.attained_s, uses_gpu(job.request))
    return -rank, max(0, cls - waiting_lift(waited, aging_s))


def dominant_share(team_cpu: float, team_mem: float, team_gpu: float,
                   totals: tuple[float, float, float]) -> float:
    return max(team_cpu / totals[0], team_mem / totals[1],
               team_gpu / totals[2] if totals[2] else 0.0)


class LasAging(Stage):
    """Queue sort of ``llmos``: by :func:`llmos_rank` (priority class with aging, then
    service class lowered by waiting: the class of the service it is expected to still
    need, :func:`need_class`, which is its attained-service class without a history);
    inside a rank, teams in turn by least dominant share (DRF, equal weights; quotas cap
    each team separately), FIFO inside a team. Each job's fair-share key is its team's
    share at the start of the pass plus the dominant shares of the team's jobs before it
    in the rank, as if those ran (weighted fair queueing's virtual start). Worked out as
    columns (:mod:`.columns`): one pass over the queue's fields, one sort."""

    name = "las-aging"

    def order(self, jobs: list[PendingJob], cycle: Cycle) -> list[PendingJob]:
        # as columns (this runs for 10,000s of jobs at every pass): llmos_rank as one int,
        # (max_rank - class) * 8 + service class, then the fair-share start of each job
        if not jobs:
            return []
        cfg, cols, history = cycle.config, Columns(jobs), cycle.history
        attained = cols.col("attained_s")
        if history is None:
            cls = classes(attained, LAS_THRESHOLDS)
        else:  # need_class once per (team, service received, GPU or not)
            gpu = (cols.col("gpu") > 0) | (cols.col("gpu_share_mb") > 0)  # uses_gpu
            keys = list(zip(cols.values("team"), attained.tolist(), gpu.tolist()))
            cls = cols.per_value(keys, lambda team, a, g: need_class(history, team, a, g))
        waited = cycle.now - cols.col("queued_at")
        aged = waited >= cfg.aging_s
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # aging_s ~ 0
            ratio = waited / cfg.aging_s
        # waiting_lift (lifts beyond the top service class change nothing)
        lift = aged * (1 + decades(ratio, range(1, len(LAS_THRESHOLDS))))
        priority, top = cols.col("priority"), cfg.max_rank
        priority = np.minimum(priority + aged, top)  # as llmos_rank: capped at max_rank
        rank = (top - priority) * 8 + np.maximum(cls - lift, 0)
        # fair share: a team's share now plus those of its jobs before it in its rank
        totals, shares = team_shares(cycle)
        share = np.maximum(np.maximum(cols.col("cpu") / totals[0],
                                      cols.col("memory_mb") / totals[1]),
                           cols.col("gpu") / (totals[2] or math.inf))
        team, names = cols.codes("team")
        place = cols.arrival()
        slot = rank * len(names) + team  # one number per (rank, team)
        by_slot = np.lexsort((place, slot))
        base = np.array([shares.get(t, 0.0) for t in names])[team]
        start = np.empty(cols.n)
        start[by_slot] = running_sums(base[by_slot], share[by_slot], slot[by_slot])
        return cols.taken(np.lexsort((place, start, rank)))


def team_shares(cycle: Cycle) -> tuple[tuple[float, float, float], dict]:
    caps = [n.capacity for n in cycle.nodes]
    totals = (max(1.0, float(sum(len(c.cores) for c in caps))),
              max(1.0, float(sum(c.memory_mb for c in caps))),
              float(sum(len(c.gpus) for c in caps)))
    used: dict = {}
    for r in cycle.running:
        held, team = r.held, r.team
        before = used.get(team)
        used[team] = held if before is None else (
            before[0] + held[0], before[1] + held[1], before[2] + held[2])
    shares = {t: dominant_share(c / MILLI, m, g, totals) for t, (c, m, g) in used.items()}
    return totals, shares


class LasPreemption(Stage):
    """Post-filter of ``llmos``: one preemption a pass, for the first job in queue order
    that finds no room and has victims: the fewest running checkpointable jobs of a
    strictly lower rank, of a lower NOMINAL priority class (at once, as ``llmos-easy``),
    or of its nominal class with a higher service class (what they are expected to still
    need by now, against what the waiting job is expected to need, its wait left aside:
    :func:`need_class`) once they ran one quantum (``aging_s``) in their attempt and have
    less than a quantum of work not yet saved (:meth:`RunningJob.unsaved`: since their
    last checkpoint); lowest rank first, then the least work lost, then the most recently
    started (found with a :class:`VictimIndex`). The room they free is held for that job
    (:class:`HeldRoom`). Blocked jobs without victims before it (a long job lifted by its
    wait, which no running job is expected to outlast) no longer stop the search: when
    they did, one team's short jobs waited behind other teams' long ones for days on a
    busy cluster. Preempting for every blocked job, as Tiresias does, preempted jobs of a
    sweep of equal jobs near their end again and again (their team's history expects
    more of a job that ran long) and cost up to 29 % more average JCT on the development
    trace's days.
    With its team's history a job near the usual end of its team's jobs is not preempted
    for a fresh one, which would need more (least attained service alone would: its class
    only grows).

    Waiting orders the queue (:func:`llmos_rank`) but does not justify a preemption: were
    the aged rank compared, two equal jobs would preempt each other every quantum (each
    requeue restarts the other's wait) and, with checkpoints rarer than a quantum, never
    progress. Compared without the wait, a preemption within a class needs the victim's
    service class strictly above the waiting job's, and each victim has had a quantum of
    service in its attempt first: two jobs take turns of at least a quantum, never
    thrash. Nor does a preemption within a class throw away a quantum of work or more: a
    job that checkpoints less often than every quantum is a victim only in the quantum
    after each checkpoint (never before its attempt's first one), so each of its attempts
    keeps what it saved (without this, on a busy cluster a job whose checkpoints are rarer
    than the quantum is preempted before its first one again and again, and never
    progresses). (Expected need is not monotone in the service received, so within the range
    of its team's history a job's class may fall as well as rise; past it, it only
    rises.) The one exception is the starvation guard (as Tiresias'): a job that waited
    STARVE_AGINGS x aging_s (16.7 h by default, counted from when it was ready to run)
    counts as class 0, so a gang that lost its node to small jobs takes one back (its
    victims of its class still only with less than a quantum unsaved); equal jobs then
    take turns that long."""

    name = "las-preemption"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = None  # the victims, indexed when a job first finds no room
        return True

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        victims = cycle.state[self]
        if victims is None:
            victims = cycle.state[self] = self.victims(cycle)
        if not victims.pool:
            return False  # no victim for any job of the pass
        starved = cycle.now - job.queued_at >= STARVE_AGINGS * cycle.config.aging_s
        mine = (-job.priority, 0 if starved else
                need_class(cycle.history, job.team, job.attained_s, uses_gpu(job.request)))
        plans = (victims.take_for(cycle, job, mine, spans_nodes(cycle.config, job))
                 if victims.above(mine) else None)
        if not plans:
            return True  # a job after it may have victims
        cycle.out.preemptions.extend(plans)
        return False  # one preemption a pass

    @staticmethod
    def victims(cycle: Cycle) -> VictimIndex:
        """The running checkpointable jobs, each at level (its priority class negated, its
        service class (:func:`need_class`), or -1 while a job of its priority may not take
        it: in its attempt's first quantum, or with a quantum or more unsaved). A job of
        rank ``mine`` (as :func:`llmos_rank` without the wait) may take those of a level
        above: any of a lower priority, those of its priority and a higher service class
        past their first quantum."""
        now, quantum, history = cycle.now, cycle.config.aging_s, cycle.history
        pool, level, order = {}, {}, {}
        for r in cycle.running:
            if not r.checkpointable:
                continue
            unsaved = r.unsaved(now)
            cls = need_class(history, r.team, r.service(now), bool(r.allocation.gpus))
            its_class = now - r.started_at >= quantum and unsaved < quantum
            pool[r.id] = r
            level[r.id] = (-r.priority, cls if its_class else -1)
            order[r.id] = (r.priority, -cls, unsaved, -r.started_at)
        return VictimIndex(cycle, pool, level, key=lambda r: order[r.id])


class HeldRoom(Stage):
    """Pre-filter of ``llmos``: the room that preempted jobs freed for a waiting job
    (:attr:`PendingJob.nominated`, as Kubernetes' nominated node) is held for it until its
    turn: a job before it in the queue never takes it. A waiting job may preempt for
    itself while a job before it, which may not (of a class no victim is below, such as a
    long job lifted by its wait), waits too: without the hold, that job would take what
    the preemption freed at the next pass, and the preemption would have served nobody
    it was meant for. The hold is taken at the start of each pass when the job fits its
    node then (its victims have stopped), given back at the job's turn (first among its
    pre-filters), whether it then starts there, elsewhere, or not at all; once held, the
    nomination is spent (``SchedulerOutput.held``): a job that cannot start at its turn
    (its team's quota, say) holds nothing at the next pass. A gang over several nodes is
    never nominated."""

    name = "held-room"

    def __init__(self, fit):
        self.fit = fit  # the filter whose remembered answers a hold given back changes

    def begin(self, cycle: Cycle) -> bool:
        held = {}
        nominated = [j for j in cycle.pending if j.nominated is not None]
        if nominated:
            by_name = {n.name: n for n in cycle.nodes}
            for job in nominated:
                node = by_name.get(job.nominated)
                if node is not None and node.fits(job.request):
                    held[job.id] = (node, node.allocate(job.request))
        cycle.state[self] = held
        cycle.out.held.extend(held)
        return bool(held)

    def pre_filter(self, cycle: Cycle, job: PendingJob) -> Status:
        held = cycle.state[self].pop(job.id, None)
        if held is not None:
            node, allocation = held
            node.release(allocation)
            self.fit.room_freed(cycle)
        return OK


class LeastBlockingBackfill(GangBackfill):
    """EASY backfill of ``llmos``: the blocked head reserves ONE node (or its gang's
    nodes), the one it can start on soonest: by running jobs' timeouts when they have
    them, else the node where the fewest running jobs must end (the youngest first: with
    heavy-tailed run times the least-served are likeliest to end soon). Only the reserved
    node(s) keep room for it; any job may backfill elsewhere. When the reservation's
    moment is unknown (running jobs without timeouts), no job counts as ending before it:
    on the reserved node(s) a job goes only beside the head's room, whatever its timeout
    (else a stream of short jobs with timeouts could hold the head off for ever)."""

    name = "least-blocking-backfill"

    @staticmethod
    def ends_in_time(cycle: Cycle, job: PendingJob, reservation) -> bool:
        """At an unknown moment (infinity), no job ends before it."""
        return reservation.at != math.inf and stages.ends_before(job, cycle.now, reservation)

    @staticmethod
    def reserve_one(job: PendingJob, nodes: Nodes, cycle: Cycle):
        return reserve_least_blocking(job, nodes, cycle.running, cycle.now)

    @staticmethod
    def keep(futures: dict[str, NodeState], plan) -> dict[str, NodeState]:
        names = {node.name for node, _ in plan or ()}
        return {n: f for n, f in futures.items() if n in names}


def reserve_least_blocking(job: PendingJob, nodes: Nodes, running: list[RunningJob],
                           now: float) -> tuple[Reservation, dict[str, NodeState]]:
    """The one node the blocked ``job`` can start on soonest, and that node's state then
    with the job placed. Soonest: the least ``at`` (the latest timeout among the running
    jobs that must end first, infinite without timeouts), then the fewest such jobs.
    Counted in GPUs for a GPU job (checked exactly on the chosen node). ``job`` is blocked:
    it fits none of ``nodes`` now (the search stops at the first node that can do no
    better, without looking for one where it would fit)."""
    request = job.request
    by_node: dict[str, list[tuple[RunningJob, Allocation]]] = defaultdict(list)
    for r in running:
        for a in r.allocations:
            by_node[a.node].append((r, a))
    # no node that must wait can do better than one job ending at the earliest timeout
    floor = (min((r.expected_end for r in running), default=math.inf), 1)

    def ending_order(name: str) -> list[tuple[RunningJob, Allocation]]:
        return sorted(by_node.get(name, ()),
                      key=lambda ra: (ra[0].expected_end, ra[0].service(now)))

    best = None
    for node in nodes:
        if request.gpu > len(node.capacity.gpus):
            continue
        if node.fits(request):
            best = ((-math.inf, 0), node)
            break
        if best is not None and _at_least(node, request, by_node.get(node.name, ())) >= best[0]:
            continue  # cannot beat the best (cheaper to tell than to work out)
        key = _release_until(node, request, ending_order(node.name), exact=not request.gpu)
        if key is not None and (best is None or key < best[0]):
            best = (key, node)
            if key <= floor:
                break  # the first node that good: none after it is chosen
    if best is None:
        return Reservation(job.id, nodes[0].name, math.inf), {}
    node = best[1]
    here = ending_order(node.name)
    future = stages.copy_node(node)
    at = -math.inf
    for r, a in here:
        if future.fits(request):
            break
        future.release(a)
        at = max(at, r.expected_end)
    if not future.fits(request):
        return Reservation(job.id, node.name, math.inf), {}
    future.allocate(request)
    return Reservation(job.id, node.name, at), {node.name: future}


def _at_least(node: NodeState, request, here) -> tuple[float, int]:
    """A lower bound of :func:`_release_until`'s key on ``node``: no job there ends before
    the earliest timeout, and at least the GPUs missing over the most one job holds must
    end."""
    at, most = math.inf, 0
    for r, a in here:
        end, whole = r.expected_end, a.whole_gpus
        if end < at:
            at = end
        if whole > most:
            most = whole
    if not request.gpu or not most:
        return at, 1
    missing = request.gpu - len(node.free_gpus(request.gpu_memory_mb))
    return at, max(1, -(-missing // most))


def _release_until(node: NodeState, request, here, exact: bool) -> tuple[float, int] | None:
    """(at, count) of running jobs on ``node`` that must end, in ``here``'s order, before
    ``request`` fits: by whole GPUs (cheap) unless ``exact``; None when it never does."""
    at, count = -math.inf, 0
    if exact:
        future = stages.copy_node(node)
        for r, a in here:
            future.release(a)
            at, count = max(at, r.expected_end), count + 1
            if future.fits(request):
                return at, count
        return None
    free = len(node.free_gpus(request.gpu_memory_mb))
    for r, a in here:
        free += a.whole_gpus
        at, count = max(at, r.expected_end), count + 1
        if free >= request.gpu:
            return at, count
    return None
