"""Small programs every llmos has, for smoke tests, benchmarks and demos."""

from __future__ import annotations

import time


def noop(ctx) -> None:
    """Do nothing and succeed."""


def sleep(ctx, seconds: float = 1.0, steps: int = 10) -> None:
    """Sleep for ``seconds``, reporting progress in ``steps`` steps; yields when asked."""
    steps = max(1, int(steps))
    for i in range(steps):
        if ctx.should_yield():
            ctx.log("asked to yield; stopping early")
            return
        time.sleep(seconds / steps)
        ctx.progress(i + 1, steps)


def echo(ctx, message: str = "hello from llmos") -> str:
    """Print ``message`` to the job's log and return it."""
    print(message, flush=True)
    return message
