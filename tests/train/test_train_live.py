"""Fine-tuning as kernel jobs through a live daemon: a checkpointable training job is
preempted by a higher-priority job, resumes, and ends with the same loss as an
uninterrupted run; failures end the job with their reason and register nothing. (The real
all-MiniLM-L6-v2 fine-tuned through a live daemon, its held-out accuracy stored on its
version: tests/optimize/test_minilm.py, on the classifier it compresses.)"""

from __future__ import annotations

import json
import os

import pytest
import tiny_models
from live import LiveDaemon, wait_for
from llmos.sdk import APIError
from offline_models import minilm_dir
from topic_corpus import train_rows

RECIPE = {"task": "sequence_classification", "text_field": "text", "label_field": "label",
          "max_length": 32, "batch_size": 16, "max_steps": 150, "log_every": 1,
          "optimizer": {"name": "adamw", "lr": 1e-3}, "seed": 7}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A daemon with a tiny BERT, a tiny Llama, a NaN BERT and a topics dataset."""
    root = tmp_path_factory.mktemp("train-live")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home").start()
    c = live.client
    tiny_models.bert(root / "bert", minilm_dir(), hidden=128, layers=2, dropout=0.1)
    tiny_models.llama(root / "llama", tiny_models.smollm2_tokenizer(root / "smol-tok"))
    nan_bert(tiny_models.bert(root / "nan", minilm_dir()))
    jobs = [c.models.import_(name, root / folder, memory_mb=3072)
            for name, folder in (("tiny-bert", "bert"), ("tiny-llama", "llama"),
                                 ("nan-bert", "nan"))]
    (root / "topics.jsonl").write_text("\n".join(json.dumps(r) for r in train_rows()))
    jobs.append(c.datasets.ingest("topics", [root / "topics.jsonl"], {
        "label_field": "label", "split": {"train": 0.8, "validation": 0.2, "seed": 1}}))
    for job in jobs:
        assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED", job
    yield live
    live.stop()


def nan_bert(folder) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights["embeddings.word_embeddings.weight"][:] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def train(live: LiveDaemon, output: str, recipe: dict | None = None, **kw) -> dict:
    return live.client.train.finetune(recipe or RECIPE, kw.pop("model", "tiny-bert"), "topics",
                                      output, test_split=None, **kw)


def test_a_preempted_training_job_resumes_and_ends_with_the_same_loss(lab):
    c = lab.client
    whole = train(lab, "uninterrupted", cpu=2, memory_mb=3072)
    assert lab.wait_job(whole["id"], timeout=600)["state"] == "SUCCEEDED"
    reference = c.models.version("uninterrupted")["metrics"]["train_loss"]

    low = train(lab, "preempted", cpu=2, memory_mb=3072, priority="low")
    wait_for(lambda: (p := c.jobs.get(low["id"])["progress"]) and p["unit"] == "steps"
             and 10 <= p["done"] < 100, timeout=300, interval=0.02,
             what="the training job to be part-way through")
    high = c.jobs.submit("noop", cpu=2, memory_mb=512, priority="high")
    assert lab.wait_job(high["id"], timeout=300)["state"] == "SUCCEEDED"
    done = lab.wait_job(low["id"], timeout=600)
    assert done["state"] == "SUCCEEDED" and done["attempt"] == 2
    states = [t["to_state"] for t in done["transitions"]]
    assert states == ["PENDING", "SCHEDULED", "RUNNING", "PREEMPTED", "PENDING", "SCHEDULED",
                      "RUNNING", "SUCCEEDED"]
    preempted = next(t for t in done["transitions"] if t["to_state"] == "PREEMPTED")
    assert preempted["reason"] == f"preempted by higher-priority job {high['id']}"
    high_started = c.jobs.get(high["id"])["started_at"]
    assert preempted["at"] <= high_started
    resumed = c.models.version("preempted")
    assert resumed["metrics"]["train_loss"] == pytest.approx(reference, rel=1e-5)
    assert resumed["lineage"]["steps"] == 150
    losses = [m for m in c.jobs.metrics(low["id"], name="loss")]
    assert {m["step"] for m in losses} == set(range(1, 151))  # every step reported once
    rates = c.jobs.metrics(low["id"], name="samples_per_second")
    assert rates and all(m["value"] > 0 for m in rates)


def test_a_recipe_column_missing_from_the_dataset_is_refused_at_submit(lab):
    c = lab.client
    for recipe in (dict(RECIPE, label_field="category"), dict(RECIPE, text_field="body")):
        with pytest.raises(APIError) as refused:
            train(lab, "never-made", recipe, cpu=1, memory_mb=3072)
        column = recipe["label_field"] if recipe["label_field"] != "label" else "body"
        field = "label_field" if column == "category" else "text_field"
        assert refused.value.status == 422
        assert refused.value.message.startswith(
            f"dataset topics:1 has no {column!r} column (the recipe's {field}); its columns: ")
        assert "label" in refused.value.message and "text" in refused.value.message
    assert "never-made" not in {m["name"] for m in c.models.list()}
    assert not [j for j in c.jobs.list(limit=1000)["jobs"] if j["name"] == "train never-made"]


@pytest.mark.parametrize("case,reason", [
    ("tokenizer of another model", "ModelError: "),
    ("NaN loss", "TrainingDiverged: loss became nan at step 1"),
    ("missing weights", "missing"),
])
def test_a_failing_training_job_says_why_and_registers_nothing(lab, case, reason):
    c = lab.client
    kw: dict = {"cpu": 1, "memory_mb": 3072}
    recipe = dict(RECIPE, max_steps=5)
    if case == "tokenizer of another model":
        kw["tokenizer"] = "tiny-llama"
    elif case == "NaN loss":
        kw["model"] = "nan-bert"
    else:
        weights = next(f for f in c.models.version("tiny-llama")["files"]
                       if f["path"] == "model.safetensors")
        blob = lab.home / "artifacts" / "blobs" / weights["sha256"][:2] / weights["sha256"][2:]
        os.chmod(blob, 0o600)
        blob.unlink()
        kw["model"] = "tiny-llama"
        recipe = {"task": "causal_lm", "text_field": "text", "max_steps": 2}
    out = "failed-" + case.lower().replace(" ", "-")
    job = train(lab, out, recipe, **kw)
    ended = lab.wait_job(job["id"], timeout=300)
    assert ended["state"] == "FAILED" and reason in ended["reason"], ended["reason"]
    if case == "tokenizer of another model":
        assert "tokenizer" in ended["reason"]
    assert out not in {m["name"] for m in c.models.list()}
