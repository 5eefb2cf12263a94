"""A running attempt as the daemon tracks it, and how the daemon is stopping it: why
(cancel, timeout, memory, preemption, shutdown: what the job's state becomes), how far
the stop has escalated (asked to yield -> SIGTERM -> SIGKILL), and the steps that begin
and escalate a stop through the attempt's executor."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from llmos.kernel.executors import Executor, Handle
from llmos.kernel.gangs import GangExecutor
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


def begin_stop(ex: Executor, tracked: Tracked, intent: StopIntent, reason: str, now: float,
               grace: float, kill_wait: float) -> None:
    """Start stopping ``tracked`` for ``intent``: a preemption asks it to yield (SIGTERM
    after ``grace``); another reason with a grace asks it to yield and sends SIGTERM
    (SIGKILL after ``grace``); without one, SIGKILL. A stop already under way for a
    reason other than preemption wins."""
    if tracked.stop is not None and tracked.stop.intent is not StopIntent.PREEMPT:
        return
    tracked.handle.extra["stopping"] = True  # a gang leaves the escalation to this
    if intent is StopIntent.PREEMPT:
        ex.request_yield(tracked.handle)
        tracked.stop = Stop(intent, reason, StopStage.ASKED_TO_YIELD, now + grace)
    elif grace > 0:
        ex.request_yield(tracked.handle)
        ex.terminate(tracked.handle)
        tracked.stop = Stop(intent, reason, StopStage.TERMINATED, now + grace)
    else:
        ex.kill(tracked.handle)
        tracked.stop = Stop(intent, reason, StopStage.KILLED, now + kill_wait)


def escalate(ex: Executor, tracked: Tracked, now: float, term_wait: float) -> None:
    """The next step of a stop whose time has come: SIGTERM (SIGKILL ``term_wait`` later),
    then SIGKILL."""
    stop = tracked.stop
    if now < stop.next_at or stop.stage is StopStage.KILLED:
        return
    if stop.stage is StopStage.ASKED_TO_YIELD:
        ex.terminate(tracked.handle)
        tracked.stop = replace(stop, stage=StopStage.TERMINATED, next_at=now + term_wait)
    else:
        ex.kill(tracked.handle)
        tracked.stop = replace(stop, stage=StopStage.KILLED, next_at=now)


def memory_over(ex: Executor, tracked: Tracked) -> str | None:
    """Why the attempt is over its memory limit (a gang: any rank over its own node's
    share), or None."""
    if isinstance(ex, GangExecutor):
        return ex.memory_over(tracked.handle)
    used, limit = ex.memory_used_mb(tracked.handle), tracked.handle.memory_mb
    if used is not None and used > limit:
        return f"exceeded its memory limit: {used:.0f} MB resident > {limit} MB"
    return None
