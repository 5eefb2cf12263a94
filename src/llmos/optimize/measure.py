"""The ``optimize.measure`` program: one model version measured on this machine, as a
kernel job.

What it measures, all on the same dataset split:

- ``size_bytes``: the bytes of the version's files on disk; ``parameters``: its weights
  (counted on the loaded model, so an int8 or ONNX version counts what it really holds);
- latency at batch 1 and at batch 32 (``latency_b1_p50_ms``, ``latency_b1_p99_ms``,
  ``latency_b32_...``): end to end, text in and logits out (tokenization included), after
  warm-up calls, with the repetitions each took (``timing``);
- ``throughput_sps``: samples per second at batch 32;
- quality: ``accuracy`` and ``f1_macro`` (and the rest of ``llmos.train``'s classification
  metrics) for sequence classifiers, ``perplexity`` for causal LMs.

Every format a version can have loads (``backends``): plain safetensors, llmos's int8,
ONNX edge bundles and GGUF files. The figures are stored on the version under
``compare:{dataset}:{version}:{split}`` and are the job's result. Rows' texts are never
logged; counts and names are.

The comparison service (``compare``) chains these jobs so that no two run side by side;
this program does not know about the others.
"""

from __future__ import annotations

import platform
from pathlib import Path
from urllib.parse import quote

from llmos.data.fetch import fetch_dataset
from llmos.models.fetch import fetch_model
from llmos.optimize.backends import cores, open_backend
from llmos.optimize.timing import Plan, time_calls
from llmos.train import data as rows_mod
from llmos.train.errors import DataError
from llmos.train.evaluate import classification_metrics
from llmos.train.recipe import TrainRecipe, parse_train_recipe

BATCHES = (1, 32)
STAGES = 5  # fetch, load, quality, batch 1, batch 32
QUALITY_BATCH = 32
# What the comparison table and the version's metrics hold (numbers; format and runtime
# are words).
FIGURES = ("size_bytes", "parameters", "latency_b1_p50_ms", "latency_b1_p99_ms",
           "latency_b32_p50_ms", "latency_b32_p99_ms", "throughput_sps", "accuracy",
           "f1_macro", "perplexity")


def measure(ctx, model: dict, task: str, dataset: dict, split: str, fields: dict | None = None,
            budget_s: float = 10.0, max_rows: int | None = None) -> dict:
    """Measure ``model`` ({name, version}) on ``dataset`` ({name, version})'s ``split``.
    ``fields``: recipe fields that differ from the defaults (text_field, label_field,
    max_length). ``budget_s``: seconds of timing at each batch size (a stable p99 needs
    about 100 calls; slow models take up to 4x the budget to reach them). ``max_rows``:
    measure quality on the first rows only (None: all)."""
    rec = _recipe(task, fields)
    cache = ctx.workdir / "inputs"
    v, folder = fetch_model(ctx, model["name"], model["version"], cache)
    ds, shards = fetch_dataset(ctx, dataset["name"], dataset["version"], cache)
    if split not in shards:
        raise DataError(f"dataset {dataset['name']}:{ds['version']} has no {split} split")
    _stage(ctx, 1, "loading")
    rows = _rows(rec, shards[split], max_rows)
    backend = open_backend(Path(folder), task, rec.max_length)
    name = f"{model['name']}:{v['version']}"
    ctx.log(f"measuring {name} ({backend.format}, {backend.runtime}, {backend.threads} "
            f"threads) on {len(rows)} {split} rows")
    figures: dict = {"format": backend.format, "runtime": backend.runtime, "task": task,
                     "size_bytes": folder_bytes(Path(folder)),
                     "parameters": backend.parameters}
    _stage(ctx, 2, "quality")
    figures.update(_quality(backend, rec, rows))
    texts = [r[rec.text_field] for r in rows]
    for i, batch in enumerate(BATCHES):
        _stage(ctx, 3 + i, f"latency at batch {batch}")
        timed = time_calls(backend.call, _batches(texts, batch), Plan.scaled(budget_s, batch))
        figures[f"latency_b{batch}_p50_ms"] = timed["p50_ms"]
        figures[f"latency_b{batch}_p99_ms"] = timed["p99_ms"]
        figures[f"latency_b{batch}_mean_ms"] = timed["mean_ms"]
        figures[f"latency_b{batch}_reps"] = timed["reps"]
        if batch == BATCHES[-1]:
            figures["throughput_sps"] = batch * timed["reps"] / timed["seconds"]
    _close(backend)
    figures["machine"] = machine()
    ctx.progress(STAGES, STAGES, unit="stages", stage="done")
    for key in FIGURES:
        if isinstance(figures.get(key), (int, float)):
            ctx.metric(key, figures[key])
    key = f"compare:{dataset['name']}:{ds['version']}:{split}"
    ctx.request("POST", f"/v1/registry/models/{quote(model['name'], safe='')}/versions/"
                f"{v['version']}/metrics", json={"key": key, "metrics": figures})
    return {"model": name, "key": key, **figures}


def _recipe(task: str, fields: dict | None) -> TrainRecipe:
    return parse_train_recipe({"task": task, **(fields or {})})


def _stage(ctx, done: int, stage: str) -> None:
    ctx.progress(done, STAGES, unit="stages", stage=stage)


def _rows(rec: TrainRecipe, shards, max_rows: int | None) -> list[dict]:
    if rec.task == "causal_lm" and not rec.text_field:
        raise DataError("measuring a causal LM reads plain text: set text_field")
    columns = ([rec.text_field] if rec.task == "causal_lm"
               else rows_mod.required_columns(rec))
    rows = rows_mod.read_rows(shards, columns, "evaluation")
    if max_rows:
        rows = rows[:max_rows]
    if not rows:
        raise DataError("the split holds no rows to measure on")
    if rec.task != "causal_lm":
        rows_mod.check_rows(rec, rows, "evaluation")
    return rows


def _quality(backend, rec: TrainRecipe, rows: list[dict]) -> dict:
    if rec.task == "causal_lm":
        return _perplexity(backend, rec, rows)
    labels = backend.labels
    truth = rows_mod.label_values(rec, rows)
    unknown = set(truth) - set(labels)
    if unknown:
        raise DataError(f"evaluation rows have labels the model does not know: "
                        f"{rows_mod.quoted(unknown)} (model labels: {', '.join(labels)})")
    texts = [r[rec.text_field] for r in rows]
    predicted: list[str] = []
    for start in range(0, len(texts), QUALITY_BATCH):
        logits = backend.logits(texts[start:start + QUALITY_BATCH])
        predicted += [labels[int(i)] for i in logits.argmax(-1)]
    report = classification_metrics(truth, predicted, labels)
    report.pop("report", None)  # per-label details: the confusion matrix says enough
    report["samples"] = len(rows)
    return report


def _perplexity(backend, rec: TrainRecipe, rows: list[dict]) -> dict:
    """Perplexity of the split's texts, joined, in windows of ``max_length`` tokens: the
    same tokens and windows for every format (``llmos.optimize.perplexity``), so a GGUF
    export compares with its parent."""
    from llmos.optimize import perplexity as ppl

    text = "\n\n".join(str(r[rec.text_field]) for r in rows)
    if backend.format == "gguf":
        value = ppl.perplexity_gguf(backend.path, text, n_ctx=rec.max_length)
    else:  # the model already loaded (float32 or int8), scored as perplexity_hf does
        value = ppl.perplexity_model(backend.model, backend.tokenizer, text, rec.max_length)
    return {"perplexity": float(value), "samples": len(rows)}


def _batches(texts: list[str], size: int) -> list[list[str]]:
    """Batches of ``size`` texts cycling through the split (at most 16 distinct ones)."""
    n = len(texts)
    count = max(1, min(16, n // size))
    return [[texts[(b * size + i) % n] for i in range(size)] for b in range(count)]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def machine() -> dict:
    """Where the figures were measured: they compare versions on one machine only."""
    return {"node": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": cores(), "python": platform.python_version()}


def _close(backend) -> None:
    close = getattr(backend, "close", None)
    if close:
        close()
