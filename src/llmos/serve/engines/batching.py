"""Continuous (iteration-level) batching, whatever runs the model: the bookkeeping every
batching engine shares.

:class:`BatchingEngine` owns the waiting queue and its admission order, the running batch
(request *i* sits in slot *i*), the step, sampling, incremental text, stop conditions and
the streams. Every step, on the engine's own thread:

1. aborted running requests leave the batch (their slots free);
2. when the batch is full and a waiting request outranks the lowest-priority running one,
   that one is *preempted*: it leaves the batch with what it has generated and goes back to
   the front of its queue; when it is admitted again its prompt and its output so far are
   prefilled anew (recomputation, as vLLM preempts) and it goes on where it stopped — its
   stream only sees a pause. A request that outranks a running one does not even wait for
   the step in flight in an engine that can stop its forward midway (``_can_interrupt``):
   the engine raises :class:`StepInterrupted` at its next safe point, the step's decode
   produces nothing (the rows are unchanged and run again), a prefill sends its requests
   back to the front of their queue, and the next step admits the newcomer;
3. waiting requests are admitted while slots are free (``max_batch``) and the step's prompt
   budget (``max_prefill_tokens``) lasts — highest priority first, then round-robin across
   tenants, FIFO within one (:mod:`admission`) — and prefilled (:meth:`_prefill_joining`);
   their first tokens go out at once, before the others decode;
4. the requests that were running before the step decode together (:meth:`_decode`);
5. each new token is detokenized, checked against stops and sent to its stream; finished
   requests leave the batch (:meth:`_free_slot` lets the engine move its cache rows).

An engine supplies those three hooks and the model-facing parts of the public API
(``load``, ``memory_bytes``). Knows nothing about HTTP, tenants' tokens or residency.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from llmos.errors import InvalidRequest
from llmos.serve.engines.admission import AdmissionQueue
from llmos.serve.engines.base import (
    ContextLengthExceeded,
    FinishReason,
    GenerationRequest,
    GenerativeEngine,
    Occupancy,
    StreamDelta,
)
from llmos.serve.engines.record import EngineRecord, RecordSnapshot
from llmos.serve.engines.runtime import StepLoop
from llmos.serve.engines.sampling import Sampler
from llmos.serve.engines.stream import RequestStream
from llmos.serve.engines.text import IncrementalText

log = logging.getLogger(__name__)


class StepInterrupted(Exception):
    """Raised inside an engine's forward when a higher-priority request is waiting."""


@dataclass(eq=False)
class Sequence:
    """One request while it is in the engine."""

    request: GenerationRequest
    stream: RequestStream
    sampler: Sampler
    text: IncrementalText
    submitted_at: float  # time.monotonic()
    slot: int = -1
    length: int = 0  # tokens in the KV cache
    last_token: int = -1  # sampled, not yet in the cache
    generated: int = 0
    aborted: bool = False
    cache: Any = field(default=None, repr=False)  # an engine's per-request state, if any
    output_ids: list[int] = field(default_factory=list)  # generated so far
    reused: int = 0  # context tokens an engine found in its cache at admission: not prefilled

    def context_ids(self) -> list[int]:
        """What a prefill runs: the prompt, and the output so far of a resumed request."""
        return [*self.request.prompt_token_ids, *self.output_ids]


class BatchingEngine(StepLoop, GenerativeEngine):
    _can_interrupt = False  # whether the engine calls _check_interrupt inside its forwards

    def _init_batching(self, tokenizer: Any, *, max_batch: int, max_queue: int,
                       max_prefill_tokens: int, max_context: int, vocab_size: int,
                       eos_token_ids: frozenset[int], record_steps: int,
                       sampler_device: Any) -> None:
        if max_batch < 1:
            raise InvalidRequest("max_batch must be at least 1")
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens  # prompt tokens admitted per step
        self.max_context = max_context
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._sampler_device = sampler_device
        self._waiting: AdmissionQueue[Sequence] = AdmissionQueue(max_queue)
        self._running: list[Sequence] = []  # slot i holds _running[i]
        self._live: dict[str, Sequence] = {}
        self._record = EngineRecord(max_steps=record_steps)
        self._interrupt = False  # a waiting request outranks a running one: stop the step
        self._start_loop()

    # -- hooks for engines -----------------------------------------------------------------

    def _prefill_joining(self, joining: list[Sequence]) -> list[tuple[Sequence, int]]:
        """Run the joining requests' prompts into their slots; each one's first token.
        Failures go through :meth:`_fail` and are left out of the result."""
        raise NotImplementedError

    def _decode(self, rows: list[Sequence]) -> list[tuple[Sequence, int]]:
        """One batched decode step of the running requests; each one's next token."""
        raise NotImplementedError

    def _room_for(self, seq: Sequence) -> bool:
        """Under the lock: whether ``seq`` may join now besides a free slot (an engine with a
        shared cache checks its room here)."""
        return True

    def _joined(self, seq: Sequence) -> None:
        """Under the lock: ``seq`` was admitted into slot ``seq.slot``."""

    def _free_slot(self, seq: Sequence, moved: Sequence | None) -> None:
        """Under the lock: ``seq`` leaves its slot (``self._running`` no longer holds it);
        ``moved`` (the last row, still at ``moved.slot``) takes it, or None when ``seq`` was
        the last row. Engines move or release cache rows here."""

    # -- public API --------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestStream:
        self._validate(request)
        stream = RequestStream(request.request_id, len(request.prompt_token_ids), self.abort)
        seq = Sequence(request, stream, Sampler(request.temperature, request.top_p,
                                                request.seed, self._sampler_device),
                       IncrementalText(self.tokenizer, request.stop, request.prompt_token_ids),
                       time.monotonic())
        self._enqueue(request, seq)
        if self._can_interrupt:
            with self._lock:
                if any(s.request.priority < request.priority for s in self._running):
                    self._interrupt = True
        return stream

    def _check_interrupt(self) -> None:
        """For engines, at safe points inside a forward (between layers)."""
        if self._interrupt:
            raise StepInterrupted

    def abort(self, request_id: str) -> bool:
        with self._lock:
            seq = self._live.get(request_id)
            if seq is None:
                return False
            if self._waiting.remove(request_id) is None:
                seq.aborted = True  # running: leaves the batch at the next step
                self._lock.notify_all()
                return True
            del self._live[request_id]
        seq.stream._finish(FinishReason.ABORT, 0)
        self._record.finished()
        return True

    def chat_prompt(self, messages: list[dict[str, Any]], *,
                    add_generation_prompt: bool = True) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest("this model has no chat template; send a plain prompt")
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def occupancy(self) -> Occupancy:
        with self._lock:
            return Occupancy(len(self._waiting), len(self._running))

    def record(self) -> RecordSnapshot:
        return self._record.snapshot()

    def _validate(self, request: GenerationRequest) -> None:
        prompt = request.prompt_token_ids
        need = len(prompt) + request.max_tokens
        if need > self.max_context:
            raise ContextLengthExceeded(
                f"request {request.request_id}: prompt ({len(prompt)} tokens) + max_tokens "
                f"({request.max_tokens}) = {need} exceeds the model's context of "
                f"{self.max_context} tokens")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(f"request {request.request_id}: token id {bad[0]} is outside "
                                 f"the vocabulary (0..{self.vocab_size - 1})")

    # -- the step --------------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._running) or len(self._waiting) > 0

    def _step(self) -> None:
        started = time.time()
        with self._lock:
            self._interrupt = False  # whoever asked is admitted in this step
            for seq in [s for s in self._running if s.aborted]:
                self._leave(seq, FinishReason.ABORT)
            self._preempt_for_priority()
            decoding = list(self._running)
            joining = self._admit()
        joined = self._prefill_joining(joining) if joining else []
        prefilled = sum(len(s.context_ids()) - s.reused for s, _ in joined)
        now = time.monotonic()
        for seq, _ in joined:
            if seq.generated == 0:
                self._record.first_token(seq.request.request_id, now - seq.submitted_at)
        for seq, token in joined:  # first tokens go out before the batch decodes
            if seq.request.max_tokens > 1 or not decoding:
                self._advance(seq, token)
        produced = joined + (self._decode(decoding) if decoding else [])
        # recorded before any stream hears its last token, so a finished stream's steps are there
        if produced:
            self._record.add_step(started, [s.request.request_id for s, _ in produced],
                                  len(produced), [s.request.request_id for s, _ in joined],
                                  prefilled)
        for seq, token in produced[len(joined):]:
            self._advance(seq, token)
        for seq, token in joined:  # a one-token request finishes with its step recorded
            if seq.request.max_tokens == 1 and decoding:
                self._advance(seq, token)

    def _preempt_for_priority(self) -> None:
        """Under the lock: with the batch full, make room for a waiting request that outranks
        the lowest-priority running one (the most recently admitted among equals)."""
        head = self._waiting.peek()
        if head is None or len(self._running) < self.max_batch:
            return
        victim = min(self._running, key=lambda s: (s.request.priority, -s.submitted_at))
        if victim.request.priority >= head.request.priority:
            return
        self._send_back(victim)
        self._record.preempted()

    def _send_back(self, seq: Sequence) -> None:
        """Under the lock: ``seq`` leaves the batch (the last row takes its slot) for the
        front of its queue, keeping what it has generated."""
        last = self._running.pop()
        moved = last if last is not seq else None
        self._free_slot(seq, moved)
        if moved is not None:
            moved.slot = seq.slot
            self._running[seq.slot] = moved
        seq.slot, seq.cache, seq.length = -1, None, 0
        self._waiting.push(seq.request.request_id, seq, priority=seq.request.priority,
                           tenant=seq.request.tenant, front=True)

    def _admit(self) -> list[Sequence]:
        """Under the lock: take waiting requests into free slots, within the prompt budget."""
        joining: list[Sequence] = []
        budget = self.max_prefill_tokens
        while len(self._running) < self.max_batch and (seq := self._waiting.peek()) is not None:
            cost = len(seq.context_ids())
            if (joining and cost > budget) or not self._room_for(seq):
                break
            self._waiting.pop()
            budget -= cost
            seq.slot = len(self._running)
            self._running.append(seq)
            self._joined(seq)
            joining.append(seq)
        return joining

    # -- finishing ---------------------------------------------------------------------------

    def _advance(self, seq: Sequence, token: int) -> None:
        """Record ``token`` for ``seq``, send its delta, finish it when it is done."""
        seq.generated += 1
        seq.last_token = token
        seq.output_ids.append(token)
        req = seq.request
        text = seq.text.add(token)
        reason = None
        if seq.aborted:
            reason = FinishReason.ABORT
        elif token in self.eos_token_ids or token in req.stop_token_ids or seq.text.stopped:
            reason = FinishReason.STOP
        elif seq.generated >= req.max_tokens:
            reason = FinishReason.LENGTH
        if reason is None:
            seq.stream._push(StreamDelta(req.request_id, (token,), text))
            return
        if not seq.text.stopped:
            text += seq.text.flush()
            if seq.text.stopped and reason is not FinishReason.ABORT:
                reason = FinishReason.STOP  # the last characters completed a stop string
        with self._lock:
            self._leave(seq, reason, (token,), text)

    def _leave(self, seq: Sequence, reason: FinishReason, token_ids: tuple[int, ...] = (),
               text: str = "", error: str | None = None) -> None:
        """Under the lock: free ``seq``'s slot (the last row moves into it) and end its stream."""
        if 0 <= seq.slot < len(self._running) and self._running[seq.slot] is seq:
            last = self._running.pop()
            moved = last if last is not seq else None
            self._free_slot(seq, moved)  # the engine moves the last row's cache into the slot
            if moved is not None:
                moved.slot = seq.slot
                self._running[seq.slot] = moved
        seq.slot, seq.cache = -1, None
        self._live.pop(seq.request.request_id, None)
        seq.stream._finish(reason, seq.generated, error, token_ids, text)
        self._record.finished()

    def _fail(self, seqs: list[Sequence], error: Exception) -> None:
        ids = [s.request.request_id for s in seqs]
        log.error("engine step failed for requests %s: %s", ids, type(error).__name__)
        message = f"{type(error).__name__}: {error}"
        with self._lock:
            for seq in seqs:
                self._leave(seq, FinishReason.ERROR, error=message)

    def _step_failed(self, error: Exception) -> None:
        self._fail(list(self._running), error)

    def _drain(self) -> None:
        with self._lock:
            for seq in self._waiting.drain() + list(self._running):
                self._leave(seq, FinishReason.ABORT)
            self._running.clear()
