"""Export a Hugging Face encoder or sequence classifier to an llmos ONNX edge bundle.

``export_onnx(src, dst)`` traces the model with ``torch.onnx.export`` (dynamic batch and
sequence axes), optionally quantizes it with onnxruntime's ``quantize_dynamic`` (int8
weights), and writes a self-contained folder ``dst``:

- ``model.onnx`` — logits ``[batch, labels]`` (classifiers) or token states
  ``[batch, tokens, dim]`` (encoders; the runner pools them);
- the tokenizer (``tokenizer.json`` and its configuration), the parent's ``config.json``
  (labels, architecture, hence the task) and its sentence-transformers files, if any;
- ``runner.py`` — :mod:`llmos.models.onnx_runner`, copied verbatim (numpy, onnxruntime and
  tokenizers only);
- ``manifest.json`` — ``{format: "llmos-onnx-bundle", task, labels, max_length, pooling,
  opset, quantized, files: {name: {sha256, bytes}}, ...}``.

Before returning it runs the bundle through its own runner on fixed texts and compares with
the parent run by transformers: the float graph must give the parent's outputs within a
tight tolerance, the int8 one within a loose one (both figures are returned). Writes into a
hidden folder beside ``dst`` and renames it at the end: a failed export leaves nothing.

Owns the export and the bundle's layout. Does not own running a bundle (``onnx_runner``),
serving one (``serve.engines.onnx_engine``) nor registering it (``optimize.program``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmos.models import onnx_runner
from llmos.train.errors import ModelError

ProgressFn = Callable[[int, int, str], None]

#: Texts the exported graph is checked on: short and long, accents, CJK, emoji, empty-ish.
CHECK_TEXTS = (
    "A man is eating food.",
    "The stock market fell sharply today after the quarterly report missed expectations.",
    "Hi",
    "Naïve café owners in Zürich serve crème brûlée 🎉",
    "日本語のテキストも扱えます。",
    "I loved this film, though the ending dragged on a bit too long for my taste.",
    " ".join(["long"] * 600),  # past every model's limit: truncation must agree
    "?",
)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json", "1_Pooling/config.json")
FLOAT_ATOL = 1e-3  # float graph vs transformers, in logit / hidden-state units (and relative)
INT8_RTOL = 0.25  # int8 graph: max |difference| within this share of the largest |logit|
INT8_MIN_COSINE = 0.95  # int8 encoder: each embedding's cosine with the parent's
MAX_BYTES = 1_800_000_000  # a single-file ONNX graph stays under protobuf's 2 GB


class OnnxExportError(ModelError):
    """The folder cannot be exported, or the exported graph does not match its parent."""


def export_onnx(src: str | Path, dst: str | Path, opset: int = 17, quantize: bool = True,
                progress: ProgressFn | None = None) -> dict[str, Any]:
    """Write the edge bundle of model folder ``src`` into the new folder ``dst``; returns
    JSON-able stats (sizes, exporter, the self-check's figures)."""
    src, dst = Path(src), Path(dst)
    report = progress or (lambda done, total, stage: None)
    total = 5 if quantize else 4
    report(0, total, "loading the parent")
    task, model, tokenizer = _load_parent(src)
    with _staging(dst) as tmp:
        report(1, total, "exporting to ONNX")
        exporter = _export_graph(model, task, tmp / onnx_runner.MODEL_FILE, opset)
        options = _bundle_options(src, model, tokenizer, task)
        _write_files(src, tmp, tokenizer)
        _write_manifest(tmp, task, options, opset, quantized=False)
        report(2, total, "checking the graph against the parent")
        expected = _parent_outputs(model, tokenizer, task, options)
        float_check = _compare(tmp, task, expected, quantized=False)
        bytes_fp32 = (tmp / onnx_runner.MODEL_FILE).stat().st_size
        check = {"texts": len(CHECK_TEXTS), "float": float_check}
        if quantize:
            report(3, total, "quantizing to int8")
            _quantize(tmp / onnx_runner.MODEL_FILE)
            _write_manifest(tmp, task, options, opset, quantized=True)
            report(4, total, "checking the int8 graph")
            check["int8"] = _compare(tmp, task, expected, quantized=True)
        bundle_bytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        model_bytes = (tmp / onnx_runner.MODEL_FILE).stat().st_size
    report(total, total, "done")
    return {"task": task, "opset": opset, "quantized": quantize, "exporter": exporter,
            "bytes_before": _weights_bytes(src), "bytes_fp32": bytes_fp32,
            "bytes_after": model_bytes, "bundle_bytes": bundle_bytes, "check": check,
            **{k: options[k] for k in ("max_length", "pooling", "normalize") if k in options}}


# -- the parent ---------------------------------------------------------------------------

def task_of(config: Any) -> str:
    """``classify`` for a ``*ForSequenceClassification``, ``embed`` for a bare encoder."""
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classify"
    if archs and all(a.endswith("Model") and "For" not in a for a in archs):
        return "embed"
    raise OnnxExportError(f"architecture {', '.join(archs) or 'unknown'} cannot be exported "
                          "to an ONNX bundle: encoders (*Model) and sequence classifiers "
                          "(*ForSequenceClassification) can")


def _load_parent(src: Path) -> tuple[str, Any, Any]:
    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification,
                              AutoTokenizer)

    if not (src / "config.json").is_file():
        raise OnnxExportError(f"{src} has no config.json: not a Hugging Face model folder")
    raw = json.loads((src / "config.json").read_text())
    if "llmos_quantization" in raw:
        raise OnnxExportError(f"{src.name} holds llmos int8 weights; export its float parent "
                              "instead (the bundle is quantized by onnxruntime: quantize: true)")
    if not any(src.glob("*.safetensors")):
        raise OnnxExportError(f"{src} has no .safetensors weights to export")
    if _weights_bytes(src) > MAX_BYTES:
        raise OnnxExportError(f"{src.name} has {_weights_bytes(src)} bytes of weights; a "
                              "single-file ONNX bundle holds at most 1.8 GB")
    config = AutoConfig.from_pretrained(src)
    task = task_of(config)
    auto = AutoModelForSequenceClassification if task == "classify" else AutoModel
    try:
        model = auto.from_pretrained(src, dtype=torch.float32, use_safetensors=True,
                                     attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (ValueError, OSError, KeyError) as e:
        raise OnnxExportError(f"cannot load {src.name} for export: {e}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise OnnxExportError(f"{src.name}'s tokenizer has no fast (tokenizers) version; "
                              "the bundle's runner needs tokenizer.json")
    return task, model.eval(), tokenizer


def _weights_bytes(src: Path) -> int:
    return sum(p.stat().st_size for p in Path(src).glob("*.safetensors"))


def _bundle_options(src: Path, model: Any, tokenizer: Any, task: str) -> dict[str, Any]:
    """What the runner needs besides the graph: labels, limits, pooling (as the encoder
    engine serves the same folder)."""
    limits = [getattr(model.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    options: dict[str, Any] = {"pad_id": int(tokenizer.pad_token_id or 0)}
    if task == "classify":
        id2label = model.config.id2label or {}
        options["labels"] = [str(id2label.get(i, f"LABEL_{i}")) for i in range(len(id2label))]
        options["multi_label"] = model.config.problem_type == "multi_label_classification"
    else:
        options.update({"pooling": "mean", "normalize": True, **_st_options(src)})
        limits.append(options.pop("max_length", None))
    options["max_length"] = min(x for x in limits if isinstance(x, int) and 0 < x < 1_000_000)
    return options


def _st_options(src: Path) -> dict[str, Any]:
    """Pooling, normalisation and length from a sentence-transformers folder's files."""
    def read(name: str) -> Any:
        path = src / name
        return json.loads(path.read_text()) if path.is_file() else None

    options: dict[str, Any] = {}
    pooling = read("1_Pooling/config.json")
    if isinstance(pooling, dict):
        for mode in onnx_runner.POOLING_MODES:
            key = "pooling_mode_cls_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"
            if pooling.get(key):
                options["pooling"] = mode
                break
    modules = read("modules.json")
    if isinstance(modules, list):
        options["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    st = read("sentence_bert_config.json")
    if isinstance(st, dict) and isinstance(st.get("max_seq_length"), int):
        options["max_length"] = st["max_seq_length"]
    return options


# -- the graph ----------------------------------------------------------------------------

def _wrapper(model: Any, task: str) -> Any:
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return out.logits if task == "classify" else out.last_hidden_state

    return Graph().eval()


def _export_graph(model: Any, task: str, path: Path, opset: int) -> str:
    """torch.onnx.export: TorchScript tracing (``dynamo=False``), else the dynamo exporter.
    Returns which exporter wrote the graph."""
    import torch

    graph = _wrapper(model, task)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 7592, 2088, 2003,
                                                                    2307, 2008, 2001, 102]])
    ids = ids.clamp(max=model.config.vocab_size - 1)
    mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 8])
    output = "logits" if task == "classify" else "last_hidden_state"
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            output: {0: "batch"} if task == "classify" else {0: "batch", 1: "sequence"}}
    common = {"input_names": ["input_ids", "attention_mask"], "output_names": [output],
              "opset_version": opset}
    with warnings.catch_warnings(), torch.no_grad(), _quiet():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, (ids, mask), str(path), dynamic_axes=axes,
                              do_constant_folding=True, dynamo=False, **common)
            return "torchscript"
        except Exception as first:  # noqa: BLE001 - the legacy exporter may be gone or fail
            try:
                batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
                torch.onnx.export(graph, (ids, mask), str(path), dynamic_shapes=shapes,
                                  dynamo=True, external_data=False, **common)
                return "dynamo"
            except Exception as second:  # noqa: BLE001 - report both
                raise OnnxExportError(
                    f"torch.onnx.export failed: torchscript: {type(first).__name__}: {first}; "
                    f"dynamo: {type(second).__name__}: {second}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print diagnostics to stdout and the root logger; a job's log is not
    the place."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _quantize(path: Path) -> None:
    """onnxruntime dynamic quantization, int8 weights (per tensor, signed), in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name("model.int8.onnx")
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    os.replace(out, path)


# -- the bundle ---------------------------------------------------------------------------

def _write_files(src: Path, dst: Path, tokenizer: Any) -> None:
    tokenizer.save_pretrained(dst)
    if not (dst / onnx_runner.TOKENIZER_FILE).is_file():
        raise OnnxExportError(f"{src.name}'s tokenizer did not save a tokenizer.json")
    shutil.copyfile(src / "config.json", dst / "config.json")
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)
    shutil.copyfile(onnx_runner.__file__, dst / onnx_runner.RUNNER_FILE)


def _write_manifest(folder: Path, task: str, options: dict[str, Any], opset: int,
                    quantized: bool) -> dict[str, Any]:
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        # the model's files; the runner is the tool that reads them, written by whichever
        # llmos hands the bundle out (`llmos models pull`), so not pinned here
        if path.is_file() and rel not in (onnx_runner.MANIFEST, onnx_runner.RUNNER_FILE):
            files[rel] = {"sha256": onnx_runner.sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"format": onnx_runner.FORMAT, "version": 1, "task": task,
                "labels": options.get("labels"), "multi_label": options.get("multi_label", False),
                "max_length": options["max_length"], "pooling": options.get("pooling"),
                "normalize": options.get("normalize", False), "pad_id": options["pad_id"],
                "opset": opset, "quantized": quantized,
                "quantization": {"method": "onnxruntime.quantize_dynamic",
                                 "weights": "QInt8"} if quantized else None,
                "files": files}
    (folder / onnx_runner.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# -- the self-check -----------------------------------------------------------------------

def _parent_outputs(model: Any, tokenizer: Any, task: str, options: dict[str, Any]) -> Any:
    """The parent's logits, or its pooled embeddings, on CHECK_TEXTS (transformers)."""
    import torch

    inputs = tokenizer(list(CHECK_TEXTS), padding=True, truncation=True,
                       max_length=options["max_length"], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    if task == "classify":
        return out.logits.float().numpy()
    vectors = onnx_runner.pool(out.last_hidden_state.float().numpy(),
                               inputs["attention_mask"].numpy(), options["pooling"])
    if options["normalize"]:
        import numpy as np
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)
    return vectors


def _compare(folder: Path, task: str, expected: Any, quantized: bool) -> dict[str, Any]:
    """Run the bundle's runner on CHECK_TEXTS; raise OnnxExportError when it strays."""
    import numpy as np

    runner = onnx_runner.Runner(folder)
    texts = list(CHECK_TEXTS)
    got = runner.logits(texts) if task == "classify" else runner.embed(texts)
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    figures: dict[str, Any] = {"max_abs_diff": diff}
    if task == "classify":
        agree = int((got.argmax(-1) == expected.argmax(-1)).sum())
        figures["labels_agree"] = agree
    else:
        cosine = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1)
                                             * np.linalg.norm(expected, axis=-1) + 1e-12)
        figures["min_cosine"] = float(cosine.min())
    if not np.isfinite(got).all():
        raise OnnxExportError("the exported graph gives non-finite outputs on the check texts")
    if not quantized and diff > FLOAT_ATOL * max(1.0, scale):
        raise OnnxExportError(f"the exported graph differs from the parent by {diff:.3g} "
                              f"(largest output {scale:.3g}) on the check texts; tolerance "
                              f"{FLOAT_ATOL} x max(1, largest)")
    if quantized:
        if task == "classify" and diff > INT8_RTOL * max(1.0, scale):
            raise OnnxExportError(f"the int8 graph differs from the parent by {diff:.3g} "
                                  f"(largest logit {scale:.3g}); export with quantize: false")
        if task == "embed" and figures["min_cosine"] < INT8_MIN_COSINE:
            raise OnnxExportError(f"an int8 embedding's cosine with the parent's is "
                                  f"{figures['min_cosine']:.3f} < {INT8_MIN_COSINE}; export "
                                  "with quantize: false")
    return figures


@contextlib.contextmanager
def _staging(dst: Path) -> Iterator[Path]:
    """A hidden folder beside ``dst``, renamed to ``dst`` on success, removed on failure."""
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise OnnxExportError(f"destination {dst} already exists and is not empty")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".exporting", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from a sandboxed job's user
    try:
        yield tmp
        if dst.exists():
            dst.rmdir()
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
