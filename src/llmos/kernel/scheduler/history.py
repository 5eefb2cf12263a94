"""What finished jobs received: the scheduler's estimate of how much service a job still
needs, learnt from its own team's jobs, without knowing any job's duration.

The attained-service policies (Tiresias, llmos' LAS classes) assume that the more a job
has received, the more it still needs: true of heavy-tailed run times, false of a team's
sweep of equal jobs, where a job half done is the one nearest its end. LAS then preempts
half-done jobs for fresh ones that need twice as much, and each preemption loses the work
since the victim's last checkpoint. Instead, llmos estimates a job's remaining service
as the mean residual of the services its team's finished jobs received::

    remaining(a) = E[S - a | S > a]    over the last KEEP finished jobs of the team

(shortest expected remaining processing time, SERPT; on a heavy tail it orders as LAS
does, on equal jobs as FIFO does). A team with fewer than MIN_JOBS finished jobs has no
estimate (None): the policy falls back to the service received. A job past every
finished job of its team is expected to need as much again as it received (LAS's own
assumption), so a history of tiny jobs buys a team nothing over plain LAS. Each team's
estimates come from its own jobs only: nothing another team runs changes them.

Services are GPU-seconds over all attempts, as ``PendingJob.attained_s`` counts them,
kept apart from the cpu-seconds of a team's jobs without GPUs (``gpu=False``): a team's
data jobs never skew the estimates of its training jobs. (An ended GPU share counts as
one GPU, as :func:`llmos.kernel.jobs.service_of` counts it; a running one as its fraction
of the GPU's memory when known.) The daemon feeds each ended job's service (and reads
each team's latest back from the store at start); the simulator feeds its ends. KEEP and
MIN_JOBS are round figures, not fitted to a trace.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque

KEEP = 1000  # finished jobs remembered per team
MIN_JOBS = 20  # a team with fewer has no estimate


def uses_gpu(request) -> bool:
    """Whether a job's service counts in GPU-seconds (whole GPUs or a share of one): the
    kind of history its estimates come from."""
    return bool(request.gpu or request.gpu_share_mb)


class ServiceHistory:
    """The services of recently ended jobs, per team and kind (see the module's text)."""

    def __init__(self, keep: int = KEEP, min_jobs: int = MIN_JOBS):
        self.keep, self.min_jobs = keep, min_jobs
        # by (team, whether the jobs hold GPUs): arrival order (to drop the oldest), the
        # same values sorted, and the sums of the sorted tail (worked out lazily)
        self._recent: dict[tuple, deque[float]] = {}
        self._sorted: dict[tuple, list[float]] = {}
        self._suffix: dict[tuple, list[float]] = {}

    def add(self, team: str | None, service: float, gpu: bool = True) -> None:
        """One ended job of ``team`` received ``service`` in all (ignored unless finite)."""
        service = float(service)
        if not math.isfinite(service):
            return
        key = (team, gpu)
        recent = self._recent.setdefault(key, deque())
        ordered = self._sorted.setdefault(key, [])
        if len(recent) >= self.keep:
            del ordered[bisect.bisect_left(ordered, recent.popleft())]
        service = max(0.0, service)
        recent.append(service)
        bisect.insort(ordered, service)
        self._suffix.pop(key, None)

    def jobs(self, team: str | None, gpu: bool = True) -> int:
        """How many ended jobs of ``team`` (of this kind) it holds."""
        return len(self._sorted.get((team, gpu), ()))

    def remaining(self, team: str | None, attained: float, gpu: bool = True) -> float | None:
        """Expected service still needed by a job of ``team`` that received ``attained``;
        None while the team has fewer than ``min_jobs`` ended jobs of this kind."""
        key = (team, gpu)
        ordered = self._sorted.get(key, ())
        if len(ordered) < self.min_jobs:
            return None
        suffix = self._suffix.get(key)
        if suffix is None:  # suffix[i]: the sum of ordered[i:]
            suffix = self._suffix[key] = [*itertools.accumulate(reversed(ordered))][::-1]
            suffix.append(0.0)
        i = bisect.bisect_right(ordered, attained)
        longer = len(ordered) - i
        if not longer:
            return max(attained, 1.0)  # past every ended job: as much again
        return suffix[i] / longer - attained
