"""Each task learns a trivially separable toy set with a tiny model; the job reports its
metrics and progress; a diverging run stops with an error and exports nothing; gradient
accumulation matches one big batch; chat and prompt/completion rows take the loss where
they should."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_helpers import (
    chat_rows,
    completion_rows,
    events,
    job,
    metric_values,
    ner_rows,
    text_rows,
    topic_rows,
)
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from llmos.train import TrainingDiverged, parse_train_recipe, run_training
from llmos.train.encode import IGNORE, encode

FAST = {"optimizer": {"lr": 3e-3}, "schedule": "constant", "log_every": 1}
EXAMPLES = Path(__file__).parents[2] / "examples" / "train"


def first_and_last_loss(workdir) -> tuple[float, float]:
    losses = [v for _, v in metric_values(workdir, "loss")]
    return sum(losses[:3]) / 3, sum(losses[-3:]) / 3


def test_sequence_classification_learns(tmp_path, tiny_bert):
    recipe = {**FAST, "task": "sequence_classification", "max_length": 16, "batch_size": 6,
              "epochs": 8, "optimizer": {"lr": 1e-2}, "schedule": "linear"}
    res = run_training(job(tmp_path), recipe, tiny_bert, topic_rows(6), topic_rows(2),
                       tmp_path / "out")
    first, last = first_and_last_loss(tmp_path)
    assert last < first * 0.7
    assert res.metrics["eval_accuracy"] > 0.5  # chance is 1/3
    assert json.loads(json.dumps(res.to_dict()))["export"]["task"] == "sequence_classification"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "food", 1: "sport", 2: "tech"}


def test_token_classification_learns(tmp_path, tiny_bert):
    recipe = {**FAST, "task": "token_classification", "max_length": 16, "batch_size": 4,
              "epochs": 6}
    res = run_training(job(tmp_path), recipe, tiny_bert, ner_rows(12), ner_rows(4),
                       tmp_path / "out")
    first, last = first_and_last_loss(tmp_path)
    assert last < first * 0.5
    assert res.export["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]
    assert res.metrics["eval_f1"] > 0.5
    assert set(res.metrics["eval_per_type"]) == {"LOC", "PER"}


@pytest.mark.parametrize("rows,fields", [
    (chat_rows(10), {"messages_field": "messages"}),
    (completion_rows(10), {"prompt_field": "prompt", "completion_field": "completion"}),
    (text_rows(10), {}),
], ids=["chat", "prompt_completion", "text"])
def test_causal_lm_learns(tmp_path, tiny_llama, rows, fields):
    recipe = {**FAST, **fields, "task": "causal_lm", "max_length": 64, "batch_size": 5,
              "epochs": 6, "optimizer": {"lr": 1e-2}}
    res = run_training(job(tmp_path), recipe, tiny_llama, rows, rows[:4], tmp_path / "out")
    first, last = first_and_last_loss(tmp_path)
    assert last < first * 0.8
    assert res.metrics["eval_perplexity"] == pytest.approx(math.exp(res.metrics["eval_loss"]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.generation_config.eos_token_id == 2
    assert (tmp_path / "out" / "chat_template.jinja").exists()


def test_metrics_and_progress_reach_the_event_file(tmp_path, tiny_bert):
    recipe = {"task": "sequence_classification", "max_length": 16, "batch_size": 4,
              "max_steps": 6, "log_every": 2, "eval_every": 3, "checkpoint_every": 4,
              "schedule": {"name": "linear", "warmup_steps": 2}, "optimizer": {"lr": 1e-3}}
    res = run_training(job(tmp_path), recipe, tiny_bert, topic_rows(4), topic_rows(1),
                       tmp_path / "out")
    assert [s for s, _ in metric_values(tmp_path, "loss")] == [2, 4, 6]
    assert [s for s, _ in metric_values(tmp_path, "samples_per_second")] == [2, 4, 6]
    assert all(v > 0 for _, v in metric_values(tmp_path, "samples_per_second"))
    lrs = dict(metric_values(tmp_path, "learning_rate"))
    assert lrs[2] == pytest.approx(1e-3 * 1 / 2)  # the rate step 2 used: warmup step 1 of 2
    assert lrs[6] == pytest.approx(1e-3 * 1 / 4)  # then linear decay over the 4 steps left
    assert [s for s, _ in metric_values(tmp_path, "eval_accuracy")] == [3, 6]
    assert [s for s, _ in metric_values(tmp_path, "eval_loss")] == [3, 6]
    progress = [e for e in events(tmp_path) if e["type"] == "progress"]
    assert [(p["done"], p["total"], p["unit"]) for p in progress] == \
        [(2, 6, "steps"), (4, 6, "steps"), (6, 6, "steps")]
    assert progress[-1]["info"]["epoch"] == 2.0  # 12 rows in batches of 4: 3 steps an epoch
    assert [e["step"] for e in events(tmp_path) if e["type"] == "checkpoint"] == [1]
    assert res.steps == res.total_steps == 6 and not res.yielded
    # The same run reporting every step: each report above is the mean of the steps since
    # the one before, and the final loss is the last step's own.
    twin = run_training(job(tmp_path / "twin"), {**recipe, "log_every": 1}, tiny_bert,
                        topic_rows(4), topic_rows(1), tmp_path / "twin" / "out")
    each = dict(metric_values(tmp_path / "twin", "loss"))
    assert sorted(each) == [1, 2, 3, 4, 5, 6]
    assert metric_values(tmp_path, "loss") == [
        (s, pytest.approx((each[s - 1] + each[s]) / 2, rel=1e-6)) for s in (2, 4, 6)]
    assert res.final_loss == pytest.approx(each[6], rel=1e-6) == twin.final_loss


def poisoned_bert(src: Path, dest: Path, word: str) -> Path:
    """A copy of ``src`` whose embedding of ``word`` is NaN."""
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    weights = load_file(dest / "model.safetensors")
    token = AutoTokenizer.from_pretrained(src).convert_tokens_to_ids(word)
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key][token] = float("nan")
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_a_nan_loss_stops_training_and_exports_nothing(tmp_path, tiny_bert):
    model = poisoned_bert(tiny_bert, tmp_path / "poisoned", "football")
    rows = [dict(r, text=r["text"] + " football") for r in topic_rows(4)]
    recipe = {"task": "sequence_classification", "max_length": 16, "batch_size": 4,
              "max_steps": 6, "log_every": 5}
    with pytest.raises(TrainingDiverged) as e:
        run_training(job(tmp_path / "job"), recipe, model, rows, None, tmp_path / "out")
    assert str(e.value).startswith("loss became nan at step 1;")  # found at the step-5 report
    assert not (tmp_path / "out").exists()
    assert not metric_values(tmp_path / "job", "loss")


@pytest.mark.parametrize("task", ["sequence_classification", "causal_lm"])
def test_grad_accumulation_2x2_matches_1x4(tmp_path, tiny_bert_no_dropout, tiny_llama, task):
    if task == "causal_lm":  # rows of different lengths: the loss is a mean over tokens
        model, rows = tiny_llama, [{"text": "word " * (1 + i % 5)} for i in range(12)]
    else:
        model, rows = tiny_bert_no_dropout, topic_rows(4)
    base = {"task": task, "max_length": 32, "epochs": 2, "log_every": 1, "seed": 3,
            "optimizer": {"lr": 1e-2}}
    runs = {}
    for name, bs, accum in [("2x2", 2, 2), ("1x4", 4, 1), ("2x1", 2, 1)]:
        runs[name] = run_training(job(tmp_path / name), {**base, "batch_size": bs,
                                                         "grad_accum_steps": accum},
                                  model, rows, None, tmp_path / name / "out")
    assert runs["2x2"].steps == runs["1x4"].steps == 6
    assert runs["2x2"].final_loss == pytest.approx(runs["1x4"].final_loss, rel=1e-4)
    assert runs["2x1"].final_loss != pytest.approx(runs["1x4"].final_loss, rel=1e-4)
    w = [_weights(tmp_path / n / "out") for n in ("2x2", "1x4")]
    assert all(torch.allclose(w[0][k], w[1][k], atol=1e-4) for k in w[0])


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _labeled_text(tokenizer, example) -> str:
    ids = [t for t in example.labels if t != IGNORE]
    return tokenizer.decode(ids)


def test_chat_loss_is_on_assistant_turns_only(smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    recipe = parse_train_recipe({"task": "causal_lm", "messages_field": "messages"})
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Name a colour."},
                        {"role": "assistant", "content": "Blue."},
                        {"role": "user", "content": "Another?"},
                        {"role": "assistant", "content": "Green."}]}
    [example], _ = encode(recipe, tok, [row], None)
    assert _labeled_text(tok, example) == "Blue.<|im_end|>\nGreen.<|im_end|>\n"
    assert example.labels[-1] == IGNORE and len(example.labels) == len(example.input_ids)


def test_prompt_completion_loss_is_on_the_completion_only(smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    recipe = parse_train_recipe({"task": "causal_lm", "prompt_field": "q",
                                 "completion_field": "a", "max_length": 64})
    [example], _ = encode(recipe, tok, [{"q": "Capital of France?", "a": " Paris."}], None)
    assert _labeled_text(tok, example) == " Paris.<|im_end|>"


def test_rows_cut_to_nothing_are_left_out(smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    recipe = parse_train_recipe({"task": "causal_lm", "prompt_field": "q",
                                 "completion_field": "a", "max_length": 8})
    rows = [{"q": "word " * 20, "a": "answer"}, {"q": "hi", "a": "there"}]
    examples, dropped = encode(recipe, tok, rows, None)
    assert (len(examples), dropped) == (1, 1)


@pytest.mark.parametrize("name,model,rows", [
    ("minilm-classifier.yaml", "tiny_bert", topic_rows(2)),
    ("minilm-ner.yaml", "tiny_bert", ner_rows(4)),
    ("smollm2-lora-chat.yaml", "tiny_llama", chat_rows(4)),
])
def test_example_recipes_run(tmp_path, request, name, model, rows):
    recipe = parse_train_recipe((EXAMPLES / name).read_text()).to_dict()
    recipe.update(max_steps=2, epochs=None, eval_every=1, batch_size=2, grad_accum_steps=1)
    res = run_training(job(tmp_path), recipe, request.getfixturevalue(model), rows, rows[:2],
                       tmp_path / "out")
    assert res.steps == 2 and res.export["files"]


def test_early_stopping_ends_training_when_the_metric_stalls(tmp_path, tiny_bert):
    # nothing improves eval_loss by 10 nats: the first evaluation sets the best, two more
    # without improvement stop the run at step 3 of 20
    recipe = {"task": "sequence_classification", "max_length": 16, "batch_size": 4,
              "max_steps": 20, "eval_every": 1, "log_every": 1,
              "early_stopping": {"patience": 2, "metric": "eval_loss", "min_delta": 10.0}}
    res = run_training(job(tmp_path), recipe, tiny_bert, topic_rows(4), topic_rows(1),
                       tmp_path / "out")
    assert res.stopped_early and res.steps == 3 and res.total_steps == 20
    assert [s for s, _ in metric_values(tmp_path, "eval_loss")] == [1, 2, 3]
    assert res.export is not None


def test_bf16_autocast_trains_and_exports_in_the_asked_dtype(tmp_path, tiny_llama):
    recipe = {"task": "causal_lm", "max_length": 32, "batch_size": 5, "max_steps": 4,
              "precision": "bf16", "export_dtype": "bfloat16", "log_every": 1,
              "optimizer": {"lr": 1e-2}}
    res = run_training(job(tmp_path), recipe, tiny_llama, text_rows(10), text_rows(5),
                       tmp_path / "out")
    assert res.export["dtype"] == "bfloat16"
    assert math.isfinite(res.final_loss) and math.isfinite(res.metrics["eval_loss"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.bfloat16
