"""Evaluation: metrics from predictions, and predictions from a model (batched, no
gradients). Every result is a plain JSON-able dict.

- classifiers: accuracy; precision, recall and F1, macro and micro; the confusion matrix
  with label names; scikit-learn's classification report;
- token classification: entity-level precision, recall, F1 overall and per entity type
  (seqeval, CoNLL rules), and token accuracy;
- causal LM: loss and perplexity, the exp of the mean token negative log-likelihood over
  the whole set (padding and masked tokens excluded).

Every task also reports ``loss`` (mean over the items that count) and ``samples``.
This module does not load models; see ``api.run_evaluation``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmos.train.encode import IGNORE, Batch, Example
from llmos.train.tasks import loss_sum as task_loss


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    """Metrics of predicted against true label names. Macro averages run over the labels
    that occur in either list; the confusion matrix (rows: true, columns: predicted)
    covers every label in ``labels`` order."""
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    present = [name for name in labels if name in set(y_true) | set(y_pred)]
    out: dict[str, Any] = {"accuracy": accuracy_score(y_true, y_pred)}
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present,
                                                     average=avg, zero_division=0)
        out.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    out["confusion_matrix"] = {"labels": list(labels),
                               "matrix": confusion_matrix(y_true, y_pred, labels=labels)}
    out["report"] = classification_report(y_true, y_pred, labels=present, output_dict=True,
                                          zero_division=0)
    return plain(out)


def ner_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Entity-level metrics of BIO tag sequences (an entity counts only when its type and
    both ends match), overall (micro) and per entity type."""
    from seqeval.metrics import (
        accuracy_score,
        classification_report,
        f1_score,
        precision_score,
        recall_score,
    )

    kw = {"zero_division": 0}
    report = classification_report(true_tags, pred_tags, output_dict=True, **kw)
    per_type = {name: {"precision": v["precision"], "recall": v["recall"],
                       "f1": v["f1-score"], "support": v["support"]}
                for name, v in report.items() if not name.endswith(" avg")}
    return plain({"precision": precision_score(true_tags, pred_tags, **kw),
                  "recall": recall_score(true_tags, pred_tags, **kw),
                  "f1": f1_score(true_tags, pred_tags, **kw),
                  "accuracy": accuracy_score(true_tags, pred_tags),
                  "per_type": per_type})


def lm_metrics(nll_sum: float, n_tokens: int) -> dict:
    """Loss (mean negative log-likelihood per token) and perplexity over a whole set."""
    loss = nll_sum / n_tokens if n_tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": n_tokens}


def plain(value: Any) -> Any:
    """NumPy scalars and arrays as Python numbers and lists, recursively."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# -- running a model ------------------------------------------------------------------------


def evaluate_examples(task: str, model, examples: list[Example],
                      collate: Callable[[list[Example]], Batch], runtime, batch_size: int,
                      id2label: dict[int, str] | None = None,
                      true_tags: list[list[str]] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """The metrics of ``model`` on ``examples`` (in eval mode, without gradients).
    Token classification needs the rows' full ``true_tags`` (words that truncation cut
    off count as predicted ``O``)."""
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    preds: list = [None] * len(examples)
    loss_sum, n_items = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([examples[i] for i in idx]).to(runtime.device)
            with runtime.autocast():
                logits = model(**batch.inputs).logits
            loss_sum += float(task_loss(logits, batch.labels))
            n_items += batch.n_items
            if task != "causal_lm":
                _keep_predictions(task, logits, batch.labels, idx, preds)
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    model.train(was_training)
    if task == "causal_lm":
        out = lm_metrics(loss_sum, n_items)
    elif task == "sequence_classification":
        out = classification_metrics([id2label[e.labels] for e in examples],
                                     [id2label[p] for p in preds],
                                     [id2label[i] for i in sorted(id2label)])
        out["loss"] = loss_sum / max(n_items, 1)
    else:
        pred_tags = [[id2label[p] for p in ps][:len(t)] + ["O"] * (len(t) - len(ps))
                     for ps, t in zip(preds, true_tags)]
        out = ner_metrics(true_tags, pred_tags)
        out["loss"] = loss_sum / max(n_items, 1)
    out["samples"] = len(examples)
    return out


def _keep_predictions(task: str, logits, labels, idx: list[int], preds: list) -> None:
    best = logits.argmax(-1).cpu()
    if task == "sequence_classification":
        for i, p in zip(idx, best.tolist()):
            preds[i] = p
        return
    labels = labels.cpu()
    for row, i in enumerate(idx):
        keep = labels[row] != IGNORE
        preds[i] = best[row][keep].tolist()
