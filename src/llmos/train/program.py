"""The ``train.finetune`` and ``train.evaluate`` programs: kernel jobs around the training
library, reaching llmos only through their job context.

Fine-tuning fetches the base model version and the dataset version's shards (verified, once
per job), trains — checkpointing periodically and whenever the kernel asks it to yield, and
resuming from its checkpoint on the next attempt — evaluates on the test split, stores the
exported files as artifacts (their parents: the base model's weights and the dataset's
shards) and registers the new version last, with its lineage and metrics. A job that fails
registers nothing.
"""

from __future__ import annotations

import shutil

from llmos.data.fetch import fetch_dataset
from llmos.models.fetch import fetch_model
from llmos.models.loaders import inspect_model
from llmos.models.program import register
from llmos.train.run import run_evaluation, run_training
from llmos.train.recipe import parse_train_recipe

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "chat_template.jinja")


def finetune(ctx, recipe: dict, base: dict, dataset: dict, splits: dict, output: str,
             tokenizer: dict | None = None) -> dict:
    rec = parse_train_recipe(recipe)
    cache = ctx.workdir / "inputs"
    base_v, base_dir = fetch_model(ctx, base["model"], base["version"], cache)
    if tokenizer is not None:
        base_dir = _with_tokenizer(ctx, base_dir, tokenizer, cache)
    ds, shards = fetch_dataset(ctx, dataset["name"], dataset["version"], cache)
    out = ctx.workdir / "output"
    shutil.rmtree(out, ignore_errors=True)  # never a half-written export from an attempt
    result = run_training(ctx, rec, base_dir, shards[splits["train"]],
                          shards.get(splits["validation"]) if splits.get("validation") else None,
                          out)
    if result.yielded:
        return {"yielded_at_step": result.steps, "of": result.total_steps}
    metrics = dict(result.metrics)
    if splits.get("test"):
        ctx.log(f"evaluating on the {splits['test']} split")
        metrics["test"] = run_evaluation(out, rec.task, shards[splits["test"]], rec, ctx=ctx)
        for key, value in metrics["test"].items():
            if isinstance(value, (int, float)):
                ctx.metric(f"test_{key}", value)
    info = inspect_model(out)
    lineage = {"base": {"model": base["model"], "version": base_v["version"]},
               "dataset": {"name": dataset["name"], "version": ds["version"],
                           "content_hash": ds["content_hash"]},
               "job": ctx.job_id, "method": rec.method, "steps": result.steps,
               "training_params": rec.to_dict()}
    if tokenizer is not None:
        lineage["tokenizer"] = tokenizer
    parents = [f["artifact_id"] for f in base_v["files"] if f["path"].endswith(".safetensors")]
    parents += [s["artifact_id"] for s in ds["shards"]]
    version = register(ctx, output, out, info, lineage, metrics, parents=parents)
    shutil.rmtree(ctx.workdir / "output", ignore_errors=True)
    return {"model": output, "version": version["version"], "final_loss": result.final_loss,
            "steps": result.steps}


def _with_tokenizer(ctx, base_dir, tokenizer: dict, cache):
    """A copy of the base folder whose tokenizer files come from another model."""
    _, tok_dir = fetch_model(ctx, tokenizer["model"], tokenizer["version"], cache)
    mixed = cache / f"{base_dir.name}+tokenizer-of-{tok_dir.name}"
    shutil.rmtree(mixed, ignore_errors=True)
    shutil.copytree(base_dir, mixed, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    for name in TOKENIZER_FILES:
        if (tok_dir / name).exists():
            shutil.copy(tok_dir / name, mixed / name)
    return mixed


def evaluate(ctx, model: dict, task: str, dataset: dict, split: str, fields: dict) -> dict:
    cache = ctx.workdir / "inputs"
    v, folder = fetch_model(ctx, model["name"], model["version"], cache)
    ds, shards = fetch_dataset(ctx, dataset["name"], dataset["version"], cache)
    report = run_evaluation(folder, task, shards[split], fields or None, ctx=ctx)
    for key, value in report.items():
        if isinstance(value, (int, float)):
            ctx.metric(key, value)
    key = f"eval:{dataset['name']}:{ds['version']}:{split}"
    ctx.request("POST", f"/v1/registry/models/{model['name']}/versions/{v['version']}/metrics",
                json={"key": key, "metrics": report})
    return {"model": f"{model['name']}:{v['version']}", "key": key,
            **{k: x for k, x in report.items() if isinstance(x, (int, float))}}
