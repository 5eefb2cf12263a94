"""The record an engine keeps of its work: recent steps (a bounded ring), counters, and the
time to first token of recent requests (bounded too).

Thread-safe: the engine thread writes, anyone reads a consistent :class:`RecordSnapshot`.
Holds ids and sizes only, never prompts or outputs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StepRecord:
    index: int  # 1-based step number
    started_at: float  # time.time()
    duration_s: float
    batch_size: int  # rows of the step's forward: tokens generated, or texts encoded
    request_ids: tuple[str, ...]  # the requests in the step, in batch order
    prefill_ids: tuple[str, ...] = ()  # those among them that joined (were prefilled) this step
    prefill_tokens: int = 0


@dataclass(frozen=True)
class Counters:
    steps: int = 0
    tokens: int = 0  # tokens generated (or inputs encoded, for encoders)
    prefill_tokens: int = 0  # prompt tokens run through the model
    max_batch_seen: int = 0
    requests_finished: int = 0
    preemptions: int = 0  # running requests sent back to wait for a higher-priority one
    interruptions: int = 0  # forwards abandoned midway for a higher-priority request


@dataclass(frozen=True)
class RecordSnapshot:
    steps: tuple[StepRecord, ...]
    counters: Counters
    ttft_s: dict[str, float]  # request id -> seconds from submit to first token

    def max_batch_with(self, request_ids: set[str]) -> int:
        """The largest number of ``request_ids`` seen together in one recorded step."""
        return max((len(request_ids.intersection(s.request_ids)) for s in self.steps), default=0)


class EngineRecord:
    def __init__(self, max_steps: int = 1024, max_requests: int = 4096):
        self._lock = threading.Lock()
        self._steps: deque[StepRecord] = deque(maxlen=max_steps)
        self._ttft: OrderedDict[str, float] = OrderedDict()
        self._max_requests = max_requests
        self._counters = Counters()

    def add_step(self, started_at: float, request_ids: Sequence[str], rows: int,
                 prefill_ids: Sequence[str] = (), prefill_tokens: int = 0) -> None:
        """One step: its requests, its ``rows`` (tokens generated or texts encoded), the
        requests that joined (were prefilled) in it and their prompt tokens."""
        with self._lock:
            c = self._counters
            step = StepRecord(c.steps + 1, started_at, time.time() - started_at, rows,
                              tuple(request_ids), tuple(prefill_ids), prefill_tokens)
            self._steps.append(step)
            self._counters = replace(c, steps=c.steps + 1, tokens=c.tokens + rows,
                                     prefill_tokens=c.prefill_tokens + prefill_tokens,
                                     max_batch_seen=max(c.max_batch_seen, rows))

    def first_token(self, request_id: str, seconds: float) -> None:
        with self._lock:
            self._ttft[request_id] = seconds
            while len(self._ttft) > self._max_requests:
                self._ttft.popitem(last=False)

    def finished(self, count: int = 1) -> None:
        with self._lock:
            c = self._counters
            self._counters = replace(c, requests_finished=c.requests_finished + count)

    def preempted(self) -> None:
        with self._lock:
            self._counters = replace(self._counters,
                                     preemptions=self._counters.preemptions + 1)

    def interrupted(self) -> None:
        with self._lock:
            self._counters = replace(self._counters,
                                     interruptions=self._counters.interruptions + 1)

    def snapshot(self) -> RecordSnapshot:
        with self._lock:
            return RecordSnapshot(tuple(self._steps), self._counters, dict(self._ttft))
