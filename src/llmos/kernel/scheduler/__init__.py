"""The scheduler: a profile of stages (queue sort, pre-filter, filter, post-filter, score,
reserve/unreserve, permit, bind) run over the queue by one pure pass.

The pure functions live in ``stages.py``, the stage objects and the default profile in
``profiles.py``, the data and the one :class:`Status` type in ``framework.py``;
``core.schedule`` runs one pass of a profile.
"""

from llmos.kernel.scheduler.core import schedule
from llmos.kernel.scheduler.framework import (
    OK,
    Binding,
    Code,
    Cycle,
    PendingJob,
    Preemption,
    Profile,
    Quota,
    Reservation,
    RunningJob,
    SchedulerConfig,
    SchedulerOutput,
    Stage,
    Status,
)
from llmos.kernel.scheduler.profiles import DEFAULT_PROFILE

__all__ = [
    "DEFAULT_PROFILE", "OK", "Binding", "Code", "Cycle", "PendingJob", "Preemption", "Profile",
    "Quota", "Reservation", "RunningJob", "SchedulerConfig", "SchedulerOutput", "Stage",
    "Status", "schedule",
]
