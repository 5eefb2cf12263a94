"""The Ray executor (``LLMOS_EXECUTOR=ray``): llmos's jobs on the nodes of a Ray cluster.

llmos decides placement; Ray only carries it out. :meth:`RayExecutor.nodes` reports
Ray's nodes as llmos nodes (a node's llmos name is its Ray label ``llmos.io/name``, else
``node-`` and the first 12 hex digits of its Ray node id; its labels are its Ray labels
but Ray's own ``ray.io/*``; its capacity Ray's ``CPU``, ``memory`` and ``GPU`` totals,
each GPU reported with 0 MB since Ray does not say). The daemon schedules on them as on
any node; each attempt then starts on its node through that node's llmos agent
(:mod:`.agent`, a detached Ray actor asking no resources, started on the node's first
launch), which runs it exactly as the local executor would.

The daemon sees the attempt as it sees a local one: :meth:`RayExecutor.poll` brings the
bytes its log and event files grew by into the daemon's own job folder
(``LLMOS_HOME/jobs/<id>``), where reports and logs are read as ever, and the exit once
everything before it was copied. Every call to an agent has a deadline, and a node Ray
reports dead (or whose agent is gone) ends its attempts as LOST — never a hang of the
daemon's loop, never a job left running unseen (jobs die with their agent). The stored
reference (``ref``) names the node and the process; a restarted daemon finds the
attempt again through it (:meth:`RayExecutor.recover`).

Only :mod:`._ray` imports Ray (lazily).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from llmos.config import Settings, get_settings
from llmos.kernel.executors.base import Exit, ExitKind, Handle, LaunchPlan, NodeUnavailable
from llmos.kernel.executors.ray._ray import (AgentFailed, AgentGone, CallTimeout,
                                             ClusterError, RayCluster)
from llmos.kernel.jobfiles import open_append, size_of
from llmos.kernel.resources import GPU, LOST, READY, NodeCapacity, NodeInfo

__all__ = ["ClusterError", "RayExecutor"]

NAME_LABEL = "llmos.io/name"
MIRRORED = ("stdout.log", "stderr.log", "events.jsonl")  # as agent.MIRRORED (no import:
# the daemon need not load the local executor's agent side)
CALL_TIMEOUT_S = 10.0  # any call to an agent
LAUNCH_TIMEOUT_S = 60.0  # a first launch on a node starts its agent (a Ray worker) first
NODES_TTL_S = 0.5  # how long a node table is trusted for a liveness check
DRAIN_CALLS = 16  # polls in one go to bring the rest of an ended attempt's files
UNANSWERED_LOST_S = 60.0  # an agent silent this long (node alive) counts as lost


class RayExecutor:
    name = "ray"
    remote = True  # jobs keep their checkpoints as artifacts: a retry may run elsewhere
    # Each node sandboxes its jobs as the local executor does, as far as that node allows
    # (as root with bubblewrap: its team's own user, in its own namespaces); a node that
    # cannot isolate refuses jobs while LLMOS_REQUIRE_ISOLATION is in force.
    isolation_level = "partial"
    isolation_detail = ("per node: each node's llmos agent sandboxes jobs as the local "
                        "executor does where it runs as root with bubblewrap, and refuses "
                        "them where it cannot isolate while isolation is required")

    def __init__(self, settings: Settings | None = None, cluster: Any = None) -> None:
        self.settings = settings or get_settings()
        self._cluster = cluster
        self._table: tuple[float, dict[str, dict]] = (0.0, {})  # when, node id -> node
        self._silent_since: dict[str, float] = {}  # node id -> first unanswered call
        self._failed_at: dict[str, float] = {}  # node id -> last call that failed

    @property
    def cluster(self):
        if self._cluster is None:
            address = self.settings.ray_address
            if not address:
                raise ClusterError("no Ray cluster is configured: set LLMOS_RAY_ADDRESS "
                                   "(or `llmos up --ray HOST:PORT`)")
            self._cluster = RayCluster(address)
        self._cluster.connect()
        return self._cluster

    # -- nodes ---------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        infos: dict[str, NodeInfo] = {}
        for raw in self._node_table(fresh=True).values():
            info = node_info(raw)
            held = infos.get(info.name)
            # a name taken by a live node and a dead one (a node restarted): the live one
            if held is None or (held.state == LOST and info.state != LOST):
                infos[info.name] = info
        return sorted(infos.values(), key=lambda n: n.name)

    def _node_table(self, fresh: bool = False) -> dict[str, dict]:
        when, table = self._table
        if fresh or time.monotonic() - when > NODES_TTL_S:
            table = {n["node_id"]: n for n in self.cluster.nodes()}
            self._table = (time.monotonic(), table)
        return table

    def _node_by_name(self, name: str) -> dict | None:
        for fresh in (False, True):
            found = [n for n in self._node_table(fresh).values() if node_name(n) == name]
            found.sort(key=lambda n: not n["alive"])
            if found and found[0]["alive"]:
                return found[0]
        return found[0] if found else None

    def _lost_reason(self, node_id: str, fresh: bool = False) -> str | None:
        """Why the node is lost (dead, or unknown to Ray), or None while it is alive — or
        while Ray's head cannot say (its agent may still answer: calls go to it directly)."""
        try:
            node = self._node_table(fresh).get(node_id)
        except ClusterError:
            return None
        if node is None:
            return "Ray no longer knows the node"
        return None if node["alive"] else dead_reason(node)

    # -- start ---------------------------------------------------------------------------

    def launch(self, plan: LaunchPlan) -> Handle:
        name = plan.allocation.node
        node = self._node_by_name(name)
        if node is None or not node["alive"]:
            raise NodeUnavailable(f"node {name} is not in the Ray cluster" if node is None
                                  else f"node {name} was lost: {dead_reason(node)}")
        node_id = node["node_id"]
        plan.workdir.mkdir(parents=True, exist_ok=True)
        mirror = {f: size_of(plan.workdir / f) for f in MIRRORED}
        job = {"job_id": plan.job_id, "attempt": plan.attempt,
               "memory_mb": plan.allocation.memory_mb}
        try:
            ref = self._launch_call(node_id, plan_dict(plan))
        except CallTimeout as e:  # it may start later: make sure it never does unseen
            raise RuntimeError(f"{e}; {self._abandon(node_id, job)}") from None
        except (AgentGone, AgentFailed) as e:
            raise RuntimeError(f"on node {name}: {e}") from None
        ref["mirror"] = mirror
        handle = Handle(plan.job_id, plan.attempt, plan.workdir, plan.allocation.memory_mb,
                        ref)
        handle.extra["ray_offsets"] = dict(ref.get("offsets") or {})
        return handle

    def _launch_call(self, node_id: str, plan: dict | None, method: str = "launch") -> Any:
        """Launch through the node's agent (or another call that may be the node's first),
        started if there is none; an agent that died since (it took its jobs with it) is
        replaced once."""
        def call() -> Any:
            self.cluster.agent(node_id, self._agent_config())
            args = () if plan is None else (plan,)
            return self.cluster.call(node_id, method, *args, timeout=LAUNCH_TIMEOUT_S)

        try:
            return call()
        except AgentGone:  # the handle was forgotten: the next call makes a new agent
            if self._lost_reason(node_id, fresh=True):
                raise
            return call()

    def _agent_config(self) -> dict:
        s = self.settings
        return {"sandbox": s.sandbox, "job_network": s.job_network, "job_env": s.job_env,
                "job_max_processes": s.job_max_processes,
                "alerts_file": str(s.alerts_file) if s.alerts_file else None}

    def _abandon(self, node_id: str, job: dict) -> str:
        try:
            done = self.cluster.call(node_id, "abandon", job, timeout=CALL_TIMEOUT_S)["done"]
        except Exception as e:  # noqa: BLE001 - said in the job's reason
            self._end_agent(node_id)  # its jobs die with it: this one cannot start unseen
            return f"it could not be revoked there ({e}); the node's agent was stopped"
        return {"killed": "it had started there and was killed",
                "never": "it was revoked there before it started"}.get(
                    done, "it had ended there already")

    # -- watch ---------------------------------------------------------------------------

    def poll(self, handle: Handle) -> Exit | None:
        node_id = handle.ref.get("node_id", "")
        lost = self._lost_reason(node_id)
        if lost:
            return self._lost(handle, lost)
        if self._recently_silent(node_id):  # no call stacked behind one that just timed out
            return self._silence(handle, "its last call timed out")
        offsets = _offsets(handle)
        for _ in range(DRAIN_CALLS):
            try:
                reply = self.cluster.call(node_id, "poll", _job(handle), offsets,
                                          timeout=CALL_TIMEOUT_S)
            except (AgentGone, CallTimeout, AgentFailed) as e:
                return self._unanswered(handle, e)
            self._silent_since.pop(node_id, None)
            self._failed_at.pop(node_id, None)
            _append(handle, reply["chunks"], offsets)
            # one call per tick while it runs (a chatty job cannot hold the daemon's loop);
            # once it ended, everything before its exit comes at once
            if not reply["more"] or reply["exit"] is None:
                break
        ended = reply["exit"]
        if ended is None or reply["more"]:
            return None
        return exit_from_dict(ended)

    def _unanswered(self, handle: Handle, error: Exception) -> Exit | None:
        """A call that failed: LOST when the node is (Ray says so now) or the agent is
        gone for good; else the attempt counts as running until the agent has been
        silent for UNANSWERED_LOST_S."""
        node_id = handle.ref.get("node_id", "")
        lost = self._lost_reason(node_id, fresh=True)
        if lost:
            return self._lost(handle, lost)
        if isinstance(error, AgentGone):
            return self._lost(handle, f"its llmos agent died ({error}); its jobs died with it")
        self._failed_at[node_id] = time.monotonic()
        return self._silence(handle, str(error))

    def _silence(self, handle: Handle, error: str) -> Exit | None:
        """None while the node's agent has been silent for less than UNANSWERED_LOST_S."""
        node_id = handle.ref.get("node_id", "")
        since = self._silent_since.setdefault(node_id, time.monotonic())
        if time.monotonic() - since > UNANSWERED_LOST_S:
            # The node may still be alive: end its agent, and with it its jobs, before
            # their retry starts elsewhere (else the attempt would run twice).
            self._end_agent(node_id)
            return self._lost(handle, f"its llmos agent has not answered for "
                              f"{UNANSWERED_LOST_S:g} s ({error}); it was stopped")
        return None

    def _recently_silent(self, node_id: str) -> bool:
        failed = self._failed_at.get(node_id)
        return failed is not None and time.monotonic() - failed < CALL_TIMEOUT_S

    def _end_agent(self, node_id: str) -> None:
        try:
            self.cluster.kill(node_id)
        except Exception:  # noqa: BLE001 - the node may be gone meanwhile: so are its jobs
            pass

    @staticmethod
    def _lost(handle: Handle, reason: str) -> Exit:
        node = handle.ref.get("node") or handle.ref.get("node_id", "?")
        return Exit(ExitKind.LOST, message=f"node {node} was lost: {reason}")

    def recover(self, job_id: int, attempt: int, workdir: Path, memory_mb: int,
                ref: dict[str, Any] | None) -> Handle | Exit | None:
        job = {"job_id": job_id, "attempt": attempt, "memory_mb": memory_mb, "ref": ref}
        if ref and ref.get("node") and not ref.get("node_id"):
            # a gang's rank whose launch was not stored: only its node can have it
            node = self._node_by_name(ref["node"])
            if (node is None or not node["alive"]
                    or self.cluster.agent(node["node_id"], None) is None):
                return None  # nothing runs there (no agent was ever started), nor ever will
            ref = {"node": ref["node"], "node_id": node["node_id"]}
            job["ref"] = None
            return self._recover_on(node["node_id"], job, workdir, ref)
        if not ref or not ref.get("node_id"):
            return self._recover_unbound(job, workdir)
        return self._recover_on(ref["node_id"], job, workdir, dict(ref))

    def _recover_on(self, node_id: str, job: dict, workdir: Path,
                    ref: dict) -> Handle | Exit | None:
        """The attempt as the agent of ``node_id`` knows it (``job["ref"]``: its stored
        reference, or None when its launch was never stored)."""
        gone = Handle(job["job_id"], job["attempt"], workdir, job["memory_mb"], dict(ref))
        lost = self._lost_reason(node_id, fresh=True)
        if lost:
            return self._lost(gone, lost)
        try:
            found = self.cluster.call(node_id, "recover", job, timeout=CALL_TIMEOUT_S)
        except (AgentGone, CallTimeout, AgentFailed) as e:
            self._end_agent(node_id)  # whatever still runs there ends before any retry
            return self._lost(gone, f"its llmos agent cannot be asked ({e}); it was stopped")
        return self._recovered(found, job, workdir, ref)

    def _recover_unbound(self, job: dict, workdir: Path) -> Handle | Exit | None:
        """No stored reference (the daemon died during the launch): ask every live
        node's agent; one that has the attempt says how it is (and an unclaimed launch
        is revoked there), and where no agent has it, it never started."""
        for node_id, node in self._node_table(fresh=True).items():
            if not node["alive"] or self.cluster.agent(node_id, None) is None:
                continue
            try:
                found = self.cluster.call(node_id, "recover", job, timeout=CALL_TIMEOUT_S)
            except (AgentGone, CallTimeout, AgentFailed):
                continue
            if found["state"] != "never":
                ref = {**(found.get("ref") or {}), "node_id": node_id,
                       "node": node_name(node)}
                return self._recovered(found, job, workdir, ref)
        return None

    def _recovered(self, found: dict, job: dict, workdir: Path,
                   ref: dict) -> Handle | Exit | None:
        if found["state"] == "never":
            return None
        handle = Handle(job["job_id"], job["attempt"], workdir, job["memory_mb"], ref)
        if found["state"] == "ended":
            self.poll_files(handle)
            return exit_from_dict(found["exit"])
        node = ref.get("node") or ref.get("node_id", "?")[:12]
        ref.update({k: v for k, v in found["ref"].items() if k in ("pid", "pid_started")})
        ref["where"] = f"process {handle.pid} on node {node}"
        return handle

    def poll_files(self, handle: Handle) -> None:
        """Bring the attempt's files up to date in the daemon's folder (best effort)."""
        node_id = handle.ref.get("node_id", "")
        offsets = _offsets(handle)
        for _ in range(DRAIN_CALLS):
            try:
                reply = self.cluster.call(node_id, "poll", _job(handle), offsets,
                                          timeout=CALL_TIMEOUT_S)
            except (AgentGone, CallTimeout, AgentFailed):
                return
            _append(handle, reply["chunks"], offsets)
            if not reply["more"]:
                return

    def memory_used_mb(self, handle: Handle) -> float | None:
        return self._forward(handle, "memory_used_mb")

    # -- signal --------------------------------------------------------------------------

    def request_yield(self, handle: Handle) -> None:
        self._forward(handle, "request_yield")

    def terminate(self, handle: Handle) -> None:
        self._forward(handle, "terminate")

    def kill(self, handle: Handle) -> None:
        self._forward(handle, "kill")

    def _forward(self, handle: Handle, method: str) -> Any:
        """Best effort: a node that is gone took its jobs with it."""
        node_id = handle.ref.get("node_id", "")
        if self._lost_reason(node_id):
            return None
        try:
            return self.cluster.call(node_id, method, _job(handle), timeout=CALL_TIMEOUT_S)
        except (AgentGone, CallTimeout, AgentFailed):
            return None

    def free_port(self, name: str) -> int:
        """A TCP port free now on node ``name`` (where a gang it leads meets), from the
        node's agent (started if there is none)."""
        node = self._node_by_name(name)
        if node is None or not node["alive"]:
            raise NodeUnavailable(f"node {name} is not in the Ray cluster" if node is None
                                  else f"node {name} was lost: {dead_reason(node)}")
        try:
            return int(self._launch_call(node["node_id"], None, method="free_port"))
        except CallTimeout as e:
            raise RuntimeError(f"node {name}: {e}") from None
        except (AgentGone, AgentFailed) as e:
            raise RuntimeError(f"on node {name}: {e}") from None

    def agent_health(self, node_name_: str) -> dict:
        """What the agent on a node says of itself (its resident memory, sandbox)."""
        node = self._node_by_name(node_name_)
        if node is None:
            raise ValueError(f"no node {node_name_}")
        self.cluster.agent(node["node_id"], self._agent_config())
        return self.cluster.call(node["node_id"], "health", timeout=LAUNCH_TIMEOUT_S)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()


# -- nodes as llmos sees them -------------------------------------------------------------


def node_name(raw: dict) -> str:
    return raw["labels"].get(NAME_LABEL) or "node-" + raw["node_id"][:12]


def dead_reason(raw: dict) -> str:
    why = raw.get("death_reason")
    return "Ray reports the node dead" + (f" ({why})" if why else "")


def node_info(raw: dict) -> NodeInfo:
    res = raw["resources"]
    accelerator = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")),
                       "gpu")
    capacity = NodeCapacity(
        name=node_name(raw),
        cores=tuple(range(int(res.get("CPU", 0)))),
        memory_mb=int(res.get("memory", 0)) >> 20,
        gpus=tuple(GPU(i, accelerator, 0) for i in range(int(res.get("GPU", 0)))),
        labels={k: v for k, v in raw["labels"].items()
                if not k.startswith("ray.io/") and k != NAME_LABEL})
    alive = raw["alive"]
    return NodeInfo(capacity, address=raw["address"], state=READY if alive else LOST,
                    reason="" if alive else dead_reason(raw), node_id=raw["node_id"])


# -- plain data to and from the agent ------------------------------------------------------


def plan_dict(plan: LaunchPlan) -> dict:
    data = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    data["allocation"] = plan.allocation.to_json()
    data["read_roots"] = list(plan.read_roots)
    data.pop("workdir")  # the node has its own
    return data


def exit_from_dict(d: dict) -> Exit:
    return Exit(ExitKind(d["kind"]), d.get("exit_code"), d.get("signal"),
                d.get("message") or "", d.get("result"))


def _job(handle: Handle) -> dict:
    return {"job_id": handle.job_id, "attempt": handle.attempt,
            "memory_mb": handle.memory_mb, "ref": handle.ref}


def _offsets(handle: Handle) -> dict[str, int]:
    """How far each of the node's files is copied: kept in the handle, and after a daemon
    restart worked out from the reference (the node's sizes and the daemon's at launch)
    and what the daemon's copy has grown by since."""
    offsets = handle.extra.get("ray_offsets")
    if offsets is None:
        node = handle.ref.get("offsets") or {}
        mirror = handle.ref.get("mirror") or {}
        offsets = {f: int(node.get(f, 0)) + max(0, size_of(handle.workdir / f)
                                               - int(mirror.get(f, 0)))
                   for f in MIRRORED}
        handle.extra["ray_offsets"] = offsets
    return offsets


def _append(handle: Handle, chunks: dict[str, bytes], offsets: dict[str, int]) -> None:
    handle.workdir.mkdir(parents=True, exist_ok=True)
    for name, data in chunks.items():
        if name not in MIRRORED or not data:
            continue
        with open_append(handle.workdir / name) as f:
            f.buffer.write(data)
        offsets[name] = offsets.get(name, 0) + len(data)


