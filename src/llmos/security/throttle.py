"""Slowing down repeated failed authentications, per client address.

The first ``free`` failures from an address cost nothing; after that each attempt must
wait 1 s after the previous failure, then 2, 4, ... up to ``max_delay_s``. While an
address must wait, its requests are refused with 429 and Retry-After *before* their token
is looked at, so a guesser learns nothing faster than the delay allows. Failures are
forgotten ``forget_s`` after the last one. In memory: a daemon restart forgets them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int
    last: float


class FailureThrottle:
    def __init__(self, free: int = 5, max_delay_s: float = 60.0, forget_s: float = 900.0,
                 clock=time.monotonic, max_addresses: int = 100_000):
        self.free = free
        self.max_delay_s = max_delay_s
        self.forget_s = forget_s
        self.clock = clock
        self.max_addresses = max_addresses
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def wait_s(self, address: str) -> float:
        """Seconds ``address`` must still wait before it may try again (0: go ahead)."""
        now = self.clock()
        with self._lock:
            rec = self._records.get(address)
            if rec is None:
                return 0.0
            if now - rec.last >= self.forget_s:
                del self._records[address]
                return 0.0
            if rec.failures < self.free:
                return 0.0
            delay = min(self.max_delay_s, 2.0 ** min(rec.failures - self.free, 30))
            return max(0.0, rec.last + delay - now)

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            rec = self._records.get(address)
            if rec is None or now - rec.last >= self.forget_s:
                if len(self._records) >= self.max_addresses:
                    self._forget_oldest()
                rec = self._records[address] = _Record(0, now)
            rec.failures += 1
            rec.last = now

    def _forget_oldest(self) -> None:
        oldest = min(self._records, key=lambda a: self._records[a].last)
        del self._records[oldest]
