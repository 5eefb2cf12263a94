"""The executor interface, the plain data it exchanges with the daemon, and the registry.

An executor starts one attempt of a job from a :class:`LaunchPlan`, reports how it ended
as an :class:`Exit`, and can signal or stop it. Executors are picked by name through the
``executors`` kind of :mod:`llmos.extensions` (the ``llmos.executors`` entry-point group:
``local`` built in the same way a Ray executor would register), and import their engines
lazily.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmos import extensions
from llmos.kernel.resources import Allocation


@dataclass(frozen=True)
class LaunchPlan:
    job_id: int
    attempt: int
    program: str
    params: dict[str, Any]
    allocation: Allocation
    workdir: Path
    api_url: str | None = None
    # The job's own API token and the CA bundle to trust the API with (TLS). The token
    # reaches the job through its launch file, never through its environment.
    api_token: str | None = None
    api_ca: str | None = None
    # Who the job runs for, and the host folders it may read ("/": anywhere) — the
    # sandbox shows it those and no others; programs that read host paths check them.
    team: str | None = None
    read_roots: tuple[str, ...] = ()


@dataclass
class Handle:
    """A running attempt, as the executor tracks it. ``pid_started`` guards against pid
    reuse when a restarted daemon adopts the process."""

    job_id: int
    attempt: int
    pid: int
    pid_started: float
    workdir: Path
    memory_mb: int
    extra: dict[str, Any] = field(default_factory=dict)


class ExitKind(str, enum.Enum):
    SUCCEEDED = "succeeded"
    YIELDED = "yielded"  # the program returned after being asked to yield
    FAILED = "failed"  # the program raised or exited non-zero
    MEMORY = "memory"  # stopped for going over its memory limit
    KILLED = "killed"  # ended by a signal the daemon did not send
    LOST = "lost"  # the process vanished while no daemon watched it


@dataclass(frozen=True)
class Exit:
    kind: ExitKind
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""
    result: dict[str, Any] | None = None


class Executor(Protocol):
    name: str

    def launch(self, plan: LaunchPlan) -> Handle: ...

    def poll(self, handle: Handle) -> Exit | None:
        """How the attempt ended, or None while it runs."""

    def recover(self, job_id: int, attempt: int, workdir: Path, memory_mb: int,
                pid: int | None, pid_started: float | None) -> Handle | Exit | None:
        """After a daemon restart, find an attempt a previous daemon started: a Handle when
        it still runs, its Exit when it ended, None when it provably never started."""

    def request_yield(self, handle: Handle) -> None: ...

    def terminate(self, handle: Handle) -> None:
        """Ask the whole attempt to stop (SIGTERM to its process group)."""

    def kill(self, handle: Handle) -> None:
        """Stop it now (SIGKILL to its process group)."""

    def memory_used_mb(self, handle: Handle) -> float | None: ...

    def close(self) -> None: ...


class UnknownExecutor(ValueError):
    pass


def executor_class(name: str) -> type:
    """The executor class registered as ``name``; UnknownExecutor lists the others."""
    try:
        return extensions.executors.load(name)
    except extensions.UnknownExtension as e:
        raise UnknownExecutor(str(e)) from None


def available_executors() -> list[str]:
    return extensions.executors.names()
