"""Small programs the tuning tests run as trials (each a real kernel job)."""

from __future__ import annotations


def curve(ctx, x: float, y: float, steps: int = 12, delay: float = 0.1) -> dict:
    """A noisy learning curve falling towards a level set by (x, y): lowest at x=1,
    y=-0.5. Reports ``loss`` at steps 1..steps, ``delay`` seconds apart."""
    import random
    import time

    level = (x - 1.0) ** 2 + 0.5 * (y + 0.5) ** 2
    rng = random.Random(f"{x:.9f},{y:.9f}")
    value = None
    for step in range(1, steps + 1):
        value = level + 2.0 / step + rng.uniform(-0.02, 0.02)
        ctx.metric("loss", value, step=step)
        if step < steps:
            time.sleep(delay)
    return {"loss": value}


def final_only(ctx, x: float) -> dict:
    """Reports its objective only in its result."""
    return {"score": -abs(x - 2.0)}


def broken(ctx, x: float) -> dict:
    raise RuntimeError("this trial always fails")
