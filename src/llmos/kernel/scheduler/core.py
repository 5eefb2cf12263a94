"""One scheduling pass: run a profile's stages over the queue and say what to start.

Pure: takes the pending and running jobs and the nodes' states, returns a
:class:`SchedulerOutput`. It works on copies, so the caller's node states are untouched
until it applies the bindings. Which stages run, and in which order, is the
:class:`Profile`'s business (:data:`DEFAULT_PROFILE` when none is given); this module only
walks the extension points for each job, in queue order:

pre-filters (the first status that is not OK ends the job's turn) -> filters (each
narrows the nodes; the first to leave none ends it) -> when no node is left and the status
is WAIT, the post-filters -> the best node by the summed scores -> reserves -> permits ->
bind. A reserve or permit that refuses makes every reserve stage unreserve the job
(idempotent, so the stages that reserved nothing are unaffected). Every job not bound
gets the reason of the status that stopped it.
"""

from __future__ import annotations

from llmos.kernel.resources import NodeState
from llmos.kernel.scheduler.framework import (
    OK,
    Code,
    Cycle,
    PendingJob,
    Profile,
    RunningJob,
    SchedulerConfig,
    SchedulerOutput,
    Status,
)
from llmos.kernel.scheduler.history import ServiceHistory
from llmos.kernel.scheduler.profiles import DEFAULT_PROFILE
from llmos.kernel.scheduler.stages import copy_node

_OK, _WAIT = Code.OK, Code.WAIT


def schedule(
    pending: list[PendingJob],
    nodes: list[NodeState],
    running: list[RunningJob],
    now: float,
    config: SchedulerConfig | None = None,
    profile: Profile | None = None,
    history: ServiceHistory | None = None,
) -> SchedulerOutput:
    """One pass of ``profile`` (``history``: what finished jobs received, for the
    policies that estimate remaining service; the caller keeps it up to date)."""
    cycle = Cycle(now, config or SchedulerConfig(), [copy_node(n) for n in nodes],
                  list(running), pending=pending, history=history)
    return _Pass(profile or DEFAULT_PROFILE, cycle).run(pending)


class _Pass:
    """The profile's stages bound for one cycle, without those idle in this pass."""

    def __init__(self, profile: Profile, cycle: Cycle):
        active = {id(s) for s in profile.stages() if s.begin(cycle)}

        def live(stages):
            return [s for s in stages if id(s) in active]

        self.profile, self.cycle = profile, cycle
        self.pre_filters = [s.pre_filter for s in live(profile.pre_filters)]
        self.filters = [s.filter for s in live(profile.filters)]
        self.post_filters = [s.post_filter for s in live(profile.post_filters)]
        self.scores = [s.score for s in live(profile.scores)]
        self.reserves = live(profile.reserves)
        self.permits = [s.permit for s in live(profile.permits)]

    def run(self, pending: list[PendingJob]) -> SchedulerOutput:
        # The loop runs once per pending job (tens of thousands): everything it touches is
        # a local, and the common path (no node has room) makes no call of its own.
        cycle, ok = self.cycle, OK
        reasons = cycle.out.reasons
        all_nodes = cycle.nodes
        pre_filters, filters = self.pre_filters, self.filters
        for job in self.profile.queue_sort.order(pending, cycle):
            status = ok
            for pre_filter in pre_filters:
                status = pre_filter(cycle, job)
                if status is not ok and status.code is not _OK:
                    break
            else:
                nodes = all_nodes
                for node_filter in filters:
                    nodes, status = node_filter(cycle, job, nodes)
                    if not nodes:
                        break
                if nodes:
                    status = self._place(job, nodes)
                elif self.post_filters or status.code is _OK:
                    status = self._no_node(job, status)
            if status is not ok and status.code is not _OK:
                reasons[job.id] = status.reason
        return cycle.out

    def _no_node(self, job: PendingJob, status: Status) -> Status:
        if status.code is _OK:  # a filter left no node but said nothing
            status = Status.wait("no node passes the filters")
        if status.code is _WAIT and self.post_filters:  # those done for this pass drop out
            self.post_filters = [p for p in self.post_filters if p(self.cycle, job)]
        return status

    def _place(self, job: PendingJob, nodes: list[NodeState]) -> Status:
        cycle = self.cycle
        scores = self.scores
        if len(nodes) == 1 or not scores:
            node = nodes[0]
        elif len(scores) == 1:  # one scorer (bin-pack alone, spread idle): no sum
            only = scores[0]
            node = max(nodes, key=lambda n: only(cycle, job, n))
        elif len(scores) == 2:  # the usual profile (bin-pack, spread): no generator per node
            first, second = scores
            node = max(nodes, key=lambda n: first(cycle, job, n) + second(cycle, job, n))
        else:
            node = max(nodes, key=lambda n: sum(score(cycle, job, n) for score in scores))
        for stage in self.reserves:
            status = stage.reserve(cycle, job, node)
            if not status.ok:
                return self.unreserve(job, status)
        for permit in self.permits:
            status = permit(cycle, job, node)
            if not status.ok:
                return self.unreserve(job, status)
        self.profile.bind.bind(cycle, job, node)
        return OK

    def unreserve(self, job: PendingJob, status: Status) -> Status:
        for stage in reversed(self.reserves):
            stage.unreserve(self.cycle, job)
        return status
