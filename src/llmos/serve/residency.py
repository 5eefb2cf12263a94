"""Model residency, the serving worker's memory manager: which models are loaded, under a
memory budget, paged in on demand and out by recency weighted by priority.

A model (one version, engine and batch size: a *key*) is loaded the first time a request
needs it (safetensors, memory-mapped) and stays while used. When a load would go over the
budget, idle models are unloaded first those superseded by a newer version of their
deployment, then the least recently used — a higher-priority deployment's model counts as
used ``PRIORITY_WEIGHT_S`` seconds more recently per class, so low-priority models go
first. A model with requests in flight is never unloaded: a load that finds no room waits
for one to finish (bounded). Idle models also leave after ``keep_alive_s``. A model may be
*preloaded* before any request needs it: only into free room (a preload never evicts and
never waits). Every load and unload is recorded with its duration and reason; loads in
progress are reported too.

Owns the decisions and the bookkeeping; engines come from a loader function.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos.errors import LLMOSError

PRIORITY_WEIGHT_S = 60.0
LOAD_ESTIMATE = 1.15  # bytes on disk x this: what a model will hold once loaded


class NoRoom(LLMOSError):
    """No room for a model under the budget, now or within the wait."""

    status = 503
    type = "server_error"


@dataclass(frozen=True)
class ModelSpec:
    key: str  # one resident unit: "<version id>:<engine>:<max batch>:<max queue>"
    deployment: str
    version: int  # the registry's version number (shown to people)
    folder: Path
    engine: str
    options: dict[str, Any]
    size_bytes: int
    priority: int  # the deployment's class rank: 0 low, 1 normal, 2 high
    files: tuple[tuple[int, str], ...] = ()  # (artifact id, path): what ``folder`` holds


@dataclass
class Resident:
    spec: ModelSpec
    engine: Any
    loaded_at: float
    load_s: float
    last_used: float
    in_flight: int = 0
    superseded: bool = False

    def memory(self) -> int:
        try:
            return int(self.engine.memory_bytes())
        except Exception:  # noqa: BLE001 - an engine that cannot say: its size on disk
            return self.spec.size_bytes


@dataclass
class Lease:
    """A model held for one request; release it when the request ends."""

    resident: Resident
    residency: Residency
    released: bool = field(default=False)

    @property
    def engine(self):
        return self.resident.engine

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.residency._release(self.resident)


class Residency:
    def __init__(self, budget_bytes: int, loader: Callable[[ModelSpec], Any],
                 keep_alive_s: float = 300.0, wait_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic):
        self.budget = budget_bytes
        self.loader = loader
        self.keep_alive_s = keep_alive_s
        self.wait_s = wait_s
        self.clock = clock
        self.resident: dict[str, Resident] = {}
        self.events: deque[dict] = deque(maxlen=500)
        self.loads = 0
        self.evictions = 0
        self._loading: dict[str, asyncio.Future] = {}
        self._loading_since: dict[str, tuple[ModelSpec, float]] = {}
        self._reserved: dict[str, int] = {}  # bytes promised to loads in progress
        self._lock = asyncio.Lock()
        self._freed = asyncio.Event()

    # -- acquiring ------------------------------------------------------------------------

    async def acquire(self, spec: ModelSpec) -> Lease:
        """The model of ``spec``, loaded if needed, held until the lease is released."""
        deadline = self.clock() + self.wait_s
        while True:
            async with self._lock:
                r = self.resident.get(spec.key)
                if r is not None:
                    return self._lease(r)
                pending = self._loading.get(spec.key)
                if pending is None:
                    victims = self._make_room(spec)
                    if victims is not None:
                        pending = self._start_loading(spec)
                        break
                waiter = self._freed
            if pending is not None:  # someone else is loading it: wait for their result
                await asyncio.shield(pending)
                continue
            if self.clock() >= deadline:
                raise NoRoom(self._no_room(spec))
            try:
                await asyncio.wait_for(waiter.wait(), max(0.05, deadline - self.clock()))
            except asyncio.TimeoutError:
                pass
        return await self._finish_loading(spec, pending, victims, "requested")

    async def preload(self, spec: ModelSpec) -> bool:
        """Load ``spec`` now if it fits in the free part of the budget (never evicting);
        whether it was loaded. It waits for loads in progress first, so that it counts what
        they really hold, and counts resident models at least at their load estimate (one
        not used yet has not grown its caches)."""
        while True:
            async with self._lock:
                if spec.key in self.resident or spec.key in self._loading:
                    return False
                busy = list(self._loading.values())
                if not busy:
                    held = sum(max(r.memory(), int(r.spec.size_bytes * LOAD_ESTIMATE))
                               for r in self.resident.values())
                    if held + int(spec.size_bytes * LOAD_ESTIMATE) > self.budget:
                        return False
                    pending = self._start_loading(spec)
                    break
            await asyncio.gather(*(asyncio.shield(f) for f in busy))
        (await self._finish_loading(spec, pending, [], "preloaded")).release()
        return True

    def _start_loading(self, spec: ModelSpec) -> asyncio.Future:
        pending = asyncio.get_running_loop().create_future()
        self._loading[spec.key] = pending
        self._loading_since[spec.key] = (spec, time.time())
        self._reserved[spec.key] = int(spec.size_bytes * LOAD_ESTIMATE)
        return pending

    async def _finish_loading(self, spec: ModelSpec, pending: asyncio.Future,
                              victims: list[Resident], reason: str) -> Lease:
        """Unload the victims, load ``spec``, and lease it (in the same step as it becomes
        resident, so no other load can evict it first)."""
        try:
            for victim in victims:
                await self._unload(victim, f"evicted to make room for {spec.deployment} "
                                           f"version {spec.version}")
            resident = await self._load(spec, reason)
        except BaseException:
            async with self._lock:
                self._done_loading(spec.key)
            pending.set_result(None)  # waiters try again (and meet the error themselves)
            raise
        async with self._lock:
            self.resident[spec.key] = resident
            self._done_loading(spec.key)
            pending.set_result(None)
            return self._lease(resident)

    def _done_loading(self, key: str) -> None:
        self._loading.pop(key, None)
        self._loading_since.pop(key, None)
        self._reserved.pop(key, None)

    def _lease(self, r: Resident) -> Lease:
        r.in_flight += 1
        r.last_used = self.clock()
        return Lease(r, self)

    def _release(self, r: Resident) -> None:
        r.in_flight -= 1
        r.last_used = self.clock()
        if r.in_flight == 0:
            self._freed.set()
            self._freed = asyncio.Event()

    def _make_room(self, spec: ModelSpec) -> list[Resident] | None:
        """The idle models to unload so ``spec`` fits (possibly none), or None when it
        cannot fit until a busy model becomes idle. Raises NoRoom if it never fits."""
        need = int(spec.size_bytes * LOAD_ESTIMATE)
        if need > self.budget:
            raise NoRoom(f"{spec.deployment} needs about {need >> 20} MB but the pool's memory "
                         f"budget is {self.budget >> 20} MB")
        used = self._used()
        victims: list[Resident] = []
        for r in sorted((r for r in self.resident.values() if r.in_flight == 0),
                        key=self._eviction_order):
            if used + need <= self.budget:
                break
            victims.append(r)
            used -= r.memory()
        if used + need > self.budget:
            return None
        for v in victims:
            del self.resident[v.spec.key]
        return victims

    def _used(self) -> int:
        """Bytes held by resident models and promised to loads in progress."""
        return sum(r.memory() for r in self.resident.values()) + sum(self._reserved.values())

    def _eviction_order(self, r: Resident) -> tuple:
        return (not r.superseded, r.last_used + PRIORITY_WEIGHT_S * r.spec.priority)

    def _no_room(self, spec: ModelSpec) -> str:
        busy = ", ".join(f"{r.spec.deployment} ({r.in_flight} in flight)"
                         for r in self.resident.values() if r.in_flight) or "none"
        return (f"no room to load {spec.deployment} within {self.wait_s:.0f} s: the pool's "
                f"{self.budget >> 20} MB are held by models serving requests ({busy})")

    # -- loading and unloading ------------------------------------------------------------

    async def _load(self, spec: ModelSpec, reason: str) -> Resident:
        started = time.perf_counter()
        engine = await asyncio.to_thread(self.loader, spec)
        took = time.perf_counter() - started
        now = self.clock()
        r = Resident(spec, engine, now, took, now)
        self.loads += 1
        self.events.append({"at": time.time(), "event": "load", "deployment": spec.deployment,
                            "version": spec.version, "key": spec.key,
                            "seconds": round(took, 3), "bytes": r.memory(), "reason": reason})
        return r

    async def _unload(self, r: Resident, reason: str) -> None:
        started = time.perf_counter()
        freed = r.memory()
        await asyncio.to_thread(r.engine.close)
        self.evictions += 1
        self.events.append({"at": time.time(), "event": "unload",
                            "deployment": r.spec.deployment, "version": r.spec.version,
                            "key": r.spec.key, "seconds": round(time.perf_counter() - started, 3),
                            "bytes": freed, "reason": reason})
        self._freed.set()
        self._freed = asyncio.Event()

    async def supersede(self, deployment: str, current_key: str) -> None:
        """Mark the deployment's other versions as replaced: they leave once idle."""
        async with self._lock:
            for r in self.resident.values():
                if r.spec.deployment == deployment and r.spec.key != current_key:
                    r.superseded = True
        await self.sweep()

    async def sweep(self) -> None:
        """Unload idle models that were replaced or whose keep-alive ran out."""
        now = self.clock()
        async with self._lock:
            leaving = [(r, "replaced by a newer version" if r.superseded else
                        f"idle for {self.keep_alive_s:g} s (keep-alive)")
                       for r in self.resident.values() if r.in_flight == 0 and
                       (r.superseded or now - r.last_used >= self.keep_alive_s)]
            for r, _ in leaving:
                del self.resident[r.spec.key]
        for r, reason in leaving:
            await self._unload(r, reason)

    async def close(self) -> None:
        async with self._lock:
            leaving = list(self.resident.values())
            self.resident.clear()
        for r in leaving:
            await self._unload(r, "the worker stopped")

    # -- reporting --------------------------------------------------------------------------

    def snapshot(self) -> list[dict]:
        now = self.clock()
        return [{"deployment": r.spec.deployment, "version": r.spec.version, "key": r.spec.key,
                 "engine": r.spec.engine, "bytes": r.memory(), "in_flight": r.in_flight,
                 "idle_s": round(now - r.last_used, 1), "load_s": round(r.load_s, 3),
                 "superseded": r.superseded, "occupancy": _occupancy(r.engine)}
                for r in self.resident.values()]

    def loading(self) -> list[dict]:
        """Loads in progress: which model, for how long so far."""
        now = time.time()
        return [{"deployment": spec.deployment, "version": spec.version, "key": key,
                 "seconds": round(now - since, 1)}
                for key, (spec, since) in list(self._loading_since.items())]

    def used_bytes(self) -> int:
        return sum(r.memory() for r in self.resident.values())


def _occupancy(engine) -> dict:
    try:
        o = engine.occupancy()
        return {"waiting": o.waiting, "running": o.running}
    except Exception:  # noqa: BLE001 - closed meanwhile
        return {"waiting": 0, "running": 0}
