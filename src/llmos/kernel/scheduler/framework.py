"""The scheduler's plain data: what goes in, what comes out, and the stage status.

Between the daemon and the scheduler pass only these dataclasses (vLLM's
``SchedulerOutput`` habit): the scheduler never touches the database or a process.
Times are epoch seconds (floats).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from llmos.kernel.resources import Allocation, Request


class Status(enum.Enum):
    """What a stage says about one job (stages return this instead of raising)."""

    OK = "ok"  # go on to the next stage
    WAIT = "wait"  # cannot go on now; the accompanying reason says why


@dataclass(frozen=True)
class PendingJob:
    id: int
    request: Request
    priority: int  # rank of its class: 0 low, 1 normal, 2 high
    queued_at: float
    timeout_s: float | None = None
    team: str | None = None
    waiting_for: tuple[int, ...] = ()  # unfinished dependencies


@dataclass(frozen=True)
class RunningJob:
    id: int
    allocation: Allocation
    priority: int
    started_at: float
    timeout_s: float | None = None
    checkpointable: bool = False
    team: str | None = None

    @property
    def expected_end(self) -> float:
        """The latest moment it can still hold its resources (its timeout), or infinity."""
        return self.started_at + self.timeout_s if self.timeout_s else math.inf


@dataclass(frozen=True)
class Binding:
    job_id: int
    allocation: Allocation
    backfilled: bool = False


@dataclass(frozen=True)
class Reservation:
    """The blocked job at the head of the queue, and when and where it will fit."""

    job_id: int
    node: str
    at: float  # math.inf when running jobs have no timeout to bound it


@dataclass(frozen=True)
class Preemption:
    """Lower-priority checkpointable jobs whose yielding would let ``for_job`` start."""

    for_job: int
    node: str
    victims: tuple[int, ...]


@dataclass
class SchedulerOutput:
    bindings: list[Binding] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # why each unbound job waits
    reservation: Reservation | None = None
    preemptions: list[Preemption] = field(default_factory=list)


@dataclass(frozen=True)
class Quota:
    """What one team's running jobs may hold together; None means no limit."""

    cpu: float | None = None
    memory_mb: int | None = None
    gpu: int | None = None
    jobs: int | None = None  # running at once

    @property
    def millicores(self) -> int | None:
        return None if self.cpu is None else round(self.cpu * 1000)


@dataclass(frozen=True)
class SchedulerConfig:
    aging_s: float = 600.0  # a job waiting this long rises one priority class
    max_rank: int = 2
    quotas: dict[str, Quota] = field(default_factory=dict)  # team -> limit
