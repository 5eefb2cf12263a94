"""Evaluation numbers equal what one works out by hand, and a model evaluates to a plain
JSON-able report."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from train_helpers import job, ner_rows, topic_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmos.train import DataError, RecipeError, run_evaluation, run_training
from llmos.train.evaluate import classification_metrics, lm_metrics, ner_metrics


def test_classification_metrics_by_hand():
    y_true = ["a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "b", "b", "b", "c", "a"]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c"],
                                     "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]]}
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class: a P=1/2 R=1/2 F=1/2; b P=2/3 R=1 F=4/5; c P=1 R=1/2 F=2/3
    assert m["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["f1_micro"] == m["precision_micro"] == m["recall_micro"] == pytest.approx(4 / 6)
    assert m["report"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0,
                                              "f1-score": 0.8, "support": 2})
    json.dumps(m)


def test_a_label_absent_from_the_set_does_not_drag_the_macro_average():
    m = classification_metrics(["a", "b"], ["a", "b"], ["a", "b", "never"])
    assert m["f1_macro"] == 1.0
    assert m["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_ner_metrics_with_a_partially_matched_entity():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]  # PER found only in part
    m = ner_metrics(true, pred)
    # 3 true entities, 3 predicted, 2 exact matches (LOC, ORG)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["LOC"]["f1"] == 1.0
    assert m["accuracy"] == pytest.approx(5 / 6)  # token accuracy
    json.dumps(m)


def test_lm_metrics():
    assert lm_metrics(6.0, 3) == {"loss": 2.0, "perplexity": pytest.approx(math.exp(2.0)),
                                  "tokens": 3}


def test_perplexity_is_over_all_tokens_with_padding_excluded(tiny_llama):
    rows = [{"text": "the cat sat on the mat and looked around"}, {"text": "hello"}]
    report = run_evaluation(tiny_llama, "causal_lm", rows, {"batch_size": 2})
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    nll, count = 0.0, 0
    for row in rows:  # one row at a time: no padding anywhere
        ids = torch.tensor([tok(row["text"])["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nll += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    assert report["tokens"] == count
    assert report["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert report["samples"] == 2


def test_a_trained_classifier_evaluates_to_a_json_report(tmp_path, tiny_bert):
    recipe = {"task": "sequence_classification", "max_length": 16, "batch_size": 6,
              "epochs": 2, "optimizer": {"lr": 1e-2}}
    run_training(job(tmp_path / "job"), recipe, tiny_bert, topic_rows(6), None,
                 tmp_path / "out")
    ctx = job(tmp_path / "eval")
    report = run_evaluation(tmp_path / "out", "sequence_classification", topic_rows(3), recipe,
                            ctx=ctx)
    assert report["samples"] == 9
    assert report["confusion_matrix"]["labels"] == ["food", "sport", "tech"]
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == 9
    json.dumps(report)
    progress = [e for e in map(json.loads, (tmp_path / "eval" / "events.jsonl").open())
                if e["type"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"]
    with pytest.raises(DataError) as e:
        run_evaluation(tmp_path / "out", "sequence_classification",
                       [{"text": "a poem", "label": "poetry"}])
    assert str(e.value) == ("evaluation rows have labels the model does not know: 'poetry' "
                            "(model labels: food, sport, tech)")
    with pytest.raises(RecipeError, match="the recipe is for 'sequence_classification' but "
                                          "'causal_lm' was asked for"):
        run_evaluation(tmp_path / "out", "causal_lm", topic_rows(1), recipe)


def test_ner_evaluation_counts_words_cut_by_max_length_as_missed(tmp_path, tiny_bert):
    recipe = {"task": "token_classification", "max_length": 16, "batch_size": 4,
              "max_steps": 1}
    run_training(job(tmp_path / "job"), recipe, tiny_bert, ner_rows(4), None, tmp_path / "out")
    rows = [{"tokens": ["alice"] + ["x"] * 30 + ["paris"],
             "tags": ["B-PER"] + ["O"] * 30 + ["B-LOC"]}]
    report = run_evaluation(tmp_path / "out", "token_classification", rows,
                            {"max_length": 8})
    assert report["per_type"]["LOC"]["recall"] == 0.0  # "paris" was cut off
    assert report["samples"] == 1
