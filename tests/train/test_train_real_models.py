"""Real models, starting from the example recipes (shortened to fit a 2-core CI run):
all-MiniLM-L6-v2 learns a topic classifier that generalises to differently written
sentences, and SmolLM2-135M-Instruct learns a reply style with LoRA, lowering its
validation loss, and its merged export still generates text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from offline_models import minilm_dir
from topic_corpus import held_out_rows, train_rows
from train_helpers import job, metric_values
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from llmos.train import parse_train_recipe, run_evaluation, run_training

EXAMPLES = Path(__file__).parents[2] / "examples" / "train"


def example(name: str, **overrides) -> dict:
    recipe = parse_train_recipe((EXAMPLES / name).read_text()).to_dict()
    recipe.update(overrides)
    return recipe


@pytest.mark.slow
def test_minilm_learns_topics_that_generalise(tmp_path):
    recipe = example("minilm-classifier.yaml", max_length=32, epochs=2, eval_every=None,
                     early_stopping=None, checkpoint_every=None, log_every=5,
                     optimizer={"name": "adamw", "lr": 2e-4, "weight_decay": 0.01})
    held = held_out_rows()
    res = run_training(job(tmp_path / "job"), recipe, minilm_dir(), train_rows(), held,
                       tmp_path / "out")
    # measured: 0.95 held-out accuracy after 20 steps (chance: 0.25)
    assert res.metrics["eval_accuracy"] >= 0.8
    losses = [v for _, v in metric_values(tmp_path / "job", "loss")]
    assert losses[-1] < losses[0] / 2
    report = run_evaluation(tmp_path / "out", "sequence_classification", held, recipe)
    assert report["accuracy"] == pytest.approx(res.metrics["eval_accuracy"])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert set(model.config.id2label.values()) == {"computing", "cooking", "sports", "weather"}


CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Kenya", "Nairobi"), ("Spain", "Madrid"),
            ("Chile", "Santiago"), ("Greece", "Athens"), ("Cuba", "Havana"),
            ("Poland", "Warsaw"), ("Canada", "Ottawa"), ("Germany", "Berlin"),
            ("India", "New Delhi"), ("Mexico", "Mexico City")]


def pirate_chat(country: str, capital: str) -> dict:
    return {"messages": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": f"Arr, matey! The capital of {country} be {capital},"
                                         " savvy?"}]}


@pytest.mark.slow
def test_smollm2_lora_learns_a_reply_style(tmp_path, smollm2_dir):
    train = [pirate_chat(*c) for c in CAPITALS[:12]]
    val = [pirate_chat(*c) for c in CAPITALS[12:]]
    recipe = example("smollm2-lora-chat.yaml", max_length=64, batch_size=4,
                     grad_accum_steps=1, epochs=None, max_steps=5, eval_every=None,
                     early_stopping=None, checkpoint_every=None, log_every=1,
                     optimizer={"name": "adamw", "lr": 1e-3})
    before = run_evaluation(smollm2_dir, "causal_lm", val, recipe)
    res = run_training(job(tmp_path / "job"), recipe, smollm2_dir, train, val, tmp_path / "out")
    # measured: validation loss 2.45 -> 0.67 (perplexity 11.5 -> 2.0) after 5 steps
    assert res.metrics["eval_loss"] < before["loss"] * 0.6
    after = run_evaluation(tmp_path / "out", "causal_lm", val, recipe)
    assert after["loss"] == pytest.approx(res.metrics["eval_loss"], rel=1e-3)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "You are a pirate."},
         {"role": "user", "content": "What is the capital of Sweden?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    reply = tok.decode(out[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(reply.strip()) > 0  # measured: 'Arrr, matey! The capital'
