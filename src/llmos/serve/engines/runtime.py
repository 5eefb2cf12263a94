"""The thread an engine works on: wait for work, take a step, repeat; pause and close.

An engine subclasses :class:`StepLoop` and supplies ``_has_work`` (called under the lock),
``_step`` (called without it), ``_step_failed`` (after a step raised) and ``_drain``
(called once the thread has stopped, to end whatever is still open). Callers on any thread
share ``self._lock``, a Condition; every change that may create work must ``notify`` it.

Knows nothing about models; of a request, only its id, priority and tenant (``_enqueue``).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from llmos.serve.engines.base import DuplicateRequest, EngineClosed

log = logging.getLogger(__name__)


class StepLoop:
    _thread_name = "llmos-engine"

    def _start_loop(self) -> None:
        self._lock = threading.Condition()
        self._closing = False
        self._closed = False
        self._pause_count = 0
        self._thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- for subclasses

    def _has_work(self) -> bool:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        raise NotImplementedError

    def _step_failed(self, error: Exception) -> None:
        """End the requests the failed step held (they would wait forever otherwise)."""
        raise NotImplementedError

    def _check_open(self) -> None:
        """Call under the lock before accepting a request."""
        if self._closing:
            raise EngineClosed(f"the {type(self).__name__} engine is closed")

    def _enqueue(self, request, item) -> None:
        """Accept ``item`` (the engine's record of ``request``): into the waiting queue
        (``self._waiting``, an AdmissionQueue) and the live requests (``self._live``)."""
        with self._lock:
            self._check_open()
            if request.request_id in self._live:
                raise DuplicateRequest(f"request {request.request_id} is already in the engine")
            self._waiting.push(request.request_id, item, priority=request.priority,
                               tenant=request.tenant)
            self._live[request.request_id] = item
            self._lock.notify_all()

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closing and (self._pause_count or not self._has_work()):
                    self._lock.wait()
                if self._closing:
                    return
            try:
                self._step()
            except Exception as e:  # a bug, not a request's fault: fail what was in flight
                log.exception("engine step failed")
                try:
                    self._step_failed(e)
                except Exception:
                    log.exception("could not fail the requests in flight")

    @contextmanager
    def paused(self):
        """No step starts while inside (the one in flight finishes first); requests can
        still be submitted and aborted. Nests."""
        with self._lock:
            self._pause_count += 1
        try:
            yield self
        finally:
            with self._lock:
                self._pause_count -= 1
                self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
                self._lock.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        if not already:
            self._drain()
            self._closed = True
