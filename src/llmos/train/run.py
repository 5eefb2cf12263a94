"""The two calls job programs make: ``run_training`` and ``run_evaluation``.

Each checks everything a user can get wrong (recipe, columns, rows, labels, model files,
tokenizer fit, output folder) before any training or evaluation starts, then wires the
pieces: ``data`` -> ``encode`` -> ``tasks`` -> ``loop`` -> ``export``. Logs carry counts
and names, never the text of rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from llmos.models.quantized import is_int8
from llmos.train import data as rows_mod
from llmos.train import encode as enc
from llmos.train.errors import DataError, RecipeError
from llmos.train.evaluate import evaluate_examples
from llmos.train.export import check_output_dir, export_model
from llmos.train.loop import Trainer, fingerprint
from llmos.train.recipe import TrainRecipe, parse_train_recipe
from llmos.train.runtime import resolve
from llmos.train.state import seed_everything
from llmos.train.tasks import (
    add_lora,
    check_model_dir,
    check_token_ids,
    load_model,
    load_tokenizer,
)


@dataclass
class TrainResult:
    yielded: bool  # True: the kernel asked for the resources back; a checkpoint is saved
    final_loss: float | None  # training loss of the last optimizer step
    metrics: dict  # train_loss and the last validation metrics (eval_*)
    steps: int
    total_steps: int
    stopped_early: bool
    export: dict | None  # export summary; None when yielded

    def to_dict(self) -> dict:
        return asdict(self)


def run_training(ctx, recipe: TrainRecipe | dict | str, model_dir: str | Path,
                 train_rows, validation_rows=None, output_dir: str | Path | None = None,
                 *, device: str | None = None) -> TrainResult:
    """Fine-tune the model in ``model_dir`` as ``recipe`` says, resuming from the job's
    checkpoint when it has one, and export it to ``output_dir``. Rows are lists of dicts or
    Parquet file paths. Returns with ``yielded=True`` (and no export) when the kernel asked
    the job to yield; the next attempt resumes where this one stopped."""
    rec = parse_train_recipe(recipe)
    if output_dir is None:
        raise RecipeError("output_dir: where the trained model goes is required")
    out = check_output_dir(output_dir)
    folder = check_model_dir(model_dir)
    runtime = resolve(rec.precision, device)
    train, val = read_training_rows(rec, train_rows, validation_rows)
    labels = (rows_mod.resolve_labels(rec, train, val)
              if rec.task != "causal_lm" else None)
    label2id = {name: i for i, name in enumerate(labels)} if labels else None
    tokenizer = load_tokenizer(folder)
    train_ex = _encode(ctx, rec, tokenizer, train, label2id, "training")
    val_ex = _encode(ctx, rec, tokenizer, val, label2id, "validation")
    seed_everything(rec.seed)  # before the model: a new head and LoRA draw from it
    model = load_model(rec.task, folder, labels, tokenizer)
    check_token_ids(enc.max_token_id(train_ex + val_ex), model, "training or validation")
    if rec.method == "lora":
        model = add_lora(model, rec.task, rec.lora)
    model.to(runtime.device)
    collate = partial(enc.collate, pad_id=tokenizer.pad_token_id,
                      sequence_labels=rec.task != "sequence_classification")
    evaluator = None
    if val_ex:
        id2label = dict(enumerate(labels)) if labels else None
        tags = [r[rec.tags_field] for r in val] if rec.task == "token_classification" else None
        evaluator = partial(_evaluate_in_loop, rec, val_ex, collate, runtime, id2label, tags)
    trainer = Trainer(ctx, rec, model, train_ex, collate, runtime, evaluator,
                      fingerprint(rec, folder, train_ex, val_ex))
    ctx.log(f"training {rec.task} ({rec.method}, {runtime.precision} on {runtime.device}): "
            f"{len(train_ex)} training and {len(val_ex)} validation rows, "
            f"{trainer.total} optimizer steps")
    res = trainer.run()
    metrics = {"train_loss": res.final_loss,
               **{f"eval_{k}": v for k, v in res.eval_metrics.items()}}
    if res.yielded:
        ctx.log(f"yielding at step {res.steps} of {res.total_steps}")
        return TrainResult(True, res.final_loss, metrics, res.steps, res.total_steps,
                           res.stopped_early, None)
    summary = export_model(model, tokenizer, out, task=rec.task, method=rec.method,
                           dtype=rec.export_dtype, metrics=metrics)
    ctx.log(f"exported {summary['architecture']} ({summary['parameters']} parameters, "
            f"{summary['dtype']}) after {res.steps} steps")
    return TrainResult(False, res.final_loss, metrics, res.steps, res.total_steps,
                       res.stopped_early, summary)


def read_training_rows(rec: TrainRecipe, train_rows, validation_rows) -> tuple[list, list]:
    """The training and validation rows the recipe reads, checked (columns, values)."""
    cols = rows_mod.required_columns(rec)
    train = rows_mod.read_rows(train_rows, cols, "training")
    rows_mod.check_rows(rec, train, "training")
    val = rows_mod.read_rows(validation_rows, cols, "validation")
    if val:
        rows_mod.check_rows(rec, val, "validation")
    if not val and (rec.early_stopping or rec.eval_every):
        raise DataError("eval_every and early_stopping need validation rows")
    return train, val


def _encode(ctx, rec, tokenizer, rows, label2id, split: str) -> list:
    examples, dropped = enc.encode(rec, tokenizer, rows, label2id)
    enc.check_not_empty(examples, dropped, split)
    if dropped and ctx is not None:
        ctx.log(f"{dropped} {split} rows left out: nothing to learn within max_length "
                f"{rec.max_length}", level="WARNING")
    return examples


def _evaluate_in_loop(rec, examples, collate, runtime, id2label, tags, model) -> dict:
    return evaluate_examples(rec.task, model, examples, collate, runtime,
                             rec.eval_batch_size or rec.batch_size, id2label, tags)


def run_evaluation(model_dir: str | Path, task: str, rows,
                   recipe_or_fields: TrainRecipe | dict | str | None = None, *,
                   ctx=None, device: str | None = None) -> dict:
    """Evaluate a trained model folder on labeled ``rows`` (dicts or Parquet paths).
    ``recipe_or_fields`` is the training recipe, or just the field names and settings
    that differ from the defaults (``{"text_field": "body", "max_length": 64}``).
    With ``ctx``, progress is reported in samples."""
    rec = _eval_recipe(task, recipe_or_fields)
    folder = check_model_dir(model_dir)
    # int8 weights (models/quantized.py) run on the CPU only
    runtime = resolve(rec.precision, "cpu" if is_int8(folder) else device)
    data = rows_mod.read_rows(rows, rows_mod.required_columns(rec), "evaluation")
    rows_mod.check_rows(rec, data, "evaluation")
    tokenizer = load_tokenizer(folder)
    model = load_model(rec.task, folder, None, tokenizer)
    id2label = label2id = None
    if rec.task != "causal_lm":
        id2label = {int(i): name for i, name in model.config.id2label.items()}
        label2id = {name: i for i, name in id2label.items()}
        unknown = set(rows_mod.label_values(rec, data)) - set(label2id)
        if unknown:
            raise DataError(f"evaluation rows have labels the model does not know: "
                            f"{rows_mod.quoted(unknown)} (model labels: "
                            f"{', '.join(label2id)})")
    examples = _encode(ctx, rec, tokenizer, data, label2id, "evaluation")
    check_token_ids(enc.max_token_id(examples), model, "evaluation")
    model.to(runtime.device)
    collate = partial(enc.collate, pad_id=tokenizer.pad_token_id,
                      sequence_labels=rec.task != "sequence_classification")
    tags = [r[rec.tags_field] for r in data] if rec.task == "token_classification" else None
    report = None
    if ctx is not None:
        def report(done: int, total: int) -> None:
            ctx.progress(done, total, unit="batches")
    return evaluate_examples(rec.task, model, examples, collate, runtime,
                             rec.eval_batch_size or max(rec.batch_size, 16), id2label, tags,
                             progress=report)


def _eval_recipe(task: str, given: Any) -> TrainRecipe:
    if given is None:
        return parse_train_recipe({"task": task})
    if isinstance(given, (TrainRecipe, str)):
        rec = parse_train_recipe(given)
    else:
        rec = parse_train_recipe({"task": task, **dict(given)})
    if rec.task != task:
        raise RecipeError(f"task: the recipe is for {rec.task!r} but {task!r} was asked for")
    return rec
