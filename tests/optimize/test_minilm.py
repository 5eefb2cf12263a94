"""The issue's claims on the real all-MiniLM-L6-v2, fine-tuned into a topic classifier
through a live daemon, then compressed by llmos's own jobs and compared on held-out rows
written with other templates and words:

- the int8 ONNX bundle is at least 3x smaller on disk, accuracy within 1 point;
- 40 % of the feed-forward channels pruned plus a short recovery fine-tune: fewer
  parameters, accuracy within 2 points;
- a 3-layer distilled student keeps at least 95 % of the teacher's accuracy;
- torch int8 quantization: smaller, accuracy within 1 point.

The fine-tuned classifier is also evaluated through llmos on those held-out rows: the
report is stored on its version, with its lineage and card (one fine-tune of the real model
through a live daemon serves both claims). Speed is measured by bench/optimize.py, not
asserted here."""

from __future__ import annotations

import json

import pytest
from live import LiveDaemon
from llmos.sdk import APIError
from offline_models import minilm_dir
from topic_corpus import _rows, train_rows

# The module's fixture fine-tunes, compresses four ways and compares: minutes of real work,
# run within the first test's time limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FINETUNE = {"task": "sequence_classification", "text_field": "text", "label_field": "label",
            "max_length": 32, "batch_size": 16, "epochs": 2, "log_every": 5,
            "optimizer": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01}, "seed": 13}
TRAIN = {"max_length": 32, "batch_size": 16, "seed": 13}
RECIPES = {
    "onnx-int8": ({"method": "onnx", "onnx": {"quantize": True}}, None),
    "int8": ({"method": "quantize"}, None),
    "pruned": ({"method": "prune", "prune": {"structure": "ffn", "sparsity": 0.4, "recover": {
        **TRAIN, "epochs": 2, "optimizer": {"lr": 1e-4}}}}, "topics"),
    "student": ({"method": "distill", "distill": {"student_layers": 3, "train": {
        **TRAIN, "epochs": 3, "optimizer": {"lr": 2e-4}}}}, "topics"),
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The classifier, its four compressed versions, and one comparison of all five on
    200 held-out rows: {name: the comparison's row}."""
    root = tmp_path_factory.mktemp("minilm-optimize")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home").start()
    c = live.client
    (root / "topics.jsonl").write_text("\n".join(json.dumps(r) for r in train_rows()))
    (root / "held.jsonl").write_text("\n".join(json.dumps(r) for r in _rows("held", 50, 3)))
    jobs = [c.models.import_("minilm", minilm_dir()),
            c.datasets.ingest("topics", [root / "topics.jsonl"], {
                "label_field": "label", "split": {"train": 0.85, "validation": 0.15,
                                                  "seed": 1}}),
            c.datasets.ingest("held-out", [root / "held.jsonl"], {
                "label_field": "label", "split": {"train": 0.0, "test": 1.0}})]
    for job in jobs:
        assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED", job
    trained = c.train.finetune(FINETUNE, "minilm", "topics", "topics-clf", cpu=2,
                               test_split=None)
    assert live.wait_job(trained["id"], timeout=900)["state"] == "SUCCEEDED"
    made = [c.optimize.compress(recipe, "topics-clf", f"topics-clf-{name}", dataset=dataset,
                                cpu=1, memory_mb=3072, test_split=None)
            for name, (recipe, dataset) in RECIPES.items()]
    for job in made:
        ended = live.wait_job(job["id"], timeout=900)
        assert ended["state"] == "SUCCEEDED", ended.get("reason")
    names = ["topics-clf", *(f"topics-clf-{n}" for n in RECIPES)]
    rows = c.optimize.wait_comparison(
        c.optimize.compare(names, "held-out", budget_s=0.5, cpu=2), timeout=900)
    yield {name: row for name, row in zip(["parent", *RECIPES], rows, strict=True)}, live
    live.stop()


def test_the_parent_is_a_real_classifier(compared):
    rows, _ = compared
    assert all(r["state"] == "SUCCEEDED" for r in rows.values()), rows
    assert rows["parent"]["accuracy"] >= 0.8  # chance is 0.25


def test_int8_onnx_is_three_times_smaller_within_one_point(compared):
    rows, live = compared
    parent, edge = rows["parent"], rows["onnx-int8"]
    assert edge["size_bytes"] * 3 <= parent["size_bytes"]
    assert edge["accuracy"] >= parent["accuracy"] - 0.01
    v = live.client.models.version("topics-clf-onnx-int8")
    assert v["lineage"]["parent"] == {"model": "topics-clf", "version": 1}
    assert v["lineage"]["settings"] == {"opset": 17, "quantize": True}


def test_torch_int8_is_smaller_within_one_point(compared):
    rows, _ = compared
    # linear weights are 4x smaller; the float32 embeddings are a third of MiniLM
    assert rows["int8"]["size_bytes"] < 0.7 * rows["parent"]["size_bytes"]
    assert rows["int8"]["accuracy"] >= rows["parent"]["accuracy"] - 0.01


def test_ffn_pruning_with_recovery_is_smaller_within_two_points(compared):
    rows, live = compared
    assert rows["pruned"]["parameters"] < rows["parent"]["parameters"]
    assert rows["pruned"]["accuracy"] >= rows["parent"]["accuracy"] - 0.02
    v = live.client.models.version("topics-clf-pruned")
    assert v["lineage"]["dataset"]["name"] == "topics"


def test_a_three_layer_student_keeps_95_percent_of_the_accuracy(compared):
    rows, live = compared
    assert rows["student"]["accuracy"] >= 0.95 * rows["parent"]["accuracy"]
    assert rows["student"]["parameters"] < rows["parent"]["parameters"]
    config = live.client.models.version("topics-clf-student")
    assert config["lineage"]["settings"]["student_layers"] == 3


def test_the_fine_tuned_classifier_generalises_and_its_evaluation_is_kept(compared):
    """Fine-tuned through llmos (the fixture), the real MiniLM classifies rows written with
    other templates and words; the evaluation is stored on its version with its lineage."""
    _, live = compared
    c = live.client
    with pytest.raises(APIError) as refused:  # a column the dataset lacks: refused at once
        c.train.evaluate("topics-clf", "held-out", "test", {"label_field": "category"})
    assert refused.value.status == 422
    assert refused.value.message.startswith("dataset held-out:1 has no 'category' column")
    evaluation = c.train.evaluate("topics-clf", "held-out", "test")
    assert live.wait_job(evaluation["id"], timeout=300)["state"] == "SUCCEEDED"
    v = c.models.version("topics-clf", 1)
    report = v["metrics"]["eval:held-out:1:test"]
    # measured: 0.95-0.975 on rows written with other templates and words (chance 0.25)
    assert report["accuracy"] >= 0.8
    assert report["confusion_matrix"]["labels"] == ["computing", "cooking", "sports",
                                                    "weather"]
    assert v["lineage"]["base"] == {"model": "minilm", "version": 1}
    assert v["lineage"]["dataset"]["name"] == "topics"
    assert "accuracy" in c.models.card("topics-clf")
