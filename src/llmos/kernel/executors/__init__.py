"""Executors start job attempts, picked by name from the ``executors`` kind of
:mod:`llmos.extensions`: ``local`` (sandboxed subprocesses) built in; others (a Ray
executor) register the same way."""

from llmos.kernel.executors.base import (
    Executor,
    Exit,
    ExitKind,
    Handle,
    LaunchPlan,
    NodeUnavailable,
    UnknownExecutor,
    available_executors,
    executor_class,
)

__all__ = [
    "Executor", "Exit", "ExitKind", "Handle", "LaunchPlan", "NodeUnavailable", "UnknownExecutor",
    "available_executors", "executor_class",
]
