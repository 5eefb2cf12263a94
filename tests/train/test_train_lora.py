"""LoRA: only the adapters (and a classifier head) train, the loss falls, and the export
merges the adapters into plain weights that load with ``AutoModelFor...`` and give the
same logits as the base model with the adapter on top."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from train_helpers import YieldAt, chat_rows, job, metric_values, topic_rows
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from llmos.train import run_training

LORA = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "log_every": 1}
CASES = {
    "sequence_classification": ({"task": "sequence_classification", "max_length": 16,
                                 "batch_size": 6, "epochs": 5, "optimizer": {"lr": 1e-2}},
                                "tiny_bert", topic_rows(6)),
    "causal_lm": ({"task": "causal_lm", "messages_field": "messages", "max_length": 48,
                   "batch_size": 5, "epochs": 5, "optimizer": {"lr": 2e-2},
                   "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}},
                  "tiny_llama", chat_rows(10)),
}


def train(tmp_path, request, task):
    recipe, fixture, rows = CASES[task]
    base = request.getfixturevalue(fixture)
    res = run_training(job(tmp_path / "job"), {**LORA, **recipe}, base, rows, rows[:3],
                       tmp_path / "out")
    return base, res


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("task", list(CASES))
def test_lora_learns_and_the_merged_export_matches_the_adapter(tmp_path, request, task):
    base, res = train(tmp_path, request, task)
    losses = [v for _, v in metric_values(tmp_path / "job", "loss")]
    if task == "causal_lm":  # (a random tiny BERT's features are too poor for LoRA alone)
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.9
    out = tmp_path / "out"
    assert {f["name"] for f in res.export["files"]} >= {
        "model.safetensors", "config.json", "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json"}
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["goal team match", "soup bread"], return_tensors="pt", padding=True)
    if task == "causal_lm":
        merged = AutoModelForCausalLM.from_pretrained(out)
        plain = AutoModelForCausalLM.from_pretrained(base)
    else:
        merged = AutoModelForSequenceClassification.from_pretrained(out)
        plain = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        untrained = plain.eval()(**batch).logits
        with_adapter = PeftModel.from_pretrained(plain, out / "adapter").eval()
        expected = with_adapter(**batch).logits
        got = merged.eval()(**batch).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, untrained, atol=1e-3)  # the adapter changed something
    assert res.export["parameters"] == sum(p.numel() for p in merged.parameters())


def test_a_lora_checkpoint_holds_only_the_adapter_and_head(tmp_path, tiny_bert):
    recipe = {**LORA, **CASES["sequence_classification"][0], "max_steps": 3}
    res = run_training(YieldAt(tmp_path, step=2), recipe, tiny_bert, topic_rows(6), None,
                       tmp_path / "out")
    assert res.yielded and res.export is None and not (tmp_path / "out").exists()
    ckpt = next((tmp_path / "checkpoints").glob("ckpt-*"))
    with safe_open(ckpt / "weights.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and all("lora_" in n or "classifier" in n for n in names)
    assert any("classifier" in n for n in names)
