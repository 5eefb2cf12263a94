"""Slowing down repeated failed authentications — without ever locking out a valid token.

Failures are counted twice: per (client address, presented token's prefix) and per
address. The first ``free`` failures of one (address, prefix) cost nothing; after that
each attempt with that prefix must wait 1 s after its previous failure, then 2, 4, ... up
to ``max_delay_s``. The address as a whole gets ``address_free`` failures (by default ten
times ``free``) before the same doubling applies to every unknown token from it — the
brute-force guard: many bad tokens from one address are still slowed down, whatever
prefixes they carry. Failures are forgotten ``forget_s`` after the last one.

The gate looks a presented token up *before* it consults this throttle, and a token that
authenticates is served at once and counts nothing: an address may be shared by a proxy,
by every job on the host (127.0.0.1) and by whoever floods it with bad tokens, and the
flood must not keep the others out. A throttled failure answers 429 with Retry-After and
no reason (expired? revoked? unknown?), so a guesser learns nothing faster than the delay
allows. In memory: a daemon restart forgets every record.
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
                 clock=time.monotonic, max_addresses: int = 100_000,
                 address_free: int | None = None):
        self.free = free
        self.address_free = address_free if address_free is not None else 10 * free
        self.max_delay_s = max_delay_s
        self.forget_s = forget_s
        self.clock = clock
        self.max_addresses = max_addresses  # records kept at most (the oldest go first)
        self._records: dict[tuple[str, str | None], _Record] = {}
        self._lock = threading.Lock()

    def wait_s(self, address: str, prefix: str | None = None) -> float:
        """Seconds a failed attempt from ``address`` presenting a token that starts with
        ``prefix`` must still wait (0: it may be answered now). Without a prefix: the
        address's own wait."""
        now = self.clock()
        with self._lock:
            waits = [self._wait((address, None), self.address_free, now)]
            if prefix is not None:
                waits.append(self._wait((address, prefix), self.free, now))
        return max(waits)

    def failed(self, address: str, prefix: str | None = None) -> None:
        """Count one failed authentication from ``address`` (with a token ``prefix``)."""
        now = self.clock()
        with self._lock:
            self._count((address, None), now)
            if prefix is not None:
                self._count((address, prefix), now)

    def _wait(self, key: tuple[str, str | None], free: int, now: float) -> float:
        rec = self._records.get(key)
        if rec is None:
            return 0.0
        if now - rec.last >= self.forget_s:
            del self._records[key]
            return 0.0
        if rec.failures < free:
            return 0.0
        delay = min(self.max_delay_s, 2.0 ** min(rec.failures - free, 30))
        return max(0.0, rec.last + delay - now)

    def _count(self, key: tuple[str, str | None], now: float) -> None:
        rec = self._records.get(key)
        if rec is None or now - rec.last >= self.forget_s:
            if len(self._records) >= self.max_addresses:
                self._forget_oldest()
            rec = self._records[key] = _Record(0, now)
        rec.failures += 1
        rec.last = now

    def _forget_oldest(self) -> None:
        oldest = min(self._records, key=lambda k: self._records[k].last)
        del self._records[oldest]
