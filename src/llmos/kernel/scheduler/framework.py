"""The scheduler's plain data, its one status type, and the stage interfaces.

Between the daemon and the scheduler pass only these dataclasses (vLLM's
``SchedulerOutput`` habit): the scheduler never touches the database or a process.
Times are epoch seconds (floats).

A pass runs a :class:`Profile` (the Kubernetes scheduler framework's profile): the stages
it lists, by extension point, in this order for each job of the sorted queue:

    queue sort -> pre-filter -> filter -> [post-filter when no node passes]
               -> score -> reserve -> permit -> bind      (unreserve when a later one fails)

Every stage answers with a :class:`Status`: OK, WAIT (not now; the reason says why) or
NEVER (this job can never run as things are configured; no reservation, no preemption).
Stages keep what they need between jobs of one pass in the :class:`Cycle`, never in
themselves, so one profile serves any number of passes. Later policies (fair share,
gangs, a trace simulator) plug in by giving another profile.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from llmos.kernel.resources import Allocation, NodeState, Request


class Code(enum.Enum):
    OK = "ok"  # go on to the next stage
    WAIT = "wait"  # cannot go on now; may later (room frees, a dependency ends, quota)
    NEVER = "never"  # can never run as configured (larger than every node)


@dataclass(frozen=True, slots=True)
class Status:
    """What a stage says about one job (stages return this instead of raising)."""

    code: Code
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code is Code.OK

    @staticmethod
    def wait(reason: str) -> Status:
        return Status(Code.WAIT, reason)

    @staticmethod
    def never(reason: str) -> Status:
        return Status(Code.NEVER, reason)


OK = Status(Code.OK)


def job_named(job_id: int, team: str | None, for_team: str | None) -> str:
    """Another job as a waiting job's reason names it: by id within the same team, and as
    "a job of another team" otherwise (a reason is shown to the waiting job's team only,
    which must learn nothing of other teams' jobs, not even their ids)."""
    return f"job {job_id}" if team == for_team else "a job of another team"


@dataclass(frozen=True)
class PendingJob:
    id: int
    request: Request
    priority: int  # rank of its class: 0 low, 1 normal, 2 high
    queued_at: float  # since when it waits ready to run (queued, or its last dependency ended)
    timeout_s: float | None = None
    team: str | None = None
    waiting_for: tuple[int, ...] = ()  # unfinished dependencies
    # Placement constraints from the job spec: node labels it needs (all of them), and a
    # group (a deployment's replicas, a user's named set) it spreads over nodes with
    # (``spread``: prefer nodes with the fewest of the group) or keeps apart from
    # (``anti_affinity``: never on a node already running one of the group).
    selector: tuple[tuple[str, str], ...] = ()
    group: str | None = None
    spread: bool = False
    anti_affinity: bool = False
    # Service already received in earlier attempts: GPU-seconds (GPUs x seconds run), or
    # cpu-seconds for a job without GPUs (the attained-service policies order by it).
    attained_s: float = 0.0
    # Oracle run time: only a simulator knows it, only the ``sjf`` policy reads it.
    duration_s: float | None = None
    checkpointable: bool = False  # may yield and resume (a preemption loses little)
    # Tiresias' counters since the job's last promotion by its starvation guard, which
    # resets them: the service its queue counts (None: never promoted, ``attained_s``),
    # the seconds it ran (the paper's t_J) and the seconds it waited once it had run, its
    # current wait aside (delta_J without the current wait).
    promoted_service_s: float | None = None
    ran_s: float = 0.0
    waited_s: float = 0.0
    # Whether it may span nodes as a gang when larger than every node (with
    # SchedulerConfig.multi_node): the daemon's jobs ask for it; a trace's jobs do.
    multi_node: bool = True
    # The node where running jobs were preempted for it (Kubernetes' nominatedNodeName),
    # set by the daemon and the simulator: policies that honour it (:class:`HeldRoom`)
    # hold the room they freed for it, so that no job before it in the queue takes it.
    nominated: str | None = None

    @property
    def queue_service_s(self) -> float:
        """The service Tiresias' queues count: since its last promotion, else all."""
        return self.attained_s if self.promoted_service_s is None else self.promoted_service_s


@dataclass(frozen=True)
class RunningJob:
    id: int
    allocation: Allocation
    priority: int
    started_at: float
    timeout_s: float | None = None
    checkpointable: bool = False
    team: str | None = None
    group: str | None = None  # its placement group (PendingJob.group)
    attained_s: float = 0.0  # service received before this attempt (PendingJob.attained_s)
    # A gang over several nodes: its allocations beyond the leader's (``allocation``).
    extra: tuple[Allocation, ...] = ()
    # The memory (MB) of the GPU a share runs on (0: unknown; the share counts as one GPU).
    gpu_memory_mb: int = 0
    # Tiresias' queue service when this attempt started, if it was promoted since it
    # first ran (PendingJob.promoted_service_s; None: ``attained_s``).
    promoted_service_s: float | None = None
    # When the work it would keep if preempted now was saved: its last checkpoint in this
    # attempt, else ``started_at`` (a simulated job saving every so often). None: it saves
    # when asked to yield, as the daemon's checkpointable jobs promise to (they poll
    # ``ctx.should_yield()`` and save within the grace), so a preemption loses nothing.
    saved_at: float | None = None

    @property
    def expected_end(self) -> float:
        """The latest moment it can still hold its resources (its timeout), or infinity."""
        return self.started_at + self.timeout_s if self.timeout_s else math.inf

    @property
    def allocations(self) -> tuple[Allocation, ...]:
        """Every allocation it holds, the leader's first."""
        return (self.allocation, *self.extra)

    @property
    def gpus(self) -> int:
        """Whole GPUs held over all its nodes."""
        return self.allocation.whole_gpus + sum(a.whole_gpus for a in self.extra)

    @cached_property
    def held(self) -> tuple[int, int, int]:
        """(millicores, MB of memory, GPUs whole or shared) it holds over all its nodes,
        worked out once."""
        allocations = self.allocations
        return (sum(sum(a.cores.values()) for a in allocations),
                sum(a.memory_mb for a in allocations), sum(len(a.gpus) for a in allocations))

    @cached_property
    def rate(self) -> float:
        """Service per second of what it holds (:func:`service_rate`), worked out once."""
        return service_rate(self.allocations, self.gpu_memory_mb)

    def unsaved(self, now: float) -> float:
        """Seconds of its work a preemption now would throw away (:attr:`saved_at`)."""
        return 0.0 if self.saved_at is None else max(0.0, now - self.saved_at)

    def service(self, now: float) -> float:
        """Attained service by ``now``: earlier attempts plus this one, in GPU-seconds
        (cpu-seconds without GPUs), as :attr:`PendingJob.attained_s` counts it."""
        return self.attained_s + max(0.0, now - self.started_at) * self.rate

    def queue_service(self, now: float) -> float:
        """The service Tiresias' queues count by ``now`` (since its last promotion)."""
        base = self.attained_s if self.promoted_service_s is None else self.promoted_service_s
        return base + max(0.0, now - self.started_at) * self.rate


def service_rate(allocations, gpu_memory_mb: int = 0) -> float:
    """Attained service per second of what a job holds: its whole GPUs; a share of one
    GPU as its fraction of that GPU's memory (``gpu_memory_mb``; one GPU when unknown, so
    a share never accrues at a cpu rate and sits in the least-served class for days);
    cpus for a job without GPUs."""
    gpus = sum(a.whole_gpus for a in allocations)
    if gpus:
        return float(gpus)
    share = sum(a.gpu_share_mb for a in allocations)
    if share:
        return min(1.0, share / gpu_memory_mb) if gpu_memory_mb > 0 else 1.0
    return sum(a.cpu for a in allocations)


@dataclass(frozen=True)
class Binding:
    job_id: int
    allocation: Allocation  # the leader's, where the job's program starts
    backfilled: bool = False
    extra: tuple[Allocation, ...] = ()  # a multi-node gang's allocations on further nodes


@dataclass(frozen=True)
class Reservation:
    """The blocked job at the head of the queue, and when and where it will fit."""

    job_id: int
    node: str
    at: float  # math.inf when running jobs have no timeout to bound it


@dataclass(frozen=True)
class Preemption:
    """Lower-priority checkpointable jobs whose yielding would let ``for_job`` start."""

    for_job: int
    node: str
    victims: tuple[int, ...]


@dataclass
class SchedulerOutput:
    bindings: list[Binding] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # why each unbound job waits
    reservation: Reservation | None = None
    preemptions: list[Preemption] = field(default_factory=list)
    # Waiting jobs the policy promoted in this pass (Tiresias' starvation guard): their
    # counters since promotion (PendingJob.promoted_service_s, ran_s, waited_s) restart
    # at 0 and they count as queued from now, wherever the queue is kept (the daemon,
    # the simulator).
    promoted: list[int] = field(default_factory=list)
    # Waiting jobs whose nominated room (PendingJob.nominated) was held for them in this
    # pass: their nomination is spent, whether they started or not (:func:`nominate`).
    held: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Quota:
    """What one team's running jobs may hold together; None means no limit."""

    cpu: float | None = None
    memory_mb: int | None = None
    gpu: int | None = None
    jobs: int | None = None  # running at once

    @property
    def millicores(self) -> int | None:
        return None if self.cpu is None else round(self.cpu * 1000)


@dataclass(frozen=True)
class SchedulerConfig:
    aging_s: float = 600.0  # a job waiting this long rises one priority class
    max_rank: int = 2
    quotas: dict[str, Quota] = field(default_factory=dict)  # team -> limit
    # Whether a gang larger than every node may span nodes (the gang stages); without,
    # such a job is NEVER, as with the default profile, and its reason says why.
    multi_node: bool = True
    single_node_reason: str = "a gang over several nodes is not run here"


def nominate(pending: dict[int, PendingJob], plans: list[Preemption],
             spent: list[int] = ()) -> None:
    """Note on each waiting job of ``pending`` (by id) that the running jobs of ``plans``
    are preempted for the node they free (:attr:`PendingJob.nominated`), as the daemon
    and the simulator do when they carry the plans out; and forget the nominations
    ``spent`` (:attr:`SchedulerOutput.held`): a room is held for one pass once it is
    free, so a job that cannot start then (its quota, say) holds nothing for ever. A
    gang's plan over several nodes nominates none."""
    for job_id in spent:
        job = pending.get(job_id)
        if job is not None and job.nominated is not None:
            pending[job_id] = replace(job, nominated=None)
    nodes: dict[int, set[str]] = {}
    for plan in plans:
        nodes.setdefault(plan.for_job, set()).add(plan.node)
    for job_id, names in nodes.items():
        job = pending.get(job_id)
        if job is not None:
            pending[job_id] = replace(job, nominated=names.pop() if len(names) == 1 else None)


def spans_nodes(config: SchedulerConfig, job: PendingJob) -> bool:
    """Whether ``job``, when larger than every node, may run as a gang over several."""
    return config.multi_node and job.multi_node


def single_node_reason(config: SchedulerConfig, job: PendingJob) -> str:
    """Why a job larger than every node does not span nodes (when it may not)."""
    if not config.multi_node:
        return config.single_node_reason
    return "it did not ask to run over several nodes (multi_node)"


@dataclass
class Cycle:
    """One pass's working state (Kubernetes' CycleState): private copies of the nodes,
    the running jobs (growing as the pass binds), the output so far, each job's
    allocation while it is reserved, and each stage's own state (``state[stage]``).

    ``views``: lists of some of ``nodes`` (the ready nodes with one selector's labels)
    that a filter hands on as the same object, with the same members, for the whole pass,
    by ``id``; a later filter may remember its answers for such a list by identity, as
    it may for ``nodes`` itself (holding them here keeps each ``id`` unique)."""

    now: float
    config: SchedulerConfig
    nodes: list[NodeState]
    running: list[RunningJob]
    out: SchedulerOutput = field(default_factory=SchedulerOutput)
    allocations: dict[int, Allocation] = field(default_factory=dict)
    state: dict[Any, Any] = field(default_factory=dict)
    views: dict[int, list[NodeState]] = field(default_factory=dict)
    # A multi-node gang's allocations beyond the leader's (in ``allocations``), while
    # reserved; and the pass's whole queue (for stages that weigh pending demand).
    extras: dict[int, tuple[Allocation, ...]] = field(default_factory=dict)
    pending: list[PendingJob] = field(default_factory=list)
    # What finished jobs received, per team (kernel/scheduler/history.py), for the
    # policies that estimate a job's remaining service; None when the caller keeps none.
    history: Any = None


class Stage:
    """Base of every stage: a name, and a hook at the start of each pass that sets up the
    stage's state in the cycle and says whether the stage has anything to do in this pass
    (a quota stage without quotas does not; the pass then skips it for every job)."""

    name = "stage"

    def begin(self, cycle: Cycle) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# The extension points. A stage implements one or more of these methods and is listed in
# the profile under each point it serves.
#   QueueSort.order(jobs, cycle) -> list[PendingJob]
#   PreFilter.pre_filter(cycle, job) -> Status
#   Filter.filter(cycle, job, nodes) -> (nodes that pass, Status when none does)
#   PostFilter.post_filter(cycle, job) -> bool: False when done for the rest of the pass
#   Score.score(cycle, job, node) -> float (higher is better; summed over scorers)
#   Reserve.reserve(cycle, job, node) -> Status; Reserve.unreserve(cycle, job): undo,
#       idempotent (a second call, or a call without reserve, changes nothing)
#   Permit.permit(cycle, job, node) -> Status (a refusal unreserves)
#   Bind.bind(cycle, job, node) -> None


@dataclass(frozen=True)
class Profile:
    """A scheduling policy: the stages a pass runs, by extension point, in order."""

    name: str
    queue_sort: Stage
    bind: Stage
    pre_filters: tuple[Stage, ...] = ()
    filters: tuple[Stage, ...] = ()
    post_filters: tuple[Stage, ...] = ()
    scores: tuple[Stage, ...] = ()
    reserves: tuple[Stage, ...] = ()
    permits: tuple[Stage, ...] = ()

    def stages(self) -> list[Stage]:
        """Every distinct stage, once, in the order of first appearance."""
        seen: dict[int, Stage] = {}
        for stage in (self.queue_sort, *self.pre_filters, *self.filters, *self.post_filters,
                      *self.scores, *self.reserves, *self.permits, self.bind):
            seen.setdefault(id(stage), stage)
        return list(seen.values())
