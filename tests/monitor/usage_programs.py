"""Programs the monitoring tests run as jobs (referenced as path/to/this/file.py:function)."""

from __future__ import annotations

import os
import time


def burn(ctx, mb: int = 200, gate: str = "", seconds: float = 60.0) -> None:
    """Hold ``mb`` MB resident (every page touched) and keep one core busy until the file
    ``gate`` exists (or ``seconds`` pass)."""
    hoard = bytearray(os.urandom(1)) * (mb << 20)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline and not (gate and os.path.exists(gate)):
        for _ in range(200_000):
            n += 1
    del hoard
