"""Training recipes are checked before a job starts; a bad one is refused with a message
naming the field, and the example recipes load (and run: see test_train_tasks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos.train import RecipeError, parse_train_recipe

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "train").glob("*.yaml"))


def test_three_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"minilm-classifier.yaml", "minilm-ner.yaml",
                                          "smollm2-lora-chat.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipes_load(path):
    recipe = parse_train_recipe(path.read_text())
    assert parse_train_recipe(recipe.to_dict()) == recipe  # the canonical form reads back


def test_defaults_fill_the_task_fields():
    assert parse_train_recipe({"task": "sequence_classification"}).text_field == "text"
    assert parse_train_recipe({"task": "sequence_classification"}).label_field == "label"
    ner = parse_train_recipe({"task": "token_classification"})
    assert (ner.tokens_field, ner.tags_field) == ("tokens", "tags")
    assert parse_train_recipe({"task": "causal_lm"}).causal_format == "text"
    chat = parse_train_recipe("task: causal_lm\nmessages_field: conversation\nmethod: lora")
    assert chat.causal_format == "messages" and chat.lora.r == 8
    assert parse_train_recipe("task: causal_lm\noptimizer: sgd").optimizer.name == "sgd"


def test_steps_follow_epochs_and_max_steps():
    r = parse_train_recipe({"task": "causal_lm", "batch_size": 4, "grad_accum_steps": 2,
                            "epochs": 2})
    assert r.steps_per_epoch(17) == 3  # 5 micro-batches, the last step takes one
    assert r.total_steps(17) == 6
    assert parse_train_recipe({"task": "causal_lm", "max_steps": 50}).total_steps(17) == 50
    assert parse_train_recipe({"task": "causal_lm"}).total_steps(17) == 9  # 3 epochs
    both = parse_train_recipe({"task": "causal_lm", "max_steps": 50, "epochs": 1})
    assert both.total_steps(17) == 3
    assert parse_train_recipe(both.to_dict()).total_steps(17) == 3
    only_steps = parse_train_recipe({"task": "causal_lm", "max_steps": 50})
    assert parse_train_recipe(only_steps.to_dict()).total_steps(17) == 50


@pytest.mark.parametrize("raw,message", [
    ({"task": "summarization"}, ("task: Input should be 'sequence_classification', "
                                 "'token_classification' or 'causal_lm'")),
    ({}, "task: Field required"),
    ({"task": "causal_lm", "learning_rate": 1e-4}, "unknown field 'learning_rate' (fields: task,"),
    ({"task": "causal_lm", "optimizer": {"lrate": 1}},
     "unknown field 'optimizer.lrate' (fields: name, lr, weight_decay, betas, eps, momentum)"),
    ({"task": "causal_lm", "optimizer": "adam"}, "optimizer.name: Input should be 'adamw' or 'sgd'"),
    ({"task": "causal_lm", "optimizer": {"name": "sgd", "betas": [0.8, 0.9]}},
     "optimizer: betas apply to adamw; sgd takes momentum"),
    ({"task": "causal_lm", "optimizer": {"lr": -1}}, "optimizer.lr: Input should be greater than 0"),
    ({"task": "causal_lm", "schedule": "exponential"},
     "schedule.name: Input should be 'constant', 'linear' or 'cosine'"),
    ({"task": "causal_lm", "schedule": {"warmup_steps": 10, "warmup_ratio": 0.1}},
     "schedule: give warmup_steps or warmup_ratio, not both"),
    ({"task": "sequence_classification", "tags_field": "ner"},
     ("tags_field does not apply to task 'sequence_classification' (its fields: "
      "label_field, text_field)")),
    ({"task": "causal_lm", "prompt_field": "q"}, "prompt_field and completion_field go together"),
    ({"task": "causal_lm", "messages_field": "m", "text_field": "t"},
     "causal_lm reads one format"),
    ({"task": "causal_lm", "lora": {"r": 4}}, "lora settings are given but method is 'full'"),
    ({"task": "causal_lm", "method": "lora", "lora": {"rank": 4}},
     "unknown field 'lora.rank' (fields: r, alpha, dropout, target_modules)"),
    ({"task": "causal_lm", "method": "qlora"}, "method: Input should be 'full' or 'lora'"),
    ({"task": "causal_lm", "precision": "fp8"},
     "precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
    ({"task": "causal_lm", "batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ({"task": "causal_lm", "labels": ["a", "b"]}, "labels apply to classification tasks"),
    ({"task": "sequence_classification", "labels": ["a", "a"]}, "labels: each label appears once"),
    ({"task": "causal_lm", "early_stopping": {"patience": 2}},
     "early_stopping needs eval_every"),
    ({"task": "causal_lm", "eval_every": 10, "early_stopping": {"metric": "accuracy"}},
     ("early_stopping.metric: 'accuracy' is not a metric of causal_lm (metrics: eval_loss, "
      "eval_perplexity)")),
    ("task: [causal_lm", "training recipe: not valid YAML"),
    ("- task: causal_lm", "a training recipe is a mapping with at least 'task'"),
])
def test_bad_recipes_say_what_is_wrong(raw, message):
    with pytest.raises(RecipeError) as e:
        parse_train_recipe(raw)
    assert message in str(e.value)
    assert str(e.value).startswith(("training recipe: ", "the training recipe", "a training"))


def test_early_stopping_metric_names_are_normalised():
    r = parse_train_recipe({"task": "token_classification", "eval_every": 5,
                            "early_stopping": {"metric": "f1"}})
    assert (r.early_stopping.metric, r.early_stopping.mode) == ("eval_f1", "max")
    r = parse_train_recipe({"task": "causal_lm", "eval_every": 5,
                            "early_stopping": {"metric": "perplexity"}})
    assert (r.early_stopping.metric, r.early_stopping.mode) == ("eval_perplexity", "min")
