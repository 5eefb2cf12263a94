"""Loading one model version, whatever its format, behind one small surface for measuring:
``call(texts)`` runs the model end to end (text in, logits out: tokenization included, as
a user's request pays it), ``parameters`` counts its weights, ``labels`` names a
classifier's outputs.

Formats, told apart by the files of the folder:

- ``gguf``: one ``.gguf`` file, run by llama.cpp's own API (``llama_cpp``) with the
  ``llamacpp`` engine's settings; causal LMs only;
- ``onnx`` / ``onnx-int8``: an edge bundle (``model.onnx`` + manifest) run by
  :class:`llmos.models.onnx_runner.Runner` (texts cut at the manifest's ``max_length``,
  as the bundle runs anywhere); its parameters are its graph's weight initializers;
- ``int8``: llmos's int8 safetensors (``llmos.models.quantized``), torch dynamic int8;
- ``safetensors``: a plain Hugging Face folder, run by transformers in float32 on the CPU.

Every heavy library is imported when a backend of its format is opened, so measuring a
plain classifier never needs onnxruntime or llama.cpp. This module measures nothing
itself (``timing``) and computes no metric (``measure``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmos.train.errors import ModelError

MAX_BATCH = 32  # the largest batch measured
_AUTO = {"sequence_classification": "AutoModelForSequenceClassification",
         "causal_lm": "AutoModelForCausalLM"}


def cores() -> int:
    """The CPU cores this process may run on (the job's pinned cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def detect_format(folder: Path) -> str:
    names = {p.name for p in folder.iterdir()}
    if any(n.endswith(".gguf") for n in names):
        return "gguf"
    if "model.onnx" in names:
        manifest = _json(folder / "manifest.json") if "manifest.json" in names else {}
        return "onnx-int8" if manifest.get("quantized") else "onnx"
    if _is_int8(folder):
        return "int8"
    return "safetensors"


def _is_int8(folder: Path) -> bool:
    try:
        from llmos.models.quantized import is_int8
    except ImportError:  # the int8 format's module is not installed: read the marker
        config = _json(folder / "config.json") if (folder / "config.json").exists() else {}
        return "llmos_quantization" in config
    return bool(is_int8(folder))


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path.name} in {path.parent.name!r} cannot be read: {e}") from None


def open_backend(folder: Path, task: str, max_length: int, threads: int | None = None):
    """The backend for the model in ``folder`` (see the module's docstring)."""
    fmt = detect_format(folder)
    threads = threads or cores()
    if fmt == "gguf":
        if task != "causal_lm":
            raise ModelError(f"{folder.name!r} holds a GGUF file, which llmos runs for causal "
                             f"LMs only, not {task}")
        return GgufBackend(folder, max_length, threads)
    if fmt.startswith("onnx"):
        if task != "sequence_classification":
            raise ModelError(f"{folder.name!r} is an ONNX bundle; measuring one is for "
                             f"sequence classifiers, not {task}")
        return OnnxBackend(folder, fmt, threads)
    return TorchBackend(folder, fmt, task, max_length, threads)


class TorchBackend:
    """A transformers model (float32, or torch dynamic int8) on the CPU."""

    def __init__(self, folder: Path, fmt: str, task: str, max_length: int, threads: int):
        import torch

        from llmos.train.tasks import load_model, load_tokenizer

        torch.set_num_threads(threads)
        self.format, self.task, self.max_length, self.threads = fmt, task, max_length, threads
        self.folder = folder
        self.tokenizer = load_tokenizer(folder)
        if fmt == "int8":
            import transformers

            from llmos.models.quantized import load_int8

            self.model = load_int8(getattr(transformers, _AUTO[task]), folder)
            if getattr(self.model.config, "pad_token_id", None) is None:
                self.model.config.pad_token_id = self.tokenizer.pad_token_id
        else:
            self.model = load_model(task, folder, None, self.tokenizer)
        self.model.eval()
        config = self.model.config
        self.labels = ([config.id2label[i] for i in sorted(config.id2label, key=int)]
                       if task == "sequence_classification" else None)
        self.parameters = torch_parameters(self.model)
        self.runtime = "torch"

    def call(self, texts: list[str]):
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        with torch.inference_mode():
            return self.model(**enc).logits

    def logits(self, texts: list[str]):
        return self.call(texts).float().numpy()


def torch_parameters(model) -> int:
    """Weights of a torch model: its parameters, plus the packed weights (and biases) of
    dynamic int8 Linear layers, which are not parameters."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and hasattr(module, "_packed_params"):
            total += weight().numel()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += bias.numel() if bias is not None else 0
    return int(total)


class OnnxBackend:
    """An edge bundle through its own runner (onnxruntime + tokenizers), which verifies
    the bundle's hashes as it opens it."""

    def __init__(self, folder: Path, fmt: str, threads: int):
        from llmos.models.onnx_runner import Runner

        self.format, self.task, self.threads = fmt, "sequence_classification", threads
        self.folder = folder
        self.runner = Runner(folder, threads=threads)
        self.labels = list(self.runner.labels)
        self.parameters = onnx_parameters(folder / "model.onnx")
        self.runtime = "onnxruntime"

    def call(self, texts: list[str]):
        return self.runner.logits(texts)

    def logits(self, texts: list[str]):
        return self.call(texts)


def onnx_parameters(path: Path) -> int:
    """Elements of the graph's weight initializers (scales and zero points of a quantized
    graph, single numbers, are not counted)."""
    import math

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(math.prod(t.dims) for t in graph.initializer
                   if t.dims and math.prod(t.dims) > 1))


class GgufBackend:
    """A GGUF file through llama.cpp's own API (the same library and settings as the
    ``llamacpp`` engine: no repacked weight buffers). A batch of texts is one
    ``llama_decode`` holding each text as its own sequence, as the engine batches; texts
    are tokenized with the tokenizer files beside the GGUF file, as the engine does."""

    def __init__(self, folder: Path, max_length: int, threads: int):
        import logging

        import llama_cpp as lc

        ggufs = sorted(p for p in folder.iterdir() if p.name.endswith(".gguf"))
        if len(ggufs) != 1:
            raise ModelError(f"{folder.name!r} holds {len(ggufs)} GGUF files; one is expected")
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self._lc, self.path, self.folder = lc, ggufs[0], folder
        self.format, self.task, self.labels, self.runtime = "gguf", "causal_lm", None, \
            "llama.cpp"
        self.max_length, self.threads = max_length, threads
        from llmos.train.tasks import load_tokenizer

        self.tokenizer = load_tokenizer(folder)
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.use_extra_bufts = False  # AMX/repacked layouts crash where AMX is not granted
        self._model = lc.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelError(f"llama.cpp cannot load {self.path.name}")
        self._ctx = self._batch = None
        self.parameters = int(lc.llama_model_n_params(self._model))
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = MAX_BATCH * max_length
        cparams.n_ubatch = min(512, cparams.n_batch)
        cparams.n_seq_max = MAX_BATCH
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise ModelError("llama.cpp could not make a context (out of memory?)")
        self._memory = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(cparams.n_batch, 0, 1)

    def call(self, texts: list[str]) -> None:
        """One forward pass over the texts, each its own sequence from an empty cache,
        logits for each text's last token."""
        if len(texts) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} texts at once")
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=self.max_length)["input_ids"]
        lc, batch = self._lc, self._batch
        lc.llama_memory_clear(self._memory, True)
        n = 0
        for seq, row in enumerate(ids):
            row = row or [self.tokenizer.pad_token_id or 0]
            for pos, tok in enumerate(row):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = tok, pos, 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = pos == len(row) - 1
                n += 1
        batch.n_tokens = n
        if lc.llama_decode(self._ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def close(self) -> None:
        lc = self._lc
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None
