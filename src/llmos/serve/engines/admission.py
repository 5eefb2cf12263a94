"""The waiting queue of an engine and its admission order: highest priority first, then
round-robin across tenants (one tenant's flood cannot starve another), FIFO within a tenant.
Bounded: a push beyond capacity raises :class:`QueueFull` (the gateway answers 429).

A plain data structure, not thread-safe on its own (the engine holds its lock around it);
it knows nothing about models or streams.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, TypeVar

from llmos.serve.engines.base import QueueFull

T = TypeVar("T")


class AdmissionQueue(Generic[T]):
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("the waiting queue needs a capacity of at least 1")
        self.capacity = capacity
        # priority -> tenant -> FIFO of (key, item); tenants in round-robin order
        self._levels: dict[int, OrderedDict[str, deque[tuple[str, T]]]] = {}
        self._where: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def push(self, key: str, item: T, *, priority: int = 0, tenant: str = "default",
             front: bool = False) -> None:
        """Queue ``item``. ``front``: it goes first among its priority (a request the engine
        took out of the running batch resumes before newer ones) and is never refused."""
        if key in self._where:
            raise ValueError(f"{key!r} is queued already")
        if len(self._where) >= self.capacity and not front:
            raise QueueFull(f"the engine's waiting queue is full ({self.capacity} requests); "
                            "retry later")
        tenants = self._levels.setdefault(priority, OrderedDict())
        fifo = tenants.setdefault(tenant, deque())
        if front:
            fifo.appendleft((key, item))
            tenants.move_to_end(tenant, last=False)
        else:
            fifo.append((key, item))
        self._where[key] = (priority, tenant)

    def peek(self) -> T | None:
        """The item :meth:`pop` would return, left in place."""
        if not self._levels:
            return None
        fifo = next(iter(self._levels[max(self._levels)].values()))
        return fifo[0][1]

    def pop(self) -> T | None:
        """The next item to admit, or None when empty."""
        if not self._levels:
            return None
        priority = max(self._levels)
        tenants = self._levels[priority]
        tenant, fifo = next(iter(tenants.items()))
        key, item = fifo.popleft()
        if fifo:
            tenants.move_to_end(tenant)  # this tenant had its turn
        else:
            del tenants[tenant]
            if not tenants:
                del self._levels[priority]
        del self._where[key]
        return item

    def remove(self, key: str) -> T | None:
        """Take ``key`` out of the queue; None when it is not queued."""
        where = self._where.pop(key, None)
        if where is None:
            return None
        priority, tenant = where
        tenants = self._levels[priority]
        fifo = tenants[tenant]
        for i, (k, item) in enumerate(fifo):
            if k == key:
                del fifo[i]
                break
        if not fifo:
            del tenants[tenant]
            if not tenants:
                del self._levels[priority]
        return item

    def drain(self) -> list[T]:
        """Everything still waiting, in admission order; the queue ends empty."""
        items = []
        while (item := self.pop()) is not None:
            items.append(item)
        return items
