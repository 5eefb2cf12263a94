"""Model residency without a worker: preloading fills free room only, a load in progress is
reported, and an idle model leaves after its keep-alive (a fake clock, no waiting)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from llmos.serve.residency import ModelSpec, Residency

MB = 1 << 20


class Engine:
    def __init__(self, size: int):
        self.size, self.closed = size, False

    def memory_bytes(self) -> int:
        return self.size

    def close(self) -> None:
        self.closed = True


def spec(name: str, size_mb: int = 10) -> ModelSpec:
    return ModelSpec(key=f"{name}:torch", deployment=name, version=1, folder=Path("/none"),
                     engine="torch", options={}, size_bytes=size_mb * MB, priority=1)


def residency(budget_mb: int, **kw) -> Residency:
    return Residency(budget_mb * MB, lambda s: Engine(s.size_bytes), **kw)


def test_a_preload_fills_free_room_and_never_evicts():
    async def go():
        r = residency(25)
        assert await r.preload(spec("a")) and await r.preload(spec("b"))
        assert not await r.preload(spec("c"))  # no free room: nothing is evicted for it
        assert not await r.preload(spec("a"))  # already resident
        assert sorted(r.resident) == ["a:torch", "b:torch"]
        assert [(e["deployment"], e["reason"]) for e in r.events] == [
            ("a", "preloaded"), ("b", "preloaded")]
        lease = await r.acquire(spec("c"))  # a request does evict (the least recently used)
        lease.release()
        assert sorted(r.resident) == ["b:torch", "c:torch"]
    asyncio.run(go())


def test_a_preload_counts_models_at_their_load_estimate_at_least():
    async def go():
        r = Residency(25 * MB, lambda s: Engine(s.size_bytes // 4))  # caches not grown yet
        assert await r.preload(spec("a")) and await r.preload(spec("b"))
        assert not await r.preload(spec("c"))  # 2 x 11.5 MB estimated: no room for 11.5
        assert sorted(r.resident) == ["a:torch", "b:torch"]
    asyncio.run(go())


def test_a_preload_waits_for_loads_in_progress_and_counts_what_they_hold():
    go_on = threading.Event()

    def loader(s: ModelSpec):  # loaded, a model holds twice its estimate
        go_on.wait(timeout=30)
        return Engine(2 * s.size_bytes)

    async def go():
        r = Residency(25 * MB, loader)
        request = asyncio.create_task(r.acquire(spec("a")))
        preload = asyncio.create_task(r.preload(spec("b")))
        for _ in range(1000):
            if r.loading():
                break
            await asyncio.sleep(0)
        go_on.set()
        (await request).release()
        assert not await preload  # 20 MB held + 11.5 MB estimated is over the 25 MB budget
        assert list(r.resident) == ["a:torch"]
    asyncio.run(go())


def test_a_load_in_progress_is_reported_until_it_ends():
    go_on = threading.Event()

    def slow_loader(s: ModelSpec):
        go_on.wait(timeout=30)
        return Engine(s.size_bytes)

    async def go():
        r = Residency(100 * MB, slow_loader)
        task = asyncio.create_task(r.preload(spec("big")))
        for _ in range(1000):  # a few turns of the loop: the load starts at once
            if r.loading():
                break
            await asyncio.sleep(0)
        [loading] = r.loading()
        assert loading["deployment"] == "big" and loading["version"] == 1
        assert r.snapshot() == []
        go_on.set()
        assert await task
        assert r.loading() == [] and [m["deployment"] for m in r.snapshot()] == ["big"]
    asyncio.run(go())


def test_an_idle_model_leaves_after_its_keep_alive():
    now = [1000.0]

    async def go():
        r = residency(100, keep_alive_s=30, clock=lambda: now[0])
        (await r.acquire(spec("a"))).release()
        now[0] += 29
        await r.sweep()
        assert list(r.resident) == ["a:torch"]
        now[0] += 1
        await r.sweep()
        assert r.resident == {}
        assert r.events[-1]["event"] == "unload"
        assert r.events[-1]["reason"] == "idle for 30 s (keep-alive)"
    asyncio.run(go())
