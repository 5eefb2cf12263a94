"""Programs the dashboard's browser tests run as jobs (path/to/web_programs.py:function)."""

from __future__ import annotations

import time


def loss_curve(ctx, steps: int = 25) -> dict:
    """A training job in miniature: a falling loss and a rising accuracy per step, reported
    through the job context as a real training loop reports them, and a line of log each."""
    loss = 2.0
    for step in range(steps):
        loss = 0.05 + 1.95 * 0.85 ** step
        ctx.metric("loss", loss, step=step)
        ctx.metric("accuracy", 1.0 - loss / 2.1, step=step)
        ctx.progress(step + 1, steps, unit="steps")
        print(f"step {step} loss {loss:.4f}", flush=True)
    return {"final_loss": round(loss, 4)}


def pause(ctx, seconds: float = 2.0) -> str:
    """Run for a moment (long enough to be seen running), then succeed."""
    print("working", flush=True)
    time.sleep(seconds)
    print("done", flush=True)
    return "done"
