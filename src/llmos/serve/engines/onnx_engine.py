"""The ``"onnx"`` engine: llmos ONNX edge bundles (``model.onnx`` + manifest, written by
``llmos.optimize.onnx_export``) served for classification and embeddings on onnxruntime.

The same engine as ``"encoder"`` in everything but the forward: texts are tokenized at
submit (the bundle's tokenizer; a too-long input is refused when truncation is off), each
step takes up to ``max_batch`` texts in admission order (priority, then round-robin across
tenants; :mod:`~llmos.serve.engines.admission`), runs them in one padded forward, and keeps
the same record. The forward and its post-processing (softmax or sigmoid, pooling and
normalisation as the manifest says) are :class:`llmos.models.onnx_runner.Runner`'s, the
code an edge device runs. Loading checks the manifest's hashes: a changed bundle is refused.
A subclass of the encoder engine: it reuses its submit, batching, abort, completion and
record, and supplies only its state without a torch model, ``load`` and ``_forward``.

Knows nothing about HTTP, tenants' tokens, residency or the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmos.errors import InvalidRequest
from llmos.models import onnx_runner
from llmos.serve.engines.admission import AdmissionQueue
from llmos.serve.engines.base import ModelLoadError
from llmos.serve.engines.encoder import TorchEncoderEngine
from llmos.serve.engines.loading import load_tokenizer
from llmos.serve.engines.record import EngineRecord

_FLOAT32 = ("auto", "float32", "fp32")


def find_bundle(model_dir: str | Path) -> Path:
    """The folder, once it is known to hold an ONNX bundle."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    if not (path / onnx_runner.MODEL_FILE).is_file():
        raise ModelLoadError(f"{path.name} holds no model.onnx: the onnx engine serves versions "
                             "exported to ONNX (llmos models compress, method: onnx)")
    return path


class OnnxEngine(TorchEncoderEngine):
    name = "onnx"
    _thread_name = "llmos-engine-onnx"

    def __init__(self, runner: onnx_runner.Runner, tokenizer: Any, *, max_batch: int = 32,
                 max_queue: int = 1024, max_length: int | None = None,
                 record_steps: int = 1024):
        # The encoder engine's state, with the runner where its torch model would be.
        self.model, self.runner, self.tokenizer = runner, runner, tokenizer
        self.task, self.max_batch = runner.task, max_batch
        self.pooling, self.normalize = runner.pooling, runner.normalize
        self.max_length = min(x for x in (runner.max_length, max_length)
                              if isinstance(x, int) and x > 0)
        self.labels = list(runner.labels) if self.task == "classify" else None
        self._multi_label = runner.multi_label
        self.device = torch.device("cpu")  # where the encoder's step puts the padded ids
        self._weights_bytes = (runner.folder / onnx_runner.MODEL_FILE).stat().st_size
        self._waiting: AdmissionQueue = AdmissionQueue(max_queue)
        self._current = None
        self._live: dict[str, Any] = {}
        self._record = EngineRecord(max_steps=record_steps)
        self._start_loop()

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
             task: str = "auto", threads: int | None = None, **options: Any) -> OnnxEngine:
        """``device``: auto or cpu (onnxruntime's CPU provider); ``dtype``: the bundle's own
        (auto). ``threads`` defaults to the cores the job was given (``OMP_NUM_THREADS``)."""
        path = find_bundle(model_dir)
        if str(device) not in ("auto", "cpu"):
            raise ModelLoadError(f"the onnx engine runs on the CPU; device {device!r} asked for")
        if str(dtype) not in _FLOAT32:
            raise ModelLoadError(f"the onnx engine runs the bundle's own precision; dtype "
                                 f"{dtype!r} asked for (use auto)")
        if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = int(os.environ["OMP_NUM_THREADS"])
        try:
            runner = onnx_runner.Runner(path, threads=threads)
        except onnx_runner.BundleError as e:
            raise ModelLoadError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - onnxruntime's refusals of a bad graph
            raise ModelLoadError(f"onnxruntime cannot load {path.name}/model.onnx: "
                                 f"{type(e).__name__}: {e}") from None
        if task not in ("auto", runner.task):
            raise InvalidRequest(f"this bundle's task is {runner.task}, not {task}")
        return cls(runner, load_tokenizer(path), **options)

    def _forward(self, inputs: dict[str, Any]) -> list[Any]:
        """One padded batch (torch tensors from the tokenizer's ``pad``) through the graph."""
        ids = inputs["input_ids"].numpy().astype(np.int64)
        mask = inputs["attention_mask"].numpy().astype(np.int64)
        return self.runner.outputs(ids, mask).tolist()

    def _drain(self) -> None:
        super()._drain()
        self.runner = None  # the onnxruntime session goes with it
