"""Preemption: a run asked to yield checkpoints and returns; the next attempt resumes from
the checkpoint and ends exactly where an uninterrupted run with the same seed ends (same
final loss, weights and validation metrics), for full fine-tuning and LoRA, with
gradient accumulation, dropout, and yields in the middle of an epoch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import YieldAt, chat_rows, events, job, text_rows, topic_rows

from llmos.train import TrainError, run_training

# 18 rows in micro-batches of 3, two per step: 3 optimizer steps an epoch, 6 in all.
CLS = {"task": "sequence_classification", "max_length": 16, "batch_size": 3,
       "grad_accum_steps": 2, "epochs": 2, "log_every": 1, "eval_every": 2, "seed": 7,
       "optimizer": {"lr": 5e-3}, "schedule": {"name": "cosine", "warmup_steps": 1},
       "early_stopping": {"patience": 5, "metric": "accuracy"}}
CASES = {
    "full": ({**CLS}, "tiny_bert", topic_rows(6)),  # BERT dropout 0.1
    "lora": ({**CLS, "method": "lora", "lora": {"r": 4, "dropout": 0.2}}, "tiny_bert",
             topic_rows(6)),
    "lora_chat": ({"task": "causal_lm", "messages_field": "messages", "max_length": 48,
                   "batch_size": 2, "grad_accum_steps": 2, "epochs": 2, "log_every": 1,
                   "eval_every": 3, "seed": 7, "optimizer": {"lr": 1e-2},
                   "method": "lora", "lora": {"r": 4, "dropout": 0.2}},
                  "tiny_llama", chat_rows(10)),  # 5 micro-batches, 3 steps an epoch
    "full_text": ({"task": "causal_lm", "max_length": 32, "batch_size": 2,
                   "grad_accum_steps": 2, "epochs": 2, "log_every": 1, "seed": 7,
                   "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9}},
                  "tiny_llama", text_rows(10)),  # tied input/output embeddings, SGD
}


def _export(folder):
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("case", list(CASES))
def test_a_yielded_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, request, case):
    recipe, fixture, rows = CASES[case]
    model = request.getfixturevalue(fixture)
    val = rows[:4]
    straight = run_training(job(tmp_path / "straight"), recipe, model, rows, val,
                            tmp_path / "straight" / "out")
    work, out = tmp_path / "preempted", tmp_path / "preempted" / "out"
    first = run_training(YieldAt(work, step=2), recipe, model, rows, val, out)
    assert first.yielded and first.steps == 2 and first.export is None  # mid-epoch 1
    second = run_training(YieldAt(work, step=4, attempt=2), recipe, model, rows, val, out)
    assert second.yielded and second.steps == 4  # mid-epoch 2
    last = run_training(job(work, attempt=3), recipe, model, rows, val, out)
    assert not last.yielded and last.steps == straight.steps == 6
    assert last.final_loss == pytest.approx(straight.final_loss, rel=1e-6, abs=1e-7)
    for name in ("eval_loss",):
        assert last.metrics[name] == pytest.approx(straight.metrics[name], rel=1e-6)
    a, b = _export(tmp_path / "straight" / "out"), _export(out)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [(e["attempt"], e["done"]) for e in events(work) if e["type"] == "progress"]
    assert steps == [(1, 1), (1, 2), (2, 3), (2, 4), (3, 5), (3, 6)]


def test_resuming_with_another_recipe_is_refused(tmp_path, tiny_bert):
    recipe = {**CLS, "eval_every": None, "early_stopping": None}
    run_training(YieldAt(tmp_path, step=1), recipe, tiny_bert, topic_rows(6), None,
                 tmp_path / "out")
    with pytest.raises(TrainError) as e:
        run_training(job(tmp_path, attempt=2), {**recipe, "optimizer": {"lr": 1e-4}},
                     tiny_bert, topic_rows(6), None, tmp_path / "out")
    assert str(e.value) == ("this job's checkpoint was made with another recipe, model or "
                            "data; start a new job instead of resuming this one")


def test_a_finished_checkpointed_run_resumes_straight_to_export(tmp_path, tiny_bert):
    recipe = {**CLS, "eval_every": None, "early_stopping": None, "checkpoint_every": 6}
    first = run_training(YieldAt(tmp_path, step=6), recipe, tiny_bert, topic_rows(6), None,
                         tmp_path / "out")
    assert first.yielded and first.steps == 6
    again = run_training(job(tmp_path, attempt=2), recipe, tiny_bert, topic_rows(6), None,
                         tmp_path / "out")
    assert not again.yielded and again.final_loss == first.final_loss
    assert again.export["files"]
