"""How one request's output travels from the engine thread to its consumer.

:class:`RequestStream` is written by the engine thread and read by one consumer, either
synchronously (``for delta in stream``, ``stream.result()``) or from an asyncio event loop
(``async for delta in stream``, ``await stream.aresult()``) without blocking the loop: the
producer wakes async waiters with ``call_soon_threadsafe``. :class:`EncodeHandle` is the
one-shot equivalent for encoder requests (a ``concurrent.futures.Future`` underneath).

Owns no engine state; it does not know how tokens are made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable

from llmos.serve.engines.base import (
    Completion,
    EncodeResult,
    FinishReason,
    StreamDelta,
    Usage,
)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class RequestStream:
    """Deltas of one generation request; the last one carries the finish reason and usage."""

    def __init__(self, request_id: str, prompt_tokens: int,
                 on_abort: Callable[[str], bool] | None = None):
        self.request_id = request_id
        self._prompt_tokens = prompt_tokens
        self._on_abort = on_abort
        self._items: deque[StreamDelta] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._final: StreamDelta | None = None  # pushed by the producer
        self._drained = False  # the consumer has taken the final delta
        self._token_ids: list[int] = []
        self._text: list[str] = []

    # ----------------------------------------------------------------- producer side

    def _push(self, delta: StreamDelta) -> None:
        """Called by the engine thread. Nothing is accepted after the final delta."""
        with self._cond:
            if self._final is not None:
                return
            self._items.append(delta)
            self._token_ids.extend(delta.token_ids)
            self._text.append(delta.text)
            if delta.finish_reason is not None:
                self._final = delta
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _finish(self, reason: FinishReason, completion_tokens: int,
                error: str | None = None, token_ids: tuple[int, ...] = (), text: str = "") -> None:
        self._push(StreamDelta(self.request_id, token_ids, text, reason,
                               Usage(self._prompt_tokens, completion_tokens), error))

    # ----------------------------------------------------------------- consumer side

    @property
    def finished(self) -> bool:
        """True once the engine has produced the final delta."""
        return self._final is not None

    def abort(self) -> bool:
        """Ask the engine to abort this request (for a client that went away)."""
        return self._on_abort(self.request_id) if self._on_abort else False

    def next_delta(self, timeout: float | None = None) -> StreamDelta:
        """The next delta; StopIteration after the final one, TimeoutError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._drained:
                    raise StopIteration
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no output from request {self.request_id} "
                                       f"within {timeout} s")
                self._cond.wait(remaining)
            return self._pop()

    def _pop(self) -> StreamDelta:
        delta = self._items.popleft()
        if delta.finish_reason is not None:
            self._drained = True
        return delta

    def __iter__(self):
        return self

    def __next__(self) -> StreamDelta:
        return self.next_delta()

    def __aiter__(self):
        return self

    async def __anext__(self) -> StreamDelta:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._pop()
                if self._drained:
                    raise StopAsyncIteration
                fut = loop.create_future()
                self._waiters.append((loop, fut))
            await fut

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the final delta and return the whole completion (whatever was consumed
        before). TimeoutError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._final is not None, timeout):
                raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
            self._items.clear()
            self._drained = True
            return self._completion()

    async def aresult(self) -> Completion:
        async for _ in self:
            pass
        with self._cond:
            return self._completion()

    def _completion(self) -> Completion:
        final = self._final
        assert final is not None and final.finish_reason is not None and final.usage is not None
        return Completion(self.request_id, tuple(self._token_ids), "".join(self._text),
                          final.finish_reason, final.usage, final.error)


class EncodeHandle:
    """The pending result of an encoder request: ``handle.result()`` or ``await handle``."""

    def __init__(self, request_id: str, on_abort: Callable[[str], bool] | None = None):
        self.request_id = request_id
        self._future: concurrent.futures.Future[EncodeResult] = concurrent.futures.Future()
        self._on_abort = on_abort

    def done(self) -> bool:
        return self._future.done()

    def abort(self) -> bool:
        return self._on_abort(self.request_id) if self._on_abort else False

    def result(self, timeout: float | None = None) -> EncodeResult:
        """The result; raises the engine's error for this request, ``RequestAborted`` when it
        was aborted, TimeoutError on timeout."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"request {self.request_id} did not finish "
                               f"within {timeout} s") from None

    def __await__(self):
        return asyncio.wrap_future(self._future).__await__()

    def _set_result(self, result: EncodeResult) -> None:
        if not self._future.done():
            self._future.set_result(result)

    def _set_error(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)
