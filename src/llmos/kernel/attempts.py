"""A running attempt as the daemon tracks it, and how the daemon is stopping it: why
(cancel, timeout, memory, preemption, shutdown: what the job's state becomes) and how far
the stop has escalated (asked to yield -> SIGTERM -> SIGKILL)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmos.kernel.executors import Handle
from llmos.kernel.scheduler import RunningJob


class StopIntent(enum.Enum):
    """Why the daemon stops an attempt, which decides the job's state afterwards."""

    CANCEL = "cancel"  # CANCELLED
    TIMEOUT = "timeout"  # FAILED (or retried) with the timeout as the reason
    MEMORY = "memory"  # FAILED (or retried) for going over its memory limit
    PREEMPT = "preempt"  # PREEMPTED, then PENDING again (resumes from its checkpoint)
    SHUTDOWN = "shutdown"  # PENDING again: the daemon is stopping


class StopStage(enum.Enum):
    """How far a stop has escalated: yield -> SIGTERM -> SIGKILL."""

    ASKED_TO_YIELD = 0
    TERMINATED = 1  # SIGTERM sent to its process group
    KILLED = 2  # SIGKILL sent to its process group


@dataclass
class Stop:
    """Why the daemon is stopping an attempt, and when it escalates next."""

    intent: StopIntent
    reason: str
    stage: StopStage
    next_at: float


@dataclass
class Tracked:
    job: RunningJob
    handle: Handle
    executor: str
    stop: Stop | None = None
    memory_check_at: float = 0.0
