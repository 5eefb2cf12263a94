"""The ``"torch"`` engine: PyTorch causal LMs from transformers with continuous
(iteration-level) batching and KV-cache reuse.

Every step, on the engine's own thread:

1. aborted running requests leave the batch (their slots free);
2. waiting requests are admitted while slots are free (``max_batch``) and the step's prompt
   budget (``max_prefill_tokens``) lasts, highest priority first, then round-robin across
   tenants, FIFO within one (:mod:`admission`); they are prefilled in right-padded groups of
   similar length (``prefill_batch_tokens`` padded tokens per forward; on this CPU one forward
   of 12 prompts costs about half of 12 forwards of one) with a ``DynamicCache``, copied into
   their slots of the :class:`SlotKVCache`, and yield their first tokens;
3. the requests that were running before the step decode together in one batched forward,
   each row at its own position;
4. each new token is sampled, detokenized, checked against stops and sent to its stream;
   finished requests leave the batch.

Greedy outputs equal ``generate`` one request at a time in the tests; they can differ only
where two logits tie to within rounding, since a row's logits change in the last bits with
the batch around it (matrix kernels sum in a batch-size-dependent order). Models whose
cache is not plain full attention (sliding windows, linear attention) keep one
``DynamicCache`` per request, prefill one prompt per forward and decode row by row:
correct, slower.

Knows nothing about HTTP, tenants' tokens, residency or the store.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from llmos.errors import InvalidRequest
from llmos.serve.engines.admission import AdmissionQueue
from llmos.serve.engines.base import (
    ContextLengthExceeded,
    DuplicateRequest,
    FinishReason,
    GenerationRequest,
    GenerativeEngine,
    ModelLoadError,
    Occupancy,
    StreamDelta,
)
from llmos.serve.engines.kv_cache import SlotKVCache, is_plain_dynamic
from llmos.serve.engines.loading import (
    check_model_dir,
    load_pretrained,
    load_tokenizer,
    module_bytes,
    resolve_device,
    resolve_dtype,
    tensor_bytes,
)
from llmos.serve.engines.record import EngineRecord, RecordSnapshot
from llmos.serve.engines.runtime import StepLoop
from llmos.serve.engines.sampling import Sampler, next_tokens
from llmos.serve.engines.stream import RequestStream
from llmos.serve.engines.text import IncrementalText

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Sequence:
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
    cache: DynamicCache | None = field(default=None, repr=False)  # per-request fallback only


def _max_positions(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None),
                  getattr(model.config, "eos_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


class TorchEngine(StepLoop, GenerativeEngine):
    name = "torch"
    _thread_name = "llmos-engine-torch"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_batch: int = 32,
                 max_queue: int = 1024, max_prefill_tokens: int = 4096,
                 prefill_batch_tokens: int = 1024, max_context: int | None = None,
                 record_steps: int = 1024):
        if max_batch < 1:
            raise InvalidRequest("max_batch must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config.get_text_config()
        limit = _max_positions(config)
        if limit is None and max_context is None:
            raise ModelLoadError("the model config names no maximum position; pass max_context")
        self.max_context = min(x for x in (limit, max_context) if x is not None)
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens  # prompt tokens admitted per step
        self.prefill_batch_tokens = prefill_batch_tokens  # padded prompt tokens per forward
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0]) \
            if model.get_output_embeddings() is not None else int(config.vocab_size)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self._weights_bytes = module_bytes(model)
        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache = SlotKVCache(config.num_hidden_layers, max_batch, self.max_context,
                                  self.device, self.dtype)
        # one slot cache for the batch, or (sliding windows, linear attention...) one cache each
        self._batched = is_plain_dynamic(DynamicCache(config=model.config))
        if self._batched and getattr(model.config, "_attn_implementation", "sdpa") not in (
                "sdpa", "eager"):
            model.set_attn_implementation("sdpa")  # batched decode passes a 4D additive mask
        self._waiting: AdmissionQueue[_Sequence] = AdmissionQueue(max_queue)
        self._running: list[_Sequence] = []  # slot i holds _running[i]
        self._live: dict[str, _Sequence] = {}
        self._record = EngineRecord(max_steps=record_steps)
        self._start_loop()

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
             **options: Any) -> TorchEngine:
        path = check_model_dir(model_dir)
        dev = resolve_device(device)
        model = load_pretrained(AutoModelForCausalLM, path, dev, resolve_dtype(dtype, dev))
        return cls(model, load_tokenizer(path), **options)

    # ----------------------------------------------------------------- public API

    def submit(self, request: GenerationRequest) -> RequestStream:
        self._validate(request)
        stream = RequestStream(request.request_id, len(request.prompt_token_ids), self.abort)
        seq = _Sequence(request, stream, Sampler(request.temperature, request.top_p, request.seed,
                                                 self.device),
                        IncrementalText(self.tokenizer, request.stop, request.prompt_token_ids),
                        time.monotonic())
        with self._lock:
            self._check_open()
            if request.request_id in self._live:
                raise DuplicateRequest(f"request {request.request_id} is already in the engine")
            self._waiting.push(request.request_id, seq, priority=request.priority,
                               tenant=request.tenant)
            self._live[request.request_id] = seq
            self._lock.notify_all()
        return stream

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

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        extra = tensor_bytes(t for s in list(self._running) if s.cache is not None
                             for layer in s.cache.layers for t in (layer.keys, layer.values))
        return self._weights_bytes + self._cache.nbytes() + extra

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

    # ----------------------------------------------------------------- the step

    def _has_work(self) -> bool:
        return bool(self._running) or len(self._waiting) > 0

    @torch.inference_mode()
    def _step(self) -> None:
        started = time.time()
        with self._lock:
            for seq in [s for s in self._running if s.aborted]:
                self._leave(seq, FinishReason.ABORT)
            decoding = list(self._running)
            joining = self._admit()
        joined = [pair for group in self._prefill_groups(joining) for pair in self._prefill(group)]
        produced = joined + (self._decode(decoding) if decoding else [])
        # recorded before any stream hears of this step, so a finished stream's steps are there
        self._record.add_step(started, [s.request.request_id for s, _ in produced], len(produced),
                              [s.request.request_id for s, _ in joined],
                              sum(len(s.request.prompt_token_ids) for s, _ in joined))
        for seq, token in produced:
            self._advance(seq, token)

    def _admit(self) -> list[_Sequence]:
        """Under the lock: take waiting requests into free slots, within the prompt budget."""
        joining: list[_Sequence] = []
        budget = self.max_prefill_tokens
        while len(self._running) < self.max_batch and (seq := self._waiting.peek()) is not None:
            cost = len(seq.request.prompt_token_ids)
            if joining and cost > budget:
                break
            self._waiting.pop()
            budget -= cost
            seq.slot = len(self._running)
            self._running.append(seq)
            joining.append(seq)
        return joining

    def _prefill_groups(self, seqs: list[_Sequence]) -> list[list[_Sequence]]:
        """Joiners by descending prompt length, in groups of at most ``prefill_batch_tokens``
        padded tokens (one group per forward). One prompt per forward for per-request caches."""
        if not self._batched or self.prefill_batch_tokens <= 1:
            return [[s] for s in seqs]
        groups: list[list[_Sequence]] = []
        for seq in sorted(seqs, key=lambda s: -len(s.request.prompt_token_ids)):
            if groups and (len(groups[-1]) + 1) * len(groups[-1][0].request.prompt_token_ids) \
                    <= self.prefill_batch_tokens:
                groups[-1].append(seq)
            else:
                groups.append([seq])
        return groups

    def _prefill(self, group: list[_Sequence]) -> list[tuple[_Sequence, int]]:
        """Run a group of prompts (right-padded) through the model into their slots; return
        each one's first token."""
        lengths = [len(s.request.prompt_token_ids) for s in group]
        try:
            ids = torch.zeros((len(group), max(lengths)), dtype=torch.long)
            for i, seq in enumerate(group):
                ids[i, :lengths[i]] = torch.tensor(seq.request.prompt_token_ids)
            kwargs: dict[str, Any] = {}
            rows = torch.arange(len(group))
            columns = torch.tensor([n - 1 for n in lengths])
            if len(group) > 1:
                padding = torch.arange(ids.shape[1])[None, :] > columns[:, None]
                kwargs["attention_mask"] = (~padding).long().to(self.device)
            if self._keep_logits:  # the lm head only where a first token comes from
                keep = sorted(set(columns.tolist()))
                kwargs["logits_to_keep"] = torch.tensor(keep, device=self.device) \
                    if len(group) > 1 else 1
                columns = torch.tensor([keep.index(c) for c in columns.tolist()]) \
                    if len(group) > 1 else torch.zeros(1, dtype=torch.long)
            cache = DynamicCache(config=self.model.config)
            out = self.model(input_ids=ids.to(self.device), past_key_values=cache, use_cache=True,
                             **kwargs)
            tokens = next_tokens(out.logits[rows.to(self.device), columns.to(self.device)],
                                 [s.sampler for s in group])
            for i, seq in enumerate(group):
                if self._batched:
                    self._cache.store_prefill(seq.slot, cache, lengths[i], row=i)
                else:
                    seq.cache = cache
        except Exception as e:  # noqa: BLE001 - these requests fail, the others go on
            self._fail(group, e)
            return []
        now = time.monotonic()
        for seq, length in zip(group, lengths):
            seq.length = length
            self._record.first_token(seq.request.request_id, now - seq.submitted_at)
        return list(zip(group, tokens))

    def _decode(self, rows: list[_Sequence]) -> list[tuple[_Sequence, int]]:
        try:
            if self._batched:
                logits = self._decode_batched(rows)
            else:
                logits = torch.cat([self._decode_one(s) for s in rows])
            tokens = next_tokens(logits, [s.sampler for s in rows])
        except Exception as e:  # noqa: BLE001
            self._fail(rows, e)
            return []
        for s in rows:
            s.length += 1
        return list(zip(rows, tokens))

    def _decode_batched(self, rows: list[_Sequence]) -> torch.Tensor:
        assert [s.slot for s in rows] == list(range(len(rows))), "rows must fill slots 0..n-1"
        mask = self._cache.begin_decode([s.length for s in rows])
        ids = torch.tensor([[s.last_token] for s in rows], device=self.device)
        out = self.model(input_ids=ids, position_ids=self._cache.write_pos[:, None],
                         attention_mask=mask, past_key_values=self._cache, use_cache=True)
        return out.logits[:, -1]

    def _decode_one(self, seq: _Sequence) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([[seq.last_token]], device=self.device),
                         position_ids=torch.tensor([[seq.length]], device=self.device),
                         past_key_values=seq.cache, use_cache=True)
        return out.logits[:, -1]

    # ----------------------------------------------------------------- finishing

    def _advance(self, seq: _Sequence, token: int) -> None:
        """Record ``token`` for ``seq``, send its delta, finish it when it is done."""
        seq.generated += 1
        seq.last_token = token
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

    def _leave(self, seq: _Sequence, reason: FinishReason, token_ids: tuple[int, ...] = (),
               text: str = "", error: str | None = None) -> None:
        """Under the lock: free ``seq``'s slot (the last row moves into it) and end its stream."""
        if seq.slot >= 0 and seq.slot < len(self._running) and self._running[seq.slot] is seq:
            last = self._running.pop()
            if last is not seq:
                if self._batched:
                    self._cache.move(last.slot, seq.slot, last.length)
                last.slot = seq.slot
                self._running[seq.slot] = last
            if not self._running:
                self._cache.release()
        seq.slot, seq.cache = -1, None
        self._live.pop(seq.request.request_id, None)
        seq.stream._finish(reason, seq.generated, error, token_ids, text)
        self._record.finished()

    def _fail(self, seqs: list[_Sequence], error: Exception) -> None:
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
            self._cache.release()
        self.model = None
