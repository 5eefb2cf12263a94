"""The nodes jobs run on, as the daemon knows them: exact accounting per node, kept in step
with the executor and written to the store.

:class:`Nodes` holds one :class:`~llmos.kernel.resources.NodeState` per node. Every
``LLMOS_NODE_SYNC_S`` (and at start) it asks the daemon's executor for its nodes
(:meth:`Executor.nodes`: this machine for the local executor, the cluster's nodes for Ray)
and follows what changed: a node that joins gets a fresh account; one whose capacity
changed is rebuilt with the allocations of its running jobs taken again; one that died,
or is no longer reported, becomes LOST and the daemon ends its running attempts as lost
(:meth:`Daemon.node_lost`). An operator's drain is stored in the ``nodes`` table
(``drain_requested``) and outlives a daemon restart. The table holds what ``llmos nodes``
and ``GET /v1/nodes`` show: capacity, free resources, labels, address, state with its
reason, and a heartbeat written every few seconds.

This module owns no policy: which node a job goes to is the scheduler's business.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from socket import gethostname

from sqlalchemy import select

from llmos.kernel.resources import (
    DRAINING,
    LOST,
    READY,
    Allocation,
    NodeCapacity,
    NodeInfo,
    NodeState,
)
from llmos.store.models import Node

log = logging.getLogger("llmos.daemon")

HEARTBEAT_S = 5.0  # how often the free resources and heartbeat of each node are stored


class Nodes:
    def __init__(self, daemon, fixed: NodeCapacity | None = None):
        self.daemon = daemon
        self.fixed = fixed
        self.states: dict[str, NodeState] = {}
        self.info: dict[str, NodeInfo] = {}
        self._synced_at = 0.0
        self._stored_at = 0.0
        # An attempt ended lost, or a launch found its node gone: refresh before the next
        # scheduling pass, so no job is placed on a node that just died.
        self.stale = False
        self._drains: set[str] | None = None  # operators' drains, read from the store once

    # -- accounting ------------------------------------------------------------------

    def take(self, allocation: Allocation) -> None:
        """Account an allocation on its node (ValueError: the node is unknown or full)."""
        node = self.states.get(allocation.node)
        if node is None:
            raise ValueError(f"node {allocation.node} is not known")
        node.take(allocation)

    def release(self, allocation: Allocation) -> None:
        node = self.states.get(allocation.node)
        if node is not None:
            node.release(allocation)

    def schedulable(self) -> list[NodeState]:
        """The nodes a pass considers: every node not lost (the scheduler's node filter
        keeps new work off draining ones, and says so in the job's reason)."""
        return [n for n in self.states.values() if n.state != LOST]

    # -- sync with the executor and the store ---------------------------------------------

    def sync(self, now: float, force: bool = False, refresh: bool = False) -> None:
        """Follow the executor's nodes, at most every ``LLMOS_NODE_SYNC_S`` unless
        ``refresh`` (now) or ``force`` (now, and an unreachable cluster raises)."""
        settings = self.daemon.settings
        if not (force or refresh) and now - self._synced_at < settings.node_sync_s:
            return
        self._synced_at = now
        self.stale = False
        try:
            infos = self._discover()
        except Exception as e:  # noqa: BLE001 - the cluster's head is unreachable for now
            if force:
                raise
            log.warning("cannot refresh the nodes (%s); keeping the last known ones",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            return
        if self._drains is None:
            self._drains = self._stored_drains()
        drains = self._drains
        changed, lost = False, []
        seen = set()
        for info in infos:
            seen.add(info.name)
            state = DRAINING if info.state == READY and info.name in drains else info.state
            node = self.states.get(info.name)
            # A dead node's reported resources mean nothing (Ray reports none): it keeps
            # its last known capacity and the accounts of the jobs that were running there,
            # which end as lost below.
            if node is None or (state != LOST and _shape(node.capacity) != _shape(info.capacity)):
                node = self._account(info.capacity, node)
                changed = True
            if node.state != state:
                log.info("node %s: %s -> %s%s", info.name, node.state, state,
                         f" ({info.reason})" if info.reason else "")
                if state == LOST:
                    lost.append((info.name, info.reason or "the executor reports it dead"))
                node.state, changed = state, True
            self.info[info.name] = info
        for name, node in self.states.items():
            if name not in seen and node.state != LOST:
                reason = "no longer reported by the executor"
                node.state, changed = LOST, True
                self.info[name] = NodeInfo(node.capacity, self.info[name].address, LOST,
                                           reason, self.info[name].node_id)
                lost.append((name, reason))
        for name, reason in lost:
            log.warning("node %s was lost: %s", name, reason)
            self.daemon.node_lost(name, reason)
        if changed:
            self.daemon._dirty = True
        if changed or force or now - self._stored_at >= HEARTBEAT_S:
            self._store(now)

    def _discover(self) -> list[NodeInfo]:
        if self.fixed is not None:
            return [NodeInfo(self.fixed, address=gethostname())]
        return self.daemon.executor(self.daemon.settings.executor).nodes()

    def _account(self, capacity: NodeCapacity, old: NodeState | None) -> NodeState:
        """A fresh account for a node (new, or its capacity changed), holding the
        allocations of the jobs running there."""
        node = NodeState(capacity, state=old.state if old else READY)
        for tracked in self.daemon.running.values():
            for allocation in tracked.job.allocations:
                if allocation.node != capacity.name:
                    continue
                try:
                    node.take(allocation)
                except ValueError:
                    log.warning("node %s shrank under job %s", capacity.name, tracked.job.id)
        self.states[capacity.name] = node
        return node

    def _stored_drains(self) -> set[str]:
        with self.daemon.db.session() as s:
            return set(s.scalars(select(Node.name).where(Node.drain_requested.is_(True))))

    def _store(self, now: float) -> None:
        at = datetime.fromtimestamp(now, timezone.utc)
        executor = self.daemon.settings.executor
        with self.daemon.db.session() as s:
            rows = {n.name: n for n in s.scalars(select(Node))}
            for name, node in self.states.items():
                info = self.info[name]
                row = rows.get(name)
                if row is None:
                    row = Node(name=name, joined_at=at, drain_requested=False)
                    s.add(row)
                snap = node.snapshot()
                row.node_id, row.executor, row.address = info.node_id or None, executor, info.address
                row.labels, row.capacity, row.free = snap["labels"], snap["capacity"], snap["free"]
                row.state, row.reason = node.state, info.reason or None
                if node.state != LOST:
                    row.heartbeat_at = at
        self._stored_at = now

    # -- operator actions -------------------------------------------------------------

    def set_drain(self, name: str, drain: bool) -> NodeState:
        """Record an operator's drain (or its end) for ``name``; KeyError when unknown."""
        node = self.states[name]
        with self.daemon.db.session() as s:
            row = s.get(Node, name)
            row.drain_requested = drain
        if self._drains is None:
            self._drains = self._stored_drains()
        if drain:
            self._drains.add(name)
        else:
            self._drains.discard(name)
        if node.state != LOST:
            node.state = DRAINING if drain else READY
        self._store(self._synced_at)
        return node

    def snapshot(self) -> list[dict]:
        """Each node as ``llmos nodes`` shows it (from the daemon's own accounts)."""
        running: dict[str, int] = {}
        for tracked in self.daemon.running.values():
            for allocation in tracked.job.allocations:
                running[allocation.node] = running.get(allocation.node, 0) + 1
        out = []
        for name, node in sorted(self.states.items()):
            info = self.info[name]
            out.append({**node.snapshot(), "address": info.address, "reason": info.reason,
                        "node_id": info.node_id or None, "running_jobs": running.get(name, 0)})
        return out


def _shape(capacity: NodeCapacity) -> tuple:
    return (capacity.cores, capacity.memory_mb, capacity.gpus, tuple(sorted(capacity.labels.items())))
