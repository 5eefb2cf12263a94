"""The trace-driven scheduler simulator (``llmos sim``): recorded jobs on a simulated
cluster, scheduled by the daemon's own scheduler (:func:`llmos.kernel.scheduler.schedule`
with a named policy's profile), on a simulated clock.

``trace`` reads traces (Philly CSV, JSON lines), ``cluster`` the cluster's shape,
``engine`` runs the discrete-event simulation, ``report`` turns results into figures,
a table, JSON and plots.
"""

from llmos.kernel.scheduler.sim.cluster import (
    Cluster,
    ClusterError,
    from_flags,
    load_cluster,
)
from llmos.kernel.scheduler.sim.engine import (
    NoProgress,
    SimParams,
    SimResult,
    Simulator,
    known_policies,
    profile_for,
    simulate,
)
from llmos.kernel.scheduler.sim.trace import TraceError, TraceJob, load_trace, select

__all__ = [
    "Cluster", "ClusterError", "NoProgress", "SimParams", "SimResult", "Simulator", "TraceError", "TraceJob",
    "from_flags", "known_policies", "load_cluster", "load_trace", "profile_for", "select",
    "simulate",
]
