"""The pending queue as columns: each field of the pending jobs as one numpy array, for
the queue orders that rank tens of thousands of jobs at every pass (:mod:`.queueing`).

A queue sort written as a Python loop costs a few microseconds per job and pass: at a
backlog of 10,000 jobs that is most of the pass, and a simulation over a busy trace runs
hundreds of thousands of passes. Read once into arrays (``map`` with ``attrgetter``: C
loops), the same arithmetic runs in numpy and the order is one ``lexsort``. Every figure
is computed with the same IEEE operations as its scalar definition, in the same order
where it accumulates, so an order is the same as the scalar rules give, bit for bit
(tests/kernel/test_queueing_columns.py compares them).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

import numpy as np

from llmos.kernel.scheduler.framework import PendingJob

_GET = {name: attrgetter(name) for name in (
    "queued_at", "id", "attained_s", "priority", "ran_s", "waited_s", "queue_service_s",
    "team", "request")}
_REQ = {name: attrgetter(name) for name in ("cpu", "memory_mb", "gpu", "gpu_share_mb")}


class Columns:
    """The fields of ``jobs`` as arrays (:meth:`col`), each read on first use."""

    def __init__(self, jobs: list[PendingJob]):
        self.jobs, self.n = jobs, len(jobs)
        self._cols: dict[str, np.ndarray] = {}
        self._requests: list | None = None
        self._values: dict[str, list] = {}

    def col(self, name: str) -> np.ndarray:
        """A field of the jobs (``queued_at``, ``priority``...) or of their requests
        (``cpu``, ``gpu``...) as an array."""
        found = self._cols.get(name)
        if found is None:
            if name in _REQ:
                if self._requests is None:
                    self._requests = list(map(_GET["request"], self.jobs))
                values = map(_REQ[name], self._requests)
            else:
                values = map(_GET[name], self.jobs)
            dtype = np.int64 if name in ("id", "priority") else float
            found = self._cols[name] = np.fromiter(values, dtype, self.n)
        return found

    def values(self, name: str) -> list:
        """A field as a list of Python objects (teams: strings or None), read once."""
        found = self._values.get(name)
        if found is None:
            found = self._values[name] = list(map(_GET[name], self.jobs))
        return found

    def codes(self, name: str) -> tuple[np.ndarray, list]:
        """A field's values as small integers (first seen, first numbered), and the
        values by number."""
        values = self.values(name)
        names = list(dict.fromkeys(values))
        number = {v: i for i, v in enumerate(names)}
        return np.fromiter(map(number.__getitem__, values), np.int64, self.n), names

    def per_value(self, keys: list, of: Callable) -> np.ndarray:
        """``of(*key)`` for each job's key, worked out once per distinct key."""
        memo = dict.fromkeys(keys)
        for key in memo:
            memo[key] = of(*key)
        return np.fromiter(map(memo.__getitem__, keys), np.int64, self.n)

    def arrival(self) -> np.ndarray:
        """Each job's place in arrival order (time queued, then id)."""
        order = np.lexsort((self.col("id"), self.col("queued_at")))
        place = np.empty(self.n, np.int64)
        place[order] = np.arange(self.n)
        return place

    def taken(self, order: np.ndarray) -> list[PendingJob]:
        return list(map(self.jobs.__getitem__, order.tolist()))


def classes(values: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    """How many of the (sorted) ``thresholds`` each value reaches: its class, as
    :func:`llmos.kernel.scheduler.queueing.tiresias_queue` counts for one value."""
    return np.searchsorted(np.asarray(thresholds, float), values, side="right")


def decades(ratio: np.ndarray, exponents: range) -> np.ndarray:
    """How many of the powers of ten 10**k, k in ``exponents``, each ratio reaches."""
    count = np.zeros(ratio.shape, np.int64)
    for k in exponents:
        count += ratio >= 10.0 ** k
    return count


def running_sums(start: np.ndarray, values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Within each run of equal ``groups`` (sorted, so each group is one run): the group's
    ``start`` plus the ``values`` before each element, added left to right (each element's
    start, as a loop ``acc = acc + value`` gives them)."""
    out = np.empty(len(values))
    if not len(values):
        return out
    bounds = [0, *(np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist(), len(values)]
    for lo, hi in zip(bounds, bounds[1:]):
        seq = np.empty(hi - lo)
        seq[0] = start[lo]
        seq[1:] = values[lo:hi - 1]
        out[lo:hi] = np.add.accumulate(seq)
    return out
