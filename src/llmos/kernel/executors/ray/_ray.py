"""Everything llmos says to Ray, in one thin class: the only module that imports ``ray``.

:class:`RayCluster` connects to a running cluster (checking first that the address
answers at all, and that Ray's version is one llmos supports), lists its nodes as plain
dicts, finds or starts the llmos agent on a node (a detached actor pinned to that node,
asking no resources: llmos accounts for the jobs' cores and memory itself), calls an
agent's method with a deadline, and kills an agent. Nothing here decides anything: the
executor (``__init__``) does. ``ray`` is imported on first use, so llmos without the
``ray`` extra never needs it, and a unit test may hand the executor another object with
the same methods.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

NAMESPACE = "llmos"
AGENT_PREFIX = "llmos-agent-"
SUPPORTED = ((2, 40), (3, 0))  # Ray >=2.40,<3, as pyproject's ``ray`` extra says
CONNECT_TIMEOUT_S = 3.0
# Calls of one agent that may run at once: polls and signals go on during a launch.
AGENT_CONCURRENCY = 32


class ClusterError(ValueError):
    """The Ray cluster cannot be used (unreachable, unsupported version): one line."""


class AgentGone(RuntimeError):
    """The agent (its process, or its node) is gone; the call did not run."""


class CallTimeout(TimeoutError):
    """The agent did not answer in time (it may be busy, or its node dying)."""


class AgentFailed(RuntimeError):
    """The agent ran the call and it raised (e.g. a launch the node could not start)."""


class NodeAgentActor:
    """The Ray actor on each node: a :class:`~.agent.NodeAgent` behind Ray's calls. Only
    this module knows it is an actor; the agent is plain Python."""

    def __init__(self, node_id: str, config: dict) -> None:
        from llmos.kernel.executors.ray.agent import NodeAgent

        self.agent = NodeAgent(node_id, config)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.agent, method)(*args)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[str, int]:
    """(host, port) of ``address`` once a TCP connection to it succeeded; ClusterError
    within ``timeout`` seconds otherwise (ray.init itself may wait for minutes)."""
    if "://" in address:  # ray:// is Ray Client's proxy, not the GCS a driver joins
        raise ClusterError(f"the Ray address {address!r} is a URL: give the host:port of "
                           "the cluster head's GCS (e.g. 10.0.0.5:6379)")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"the Ray address {address!r} is not host:port (the GCS of the "
                           "cluster's head, e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: "
                           f"{e.strerror or e}") from None
    return host, int(port)


def version_ok(version: str) -> bool:
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return SUPPORTED[0] <= (major, minor) < SUPPORTED[1]


class RayCluster:
    def __init__(self, address: str) -> None:
        self.address = address
        self._ray = None
        self._agents: dict[str, Any] = {}  # node id -> actor handle

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster as a driver (once per process: Ray allows one connection)."""
        if self._ray is not None:
            return
        check_reachable(self.address)
        try:
            import ray
        except ImportError:
            raise ClusterError("Ray is not installed: pip install 'llmos[ray]'") from None
        if not version_ok(ray.__version__):
            raise ClusterError(f"Ray {ray.__version__} is not supported: llmos needs Ray "
                               f">={'.'.join(map(str, SUPPORTED[0]))},<{SUPPORTED[1][0]}")
        if not ray.is_initialized():
            try:
                # (no include_dashboard: Ray refuses it when joining a running cluster)
                ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ClusterError(f"cannot join the Ray cluster at {self.address}: "
                                   f"{str(e).splitlines()[0] if str(e) else e}") from None
        self._ray = ray

    @property
    def ray(self):
        self.connect()
        return self._ray

    def close(self) -> None:
        self._agents.clear()

    # -- nodes -----------------------------------------------------------------------------

    def nodes(self) -> list[dict]:
        """Every node Ray knows, the dead too: node_id, alive, address, resources (totals),
        labels, death_reason (words, or ""). ClusterError within seconds when the head
        does not answer (Ray's own client would retry for a minute)."""
        ray = self.ray
        check_reachable(self.address)
        found = []
        for n in ray.nodes():
            found.append({
                "node_id": n["NodeID"],
                "alive": bool(n.get("Alive")),
                "address": n.get("NodeManagerAddress", ""),
                "resources": dict(n.get("Resources") or {}),
                "labels": dict(n.get("Labels") or {}),
                "death_reason": str(n.get("DeathReasonMessage") or n.get("DeathReason") or ""),
            })
        return found

    # -- agents ----------------------------------------------------------------------------

    def agent(self, node_id: str, config: dict | None) -> Any | None:
        """The agent actor on ``node_id``: the running one, else (with ``config``) a new
        one; None when there is none and none was to be made."""
        if node_id in self._agents:
            return self._agents[node_id]
        ray = self.ray
        name = AGENT_PREFIX + node_id
        if config is None:
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                return None
        else:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            handle = ray.remote(NodeAgentActor).options(
                name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                num_cpus=0, max_restarts=0, max_concurrency=AGENT_CONCURRENCY,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(node_id, config)
        self._agents[node_id] = handle
        return handle

    def call(self, node_id: str, method: str, *args: Any, timeout: float) -> Any:
        """``method(*args)`` on the agent of ``node_id``. AgentGone when it died (the handle
        is forgotten: the next :meth:`agent` looks again), CallTimeout past ``timeout``."""
        ray = self.ray
        handle = self._agents.get(node_id) or self.agent(node_id, None)
        if handle is None:
            raise AgentGone(f"no llmos agent runs on node {node_id[:12]}")
        try:
            return ray.get(handle.call.remote(method, *args), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise CallTimeout(f"the llmos agent on node {node_id[:12]} did not answer "
                              f"within {timeout:g} s") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            self._agents.pop(node_id, None)
            raise AgentGone(_first_line(e)) from None
        except ray.exceptions.RayTaskError as e:  # the agent's own exception
            cause = getattr(e, "cause", None) or e
            raise AgentFailed(f"{type(cause).__name__}: {_first_line(cause)}") from None

    def kill(self, node_id: str) -> None:
        handle = self._agents.pop(node_id, None) or self.agent(node_id, None)
        self._agents.pop(node_id, None)
        if handle is not None:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
