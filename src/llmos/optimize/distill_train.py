"""The distillation run: rows -> examples (``llmos.train``), teacher and student loaded,
the student trained by llmos's training loop on the distillation loss, the student
exported.

``KDModule`` wraps student and teacher: called, it is the student (so the loop's
evaluation measures the student); ``loss_sum(batch)`` is the summed distillation loss.
``KDTrainer`` is the training loop with that loss. The teacher is frozen and stays in eval
mode; only the student's weights train and go into checkpoints. Logs carry counts and
names, never the text of rows.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import torch

from llmos.optimize.folders import CompressError
from llmos.train import data as rows_mod
from llmos.train import encode as enc
from llmos.train.errors import DataError
from llmos.train.evaluate import evaluate_examples
from llmos.train.export import check_output_dir, export_model
from llmos.train.loop import Trainer, fingerprint
from llmos.train.recipe import TrainRecipe, parse_train_recipe
from llmos.train.run import read_training_rows
from llmos.train.runtime import resolve
from llmos.train.state import seed_everything
from llmos.train.tasks import check_model_dir, check_token_ids, load_model, load_tokenizer

IGNORE = enc.IGNORE
_PROBE = 256  # examples on which the distillation loss is measured before and after


class KDModule(torch.nn.Module):
    def __init__(self, student, teacher, temperature: float, alpha: float):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.temperature, self.alpha = temperature, alpha
        teacher.requires_grad_(False)
        teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, **inputs):
        return self.student(**inputs)

    def loss_sum(self, batch):
        """alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T), summed over the
        labels that count (examples, or labeled tokens)."""
        import torch.nn.functional as F

        s = self.student(**batch.inputs).logits.float()
        with torch.no_grad():
            t = self.teacher(**batch.inputs).logits.float()
        labels = batch.labels
        if labels.dim() > 1:
            keep = labels != IGNORE
            s, t, labels = s[keep], t[keep], labels[keep]
        T = self.temperature
        ce = F.cross_entropy(s, labels, reduction="sum")
        kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                      reduction="sum")
        return self.alpha * ce + (1 - self.alpha) * T * T * kl


class KDTrainer(Trainer):
    """llmos's training loop, whose per-batch loss is the distillation loss."""

    def loss(self, batch):
        return self.model.loss_sum(batch)


def kd_loss(kd: KDModule, examples, collate, runtime, batch_size: int) -> float | None:
    """The mean distillation loss of the student over ``examples`` (no gradients)."""
    if not examples:
        return None
    was = kd.training
    kd.eval()
    total, items = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size]).to(runtime.device)
            with runtime.autocast():
                total += float(kd.loss_sum(batch))
            items += batch.n_items
    kd.train(was)
    return round(total / max(items, 1), 6)


def _teacher_labels(rec: TrainRecipe, teacher, train: list, val: list) -> list[str] | None:
    if rec.task == "causal_lm":
        return None
    id2label = {int(i): str(v) for i, v in teacher.config.id2label.items()}
    labels = [id2label[i] for i in sorted(id2label)]
    if rec.labels is not None and list(rec.labels) != labels:
        raise DataError(f"labels: the recipe lists {', '.join(rec.labels)} but the teacher "
                        f"knows {', '.join(labels)}")
    for split, rows in (("training", train), ("validation", val)):
        unknown = set(rows_mod.label_values(rec, rows)) - set(labels)
        if unknown:
            raise DataError(f"{split} rows have labels the teacher does not know: "
                            f"{rows_mod.quoted(unknown)} (teacher labels: {', '.join(labels)})")
    return labels


def _encode(rec, tokenizer, rows, label2id, split: str) -> list:
    examples, dropped = enc.encode(rec, tokenizer, rows, label2id)
    enc.check_not_empty(examples, dropped, split)
    return examples


def run_distillation(ctx, teacher_dir: Path, student_dir: Path, recipe, temperature: float,
                     alpha: float, train_rows, val_rows, out_dir: Path, *,
                     device: str | None = None) -> dict:
    from llmos.optimize.distill import teacher_fingerprint

    rec = parse_train_recipe(recipe)
    if rec.method != "full":
        raise CompressError("distill.train.method: the student trains all its weights; "
                            "use method: full")
    out = check_output_dir(out_dir)
    tdir, sdir = check_model_dir(teacher_dir), check_model_dir(student_dir)
    runtime = resolve(rec.precision, device)
    train, val = read_training_rows(rec, train_rows, val_rows)
    tokenizer = load_tokenizer(sdir)
    teacher = load_model(rec.task, tdir, None, tokenizer)
    labels = _teacher_labels(rec, teacher, train, val)
    label2id = {name: i for i, name in enumerate(labels)} if labels else None
    train_ex = _encode(rec, tokenizer, train, label2id, "training")
    val_ex = _encode(rec, tokenizer, val, label2id, "validation")
    seed_everything(rec.seed)
    student = load_model(rec.task, sdir, labels, tokenizer)
    check_token_ids(enc.max_token_id(train_ex + val_ex), student, "training or validation")
    kd = KDModule(student, teacher, temperature, alpha).to(runtime.device)
    collate = partial(enc.collate, pad_id=tokenizer.pad_token_id,
                      sequence_labels=rec.task != "sequence_classification")
    evaluator = None
    if val_ex:
        id2label = dict(enumerate(labels)) if labels else None
        tags = [r[rec.tags_field] for r in val] if rec.task == "token_classification" else None
        evaluator = partial(_evaluate, rec, val_ex, collate, runtime, id2label, tags)
    fp = hashlib.sha256((fingerprint(rec, sdir, train_ex, val_ex) + teacher_fingerprint(
        tdir, temperature, alpha)).encode()).hexdigest()[:16]
    probe = (val_ex or train_ex)[:_PROBE]
    batch = rec.eval_batch_size or max(rec.batch_size, 16)
    before = kd_loss(kd, probe, collate, runtime, batch)
    trainer = KDTrainer(ctx, rec, kd, train_ex, collate, runtime, evaluator, fp)
    ctx.log(f"distilling {rec.task} into a {student.config.num_hidden_layers}-layer student "
            f"(T={temperature}, alpha={alpha}, {runtime.precision} on {runtime.device}): "
            f"{len(train_ex)} training and {len(val_ex)} validation rows, "
            f"{trainer.total} optimizer steps")
    res = trainer.run()
    metrics = {"train_loss": res.final_loss,
               **{f"eval_{k}": v for k, v in res.eval_metrics.items()}}
    result = {"yielded": res.yielded, "steps": res.steps, "total_steps": res.total_steps,
              "metrics": metrics, "kd_loss_before": before, "kd_loss_after": None,
              "export": None}
    if res.yielded:
        ctx.log(f"yielding at step {res.steps} of {res.total_steps}")
        return {**result, "yielded_at_step": res.steps, "of": res.total_steps}
    result["kd_loss_after"] = kd_loss(kd, probe, collate, runtime, batch)
    metrics["kd_loss"] = result["kd_loss_after"]
    result["export"] = export_model(student, tokenizer, out, task=rec.task, method="full",
                                    dtype=rec.export_dtype, metrics=metrics)
    ctx.log(f"exported the student ({result['export']['parameters']} parameters); "
            f"distillation loss {before} -> {result['kd_loss_after']}")
    return result


def _evaluate(rec, examples, collate, runtime, id2label, tags, model) -> dict:
    return evaluate_examples(rec.task, model, examples, collate, runtime,
                             rec.eval_batch_size or rec.batch_size, id2label, tags)
