"""A background control loop: one thread that runs a pass every ``period_s`` seconds, or at
once when woken, and outlives any one failing pass (logged). The serving controller and the
pipeline engine are such loops; the daemon's own loop holds its lock and is its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("llmos.daemon")


class Loop:
    def __init__(self, name: str, period_s: float, body: Callable[[], None]):
        self.name, self.period_s, self.body = name, period_s, body
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.body()
            except Exception:  # the loop must outlive any one bad pass
                log.exception("%s: a pass failed", self.name)
