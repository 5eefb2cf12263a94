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

Services are GPU-seconds over all attempts (cpu-seconds for a job without GPUs), as
``PendingJob.attained_s`` counts them. The daemon feeds each ended job's service (and
reads the latest ones back from the store at start); the simulator feeds its ends.
KEEP and MIN_JOBS are round figures, not fitted to a trace.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque

KEEP = 1000  # finished jobs remembered per team
MIN_JOBS = 20  # a team with fewer has no estimate


class ServiceHistory:
    """The services of recently finished jobs, per team (see the module's text)."""

    def __init__(self, keep: int = KEEP, min_jobs: int = MIN_JOBS):
        self.keep, self.min_jobs = keep, min_jobs
        self._recent: dict[object, deque[float]] = {}  # arrival order, to drop the oldest
        self._sorted: dict[object, list[float]] = {}
        self._suffix: dict[object, list[float]] = {}  # sums of the sorted tail, lazily

    def add(self, team: str | None, service: float) -> None:
        """One finished job of ``team`` received ``service`` in all."""
        service = max(0.0, float(service))
        recent = self._recent.setdefault(team, deque())
        ordered = self._sorted.setdefault(team, [])
        if len(recent) >= self.keep:
            del ordered[bisect.bisect_left(ordered, recent.popleft())]
        recent.append(service)
        bisect.insort(ordered, service)
        self._suffix.pop(team, None)

    def jobs(self, team: str | None) -> int:
        """How many finished jobs of ``team`` it holds."""
        return len(self._sorted.get(team, ()))

    def remaining(self, team: str | None, attained: float) -> float | None:
        """Expected service still needed by a job of ``team`` that received ``attained``;
        None while the team has fewer than ``min_jobs`` finished jobs."""
        ordered = self._sorted.get(team, ())
        if len(ordered) < self.min_jobs:
            return None
        suffix = self._suffix.get(team)
        if suffix is None:  # suffix[i]: the sum of ordered[i:]
            suffix = self._suffix[team] = [*itertools.accumulate(reversed(ordered))][::-1]
            suffix.append(0.0)
        i = bisect.bisect_right(ordered, attained)
        longer = len(ordered) - i
        if not longer:
            return max(attained, 1.0)  # past every finished job: as much again
        return suffix[i] / longer - attained
