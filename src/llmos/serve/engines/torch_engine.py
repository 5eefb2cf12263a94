"""The ``"torch"`` engine: PyTorch causal LMs from transformers with continuous
(iteration-level) batching and KV-cache reuse.

The step, admission, stops and streams are :mod:`batching`'s; this engine runs the model:
joining requests are prefilled in right-padded groups of similar length
(``prefill_batch_tokens`` padded tokens per forward; on this CPU one forward of 12 prompts
costs about half of 12 forwards of one) with a ``DynamicCache``, copied into their slots of
the :class:`SlotKVCache`; the requests already running decode together in one batched
forward, each row at its own position.

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
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from llmos.serve.engines.base import ModelLoadError
from llmos.serve.engines.batching import BatchingEngine, Sequence, StepInterrupted
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
from llmos.serve.engines.sampling import next_tokens

log = logging.getLogger(__name__)


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


def _decoder_layers(model: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """The model's stack of decoder layers: its first module list of ``count`` modules."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    return []


class TorchEngine(BatchingEngine):
    name = "torch"
    _thread_name = "llmos-engine-torch"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_batch: int = 32,
                 max_queue: int = 1024, max_prefill_tokens: int = 4096,
                 prefill_batch_tokens: int = 1024, max_context: int | None = None,
                 record_steps: int = 1024):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config.get_text_config()
        limit = _max_positions(config)
        if limit is None and max_context is None:
            raise ModelLoadError("the model config names no maximum position; pass max_context")
        context = min(x for x in (limit, max_context) if x is not None)
        self.prefill_batch_tokens = prefill_batch_tokens  # padded prompt tokens per forward
        vocab_size = int(model.get_output_embeddings().weight.shape[0]) \
            if model.get_output_embeddings() is not None else int(config.vocab_size)
        self._weights_bytes = module_bytes(model)
        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache = SlotKVCache(config.num_hidden_layers, max_batch, context,
                                  self.device, self.dtype)
        # one slot cache for the batch, or (sliding windows, linear attention...) one cache each
        self._batched = is_plain_dynamic(DynamicCache(config=model.config))
        if self._batched and getattr(model.config, "_attn_implementation", "sdpa") not in (
                "sdpa", "eager"):
            model.set_attn_implementation("sdpa")  # batched decode passes a 4D additive mask
        # a forward can stop before any decoder layer: a prefill's cache is thrown away, and a
        # batched decode's half-written slot positions are written again by the next one
        layers = _decoder_layers(model, config.num_hidden_layers) if self._batched else []
        self._hooks = [layer.register_forward_pre_hook(self._before_layer) for layer in layers]
        self._can_interrupt = bool(layers)
        self._init_batching(tokenizer, max_batch=max_batch, max_queue=max_queue,
                            max_prefill_tokens=max_prefill_tokens, max_context=context,
                            vocab_size=vocab_size, eos_token_ids=_eos_ids(model, tokenizer),
                            record_steps=record_steps, sampler_device=self.device)

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
             **options: Any) -> TorchEngine:
        path = check_model_dir(model_dir)
        dev = resolve_device(device)
        model = load_pretrained(AutoModelForCausalLM, path, dev, resolve_dtype(dtype, dev))
        return cls(model, load_tokenizer(path), **options)

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        extra = tensor_bytes(t for s in list(self._running) if s.cache is not None
                             for layer in s.cache.layers for t in (layer.keys, layer.values))
        return self._weights_bytes + self._cache.nbytes() + extra

    @torch.inference_mode()
    def _prefill_joining(self, joining: list[Sequence]) -> list[tuple[Sequence, int]]:
        return [pair for group in self._prefill_groups(joining) for pair in self._prefill(group)]

    def _prefill_groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Joiners by descending prompt length, in groups of at most ``prefill_batch_tokens``
        padded tokens (one group per forward). One prompt per forward for per-request caches."""
        if not self._batched or self.prefill_batch_tokens <= 1:
            return [[s] for s in seqs]
        groups: list[list[Sequence]] = []
        for seq in sorted(seqs, key=lambda s: -len(s.context_ids())):
            if groups and (len(groups[-1]) + 1) * len(groups[-1][0].context_ids()) \
                    <= self.prefill_batch_tokens:
                groups[-1].append(seq)
            else:
                groups.append([seq])
        return groups

    def _prefill(self, group: list[Sequence]) -> list[tuple[Sequence, int]]:
        """Run a group of prompts (right-padded) through the model into their slots; return
        each one's first token."""
        lengths = [len(s.context_ids()) for s in group]
        try:
            ids = torch.zeros((len(group), max(lengths)), dtype=torch.long)
            for i, seq in enumerate(group):
                ids[i, :lengths[i]] = torch.tensor(seq.context_ids())
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
        except StepInterrupted:  # they wait again, at the front of their queues
            self._record.interrupted()
            with self._lock:
                for seq in sorted(group, key=lambda s: -s.slot):
                    self._send_back(seq)
            return []
        except Exception as e:  # noqa: BLE001 - these requests fail, the others go on
            self._fail(group, e)
            return []
        for seq, length in zip(group, lengths):
            seq.length = length
        return list(zip(group, tokens))

    @torch.inference_mode()
    def _decode(self, rows: list[Sequence]) -> list[tuple[Sequence, int]]:
        try:
            if self._batched:
                logits = self._decode_batched(rows)
            else:
                logits = torch.cat([self._decode_one(s) for s in rows])
            tokens = next_tokens(logits, [s.sampler for s in rows])
        except StepInterrupted:  # no token this step; the rows run again in the next
            self._record.interrupted()
            return []
        except Exception as e:  # noqa: BLE001
            self._fail(rows, e)
            return []
        for s in rows:
            s.length += 1
        return list(zip(rows, tokens))

    def _decode_batched(self, rows: list[Sequence]) -> torch.Tensor:
        assert [s.slot for s in rows] == list(range(len(rows))), "rows must fill slots 0..n-1"
        mask = self._cache.begin_decode([s.length for s in rows])
        ids = torch.tensor([[s.last_token] for s in rows], device=self.device)
        out = self.model(input_ids=ids, position_ids=self._cache.write_pos[:, None],
                         attention_mask=mask, past_key_values=self._cache, use_cache=True)
        return out.logits[:, -1]

    def _decode_one(self, seq: Sequence) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([[seq.last_token]], device=self.device),
                         position_ids=torch.tensor([[seq.length]], device=self.device),
                         past_key_values=seq.cache, use_cache=True)
        return out.logits[:, -1]

    def _before_layer(self, module: torch.nn.Module, args: Any) -> None:
        if threading.current_thread() is self._thread:  # not someone else's use of the model
            self._check_interrupt()

    def _free_slot(self, seq: Sequence, moved: Sequence | None) -> None:
        if moved is not None and self._batched:
            self._cache.move(moved.slot, seq.slot, moved.length)
        elif not self._running:
            self._cache.release()

    def _drain(self) -> None:
        super()._drain()
        with self._lock:
            self._cache.release()
        for hook in self._hooks:
            hook.remove()
        self.model = None
