"""The ``"encoder"`` engine: BERT-like models for embeddings and sequence classification,
with dynamic batching of concurrent requests.

Embeddings follow the model folder's sentence-transformers metadata when present
(``1_Pooling/config.json`` for the pooling mode, ``modules.json`` for L2 normalisation,
``sentence_bert_config.json`` for the maximum sequence length); a plain Hugging Face folder
gets mean pooling over the attention mask and L2 normalisation. Classification models
(``*ForSequenceClassification``) return probabilities (softmax, or sigmoid for multi-label
models) named by the config's ``id2label``.

Texts are tokenized at submit (so a too-long input is refused at once when truncation is
off); each step, on the engine's thread, takes up to ``max_batch`` texts from the waiting
requests (priority, then round-robin across tenants), possibly splitting a large request
across steps, and runs them in one padded forward.

Knows nothing about HTTP, tenants' tokens, residency or the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from llmos.errors import InvalidRequest
from llmos.serve.engines.admission import AdmissionQueue
from llmos.serve.engines.base import (
    Classification,
    ContextLengthExceeded,
    EncoderEngine,
    EncodeRequest,
    EncodeResult,
    Occupancy,
    RequestAborted,
    Usage,
)
from llmos.serve.engines.loading import (
    check_model_dir,
    load_pretrained,
    load_tokenizer,
    module_bytes,
    read_json,
    resolve_device,
    resolve_dtype,
)
from llmos.serve.engines.record import EngineRecord, RecordSnapshot
from llmos.serve.engines.runtime import StepLoop
from llmos.serve.engines.stream import EncodeHandle

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass(eq=False)
class _Job:
    request: EncodeRequest
    handle: EncodeHandle
    input_ids: list[list[int]]
    submitted_at: float
    next_index: int = 0  # first input not yet taken into a batch
    outputs: list[Any] = field(default_factory=list)
    aborted: bool = False


def sentence_transformers_options(model_dir: Path) -> dict[str, Any]:
    """Pooling, normalisation and maximum length from a sentence-transformers folder."""
    options: dict[str, Any] = {}
    pooling = read_json(model_dir / "1_Pooling" / "config.json")
    if isinstance(pooling, dict):
        for mode in POOLING_MODES:
            key = "pooling_mode_cls_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"
            if pooling.get(key):
                options["pooling"] = mode
                break
    modules = read_json(model_dir / "modules.json")
    if isinstance(modules, list):
        options["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    st_config = read_json(model_dir / "sentence_bert_config.json")
    if isinstance(st_config, dict) and isinstance(st_config.get("max_seq_length"), int):
        options["max_length"] = st_config["max_seq_length"]
    return options


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``[batch, tokens, dim]`` over the attention mask ``[batch, tokens]``."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    summed = (hidden * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1e-9)
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


class TorchEncoderEngine(StepLoop, EncoderEngine):
    name = "encoder"
    _thread_name = "llmos-engine-encoder"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, task: str = "embed",
                 pooling: str = "mean", normalize: bool = True, max_batch: int = 32,
                 max_queue: int = 1024, max_length: int | None = None, record_steps: int = 1024):
        if task not in ("embed", "classify"):
            raise InvalidRequest(f"unknown encoder task {task!r}; use embed or classify")
        if pooling not in POOLING_MODES:
            raise InvalidRequest(f"unknown pooling {pooling!r}; use one of "
                                 f"{', '.join(POOLING_MODES)}")
        self.model, self.tokenizer, self.task = model.eval(), tokenizer, task
        self.pooling, self.normalize, self.max_batch = pooling, normalize, max_batch
        self.device = next(model.parameters()).device
        limits = [getattr(model.config, "max_position_embeddings", None), max_length,
                  getattr(tokenizer, "model_max_length", None)]
        self.max_length = min(x for x in limits if isinstance(x, int) and x > 0)
        id2label = getattr(model.config, "id2label", None) or {}
        self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(len(id2label))] \
            if task == "classify" else None
        problem = getattr(model.config, "problem_type", None)
        self._multi_label = problem == "multi_label_classification"
        self._weights_bytes = module_bytes(model)
        self._waiting: AdmissionQueue[_Job] = AdmissionQueue(max_queue)
        self._current: _Job | None = None  # a request split across steps
        self._live: dict[str, _Job] = {}
        self._record = EngineRecord(max_steps=record_steps)
        self._start_loop()

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
             task: str = "auto", **options: Any) -> TorchEncoderEngine:
        path = check_model_dir(model_dir)
        dev = resolve_device(device)
        if task == "auto":
            archs = AutoConfig.from_pretrained(path).architectures or []
            classifier = any(a.endswith("ForSequenceClassification") for a in archs)
            task = "classify" if classifier else "embed"
        auto_class = AutoModelForSequenceClassification if task == "classify" else AutoModel
        model = load_pretrained(auto_class, path, dev, resolve_dtype(dtype, dev))
        merged = {**sentence_transformers_options(path), **options} if task == "embed" else options
        return cls(model, load_tokenizer(path), task=task, **merged)

    # ----------------------------------------------------------------- public API

    def submit(self, request: EncodeRequest) -> EncodeHandle:
        encoded = self.tokenizer(list(request.inputs), truncation=request.truncate,
                                 max_length=self.max_length)["input_ids"]
        longest = max(len(ids) for ids in encoded)
        if longest > self.max_length:
            raise ContextLengthExceeded(
                f"request {request.request_id}: an input has {longest} tokens, more than the "
                f"model's {self.max_length}; shorten it or allow truncation")
        handle = EncodeHandle(request.request_id, self.abort)
        job = _Job(request, handle, [list(ids) for ids in encoded], time.monotonic())
        self._enqueue(request, job)
        return handle

    def abort(self, request_id: str) -> bool:
        with self._lock:
            job = self._live.pop(request_id, None)
            if job is None:
                return False
            self._waiting.remove(request_id)
            job.aborted = True
            if self._current is job:
                self._current = None
        job.handle._set_error(RequestAborted(f"request {request_id} was aborted"))
        self._record.finished()
        return True

    def memory_bytes(self) -> int:
        return 0 if self.model is None else self._weights_bytes

    def occupancy(self) -> Occupancy:
        with self._lock:
            return Occupancy(len(self._waiting), int(self._current is not None))

    def record(self) -> RecordSnapshot:
        return self._record.snapshot()

    # ----------------------------------------------------------------- the step

    def _has_work(self) -> bool:
        return self._current is not None or len(self._waiting) > 0

    def _take_batch(self) -> list[tuple[_Job, int]]:
        """Under the lock: up to ``max_batch`` (job, input index) pairs, in admission order."""
        batch: list[tuple[_Job, int]] = []
        while len(batch) < self.max_batch:
            if self._current is None:
                self._current = self._waiting.pop()
                if self._current is None:
                    break
            job = self._current
            take = min(self.max_batch - len(batch), len(job.input_ids) - job.next_index)
            batch += [(job, i) for i in range(job.next_index, job.next_index + take)]
            job.next_index += take
            if job.next_index == len(job.input_ids):
                self._current = None
        return batch

    @torch.inference_mode()
    def _step(self) -> None:
        started = time.time()
        with self._lock:
            batch = self._take_batch()
        if not batch:
            return
        padded = self.tokenizer.pad({"input_ids": [job.input_ids[i] for job, i in batch]},
                                    return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in padded.items()}
        try:
            outputs = self._forward(inputs)
        except Exception as e:  # noqa: BLE001 - these requests fail, the engine goes on
            self._step_failed(e, [job for job, _ in batch])
            return
        jobs: dict[int, _Job] = {}
        for (job, _), out in zip(batch, outputs):
            job.outputs.append(out)
            jobs[id(job)] = job
        # recorded before any caller hears of this step
        self._record.add_step(started, [j.request.request_id for j in jobs.values()], len(batch),
                              prefill_tokens=int(inputs["attention_mask"].sum()))
        for job in jobs.values():
            if len(job.outputs) == len(job.input_ids):
                self._complete(job)

    def _forward(self, inputs: dict[str, torch.Tensor]) -> list[Any]:
        out = self.model(**inputs)
        if self.task == "classify":
            logits = out.logits.float()
            probs = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
            return probs.tolist()
        vectors = pool(out.last_hidden_state, inputs["attention_mask"], self.pooling).float()
        if self.normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        return vectors.tolist()

    def _complete(self, job: _Job) -> None:
        with self._lock:
            if self._live.pop(job.request.request_id, None) is None:
                return  # aborted meanwhile
        usage = Usage(sum(len(ids) for ids in job.input_ids))
        if self.task == "classify":
            assert self.labels is not None
            results = []
            for probs in job.outputs:
                scores = dict(zip(self.labels, probs))
                best = max(range(len(probs)), key=probs.__getitem__)
                results.append(Classification(self.labels[best], probs[best], scores))
            result = EncodeResult(job.request.request_id, usage, classifications=results)
        else:
            result = EncodeResult(job.request.request_id, usage, embeddings=job.outputs)
        self._record.first_token(job.request.request_id, time.monotonic() - job.submitted_at)
        self._record.finished()
        job.handle._set_result(result)

    def _step_failed(self, error: Exception, jobs: list[_Job] | None = None) -> None:
        message = f"{type(error).__name__}: {error}"
        with self._lock:
            failed = {id(j): j for j in (jobs or [])}
            if self._current is not None:
                failed[id(self._current)] = self._current
                self._current = None
            for job in failed.values():
                self._live.pop(job.request.request_id, None)
        for job in failed.values():
            job.handle._set_error(RuntimeError(f"the encoder failed on request "
                                               f"{job.request.request_id}: {message}"))
            self._record.finished()

    def _drain(self) -> None:
        with self._lock:
            jobs = self._waiting.drain()
            if self._current is not None:
                jobs.append(self._current)
                self._current = None
            self._live.clear()
        for job in jobs:
            job.handle._set_error(RequestAborted(f"request {job.request.request_id}: "
                                                 "the engine closed"))
        self.model = None
