"""Executors start job attempts: ``local`` (sandboxed subprocesses) built in; others by name."""

from llmos.kernel.executors.base import (
    Executor,
    Exit,
    ExitKind,
    Handle,
    LaunchPlan,
    UnknownExecutor,
    available_executors,
    executor_class,
)

__all__ = [
    "Executor", "Exit", "ExitKind", "Handle", "LaunchPlan", "UnknownExecutor",
    "available_executors", "executor_class",
]
