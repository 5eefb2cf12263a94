"""The ``optimize.compress`` program: a kernel job that turns a registered model version
into a smaller or faster one and registers it as a new version.

It fetches the parent version (and, for a method that trains, the dataset version's
shards), runs the recipe's method from the library (``quantize``, ``prune``, ``distill``,
``onnx_export``, ``gguf_export``), evaluates a trained result on the test split, stores the
files as artifacts (their parents: the parent version's weights) and registers the version
last, with lineage naming the parent, the method and its settings. A job that fails
registers nothing. Methods that train resume from their checkpoint after a yield, like
fine-tuning.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llmos.data.fetch import fetch_dataset
from llmos.models.fetch import fetch_model
from llmos.models.loaders import inspect_model
from llmos.models.program import register
from llmos.optimize.recipe import CompressRecipe, parse_compress_recipe
from llmos.train.run import run_evaluation, run_training


def compress(ctx, recipe: dict, parent: dict, output: str, dataset: dict | None = None,
             splits: dict | None = None) -> dict:
    rec = parse_compress_recipe(recipe)
    cache = ctx.workdir / "inputs"
    parent_v, parent_dir = fetch_model(ctx, parent["model"], parent["version"], cache)
    rows, ds = {}, None
    if dataset is not None:
        ds, shards = fetch_dataset(ctx, dataset["name"], dataset["version"], cache)
        rows = {role: shards[split] for role, split in (splits or {}).items() if split}
    work = ctx.workdir / "work"
    out = ctx.workdir / "output"
    for folder in (work, out):  # never a half-made folder from an earlier attempt
        shutil.rmtree(folder, ignore_errors=True)
    work.mkdir(parents=True)

    def progress(done, total, stage=None):
        ctx.progress(done, total, unit="stages", **({"stage": stage} if stage else {}))

    ctx.log(f"{rec.method}: {parent['model']}:{parent_v['version']} -> {output}")
    outcome = _METHODS[rec.method](ctx, rec, parent_v, parent_dir, rows, work, out, progress)
    if outcome.get("yielded_at_step") is not None:
        return outcome
    metrics = {"compression": outcome}
    if rows.get("test") and rec.needs_dataset:
        ctx.log("evaluating on the test split")
        metrics["test"] = run_evaluation(out, parent_v["task"], rows["test"],
                                         _training(rec, parent_v), ctx=ctx)
        for key, value in metrics["test"].items():
            if isinstance(value, (int, float)):
                ctx.metric(f"test_{key}", value)
    info = inspect_model(out)
    lineage = {"parent": {"model": parent["model"], "version": parent_v["version"]},
               "method": rec.method, "settings": rec.to_dict()[rec.method], "job": ctx.job_id}
    if ds is not None:
        lineage["dataset"] = {"name": dataset["name"], "version": ds["version"],
                              "content_hash": ds["content_hash"]}
    parents = [f["artifact_id"] for f in parent_v["files"]
               if f["path"].endswith((".safetensors", ".gguf", ".onnx"))]
    version = register(ctx, output, out, info, lineage, metrics, parents=parents)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"model": output, "version": version["version"], "method": rec.method,
            "parent": f"{parent['model']}:{parent_v['version']}",
            "size_bytes": info.size_bytes, "parent_size_bytes": parent_v["size_bytes"],
            "parameters": info.parameters, "parent_parameters": parent_v["parameters"]}


# -- the methods: (ctx, recipe, parent version, parent folder, rows, work, out, progress) --

def _quantize(ctx, rec: CompressRecipe, parent_v, parent_dir: Path, rows, work, out, progress):
    from llmos.optimize.quantize import quantize_folder

    return quantize_folder(parent_dir, out, progress=progress)


def _prune(ctx, rec: CompressRecipe, parent_v, parent_dir: Path, rows, work, out, progress):
    from llmos.optimize.prune import calibration_texts, prune_folder

    spec = rec.prune
    if spec.recover is None:
        return prune_folder(parent_dir, out, spec.structure, spec.sparsity, progress=progress)
    pruned = work / "pruned"
    # With training rows, channels are ranked by their activations on them (keeps more
    # accuracy than weight norms alone).
    texts = (calibration_texts(rows["train"], _training(rec, parent_v).text_field)
             if spec.structure == "ffn" else None)
    stats = prune_folder(parent_dir, pruned, spec.structure, spec.sparsity, progress=progress,
                         calibration_texts=texts)
    trained = out if spec.structure != "unstructured" else work / "recovered"
    result = _train(ctx, rec, parent_v, pruned, rows, trained)
    if result.yielded:
        return {"yielded_at_step": result.steps, "of": result.total_steps}
    if spec.structure == "unstructured":
        # Training fills the zeros in again: prune the recovered weights to the same sparsity.
        prune_folder(trained, out, spec.structure, spec.sparsity)
    return {**stats, "recovery": {"steps": result.steps, **result.metrics}}


def _distill(ctx, rec: CompressRecipe, parent_v, parent_dir: Path, rows, work, out, progress):
    from llmos.optimize.distill import distill, make_student

    spec = rec.distill
    student = work / "student"
    stats = make_student(parent_dir, student, spec.student_layers)
    result = distill(ctx, parent_dir, student, _training(rec, parent_v), spec,
                     rows["train"], rows.get("validation"), out)
    if result.get("yielded_at_step") is not None:
        return result
    return {**stats, **result}


def _onnx(ctx, rec: CompressRecipe, parent_v, parent_dir: Path, rows, work, out, progress):
    from llmos.optimize.onnx_export import export_onnx

    return export_onnx(parent_dir, out, opset=rec.onnx.opset, quantize=rec.onnx.quantize,
                       progress=progress)


def _gguf(ctx, rec: CompressRecipe, parent_v, parent_dir: Path, rows, work, out, progress):
    from llmos.optimize.gguf_export import export_gguf

    return export_gguf(parent_dir, out, quantization=rec.gguf.quantization, progress=progress)


def _training(rec: CompressRecipe, parent_v: dict):
    """The recipe's training, on the parent's labels in the parent's order (so the head it
    keeps means what it meant)."""
    train = rec.training(parent_v["task"])
    labels = parent_v.get("info", {}).get("labels")
    if labels and train.labels is None:
        train = train.model_copy(update={"labels": list(labels)})
    return train


def _train(ctx, rec: CompressRecipe, parent_v, model_dir: Path, rows, out: Path):
    return run_training(ctx, _training(rec, parent_v), model_dir, rows["train"],
                        rows.get("validation"), out)


_METHODS = {"quantize": _quantize, "prune": _prune, "distill": _distill, "onnx": _onnx,
            "gguf": _gguf}
