"""The scheduler: queue order, dependencies, quota, fit, score, bind, backfill, preemption.

Each stage is a pure function in ``stages.py``; ``core.schedule`` runs one pass.
"""

from llmos.kernel.scheduler.core import schedule
from llmos.kernel.scheduler.framework import (
    Binding,
    PendingJob,
    Preemption,
    Quota,
    Reservation,
    RunningJob,
    SchedulerConfig,
    SchedulerOutput,
    Status,
)

__all__ = [
    "Binding", "PendingJob", "Preemption", "Quota", "Reservation", "RunningJob", "SchedulerConfig",
    "SchedulerOutput", "Status", "schedule",
]
