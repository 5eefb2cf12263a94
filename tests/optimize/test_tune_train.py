"""A tuning study whose trials fine-tune a tiny BERT classifier (train.finetune jobs through
the training service): each trial registers a version of the output model, and the best
one gets the alias ``best`` with the study's result stored on it."""

from __future__ import annotations

import json
import random

import tiny_models
from live import LiveDaemon, wait_for
from offline_models import minilm_dir

WORDS = {"yes": ["great", "lovely", "superb", "fine", "happy"],
         "no": ["awful", "broken", "sad", "poor", "bad"]}


def rows(n: int) -> list[dict]:
    rng = random.Random(3)
    out = []
    for i in range(n):
        label = "yes" if i % 2 else "no"
        out.append({"text": f"a {rng.choice(WORDS[label])} day number {i}", "label": label})
    return out


def test_a_fine_tuning_study_registers_every_trial_and_aliases_the_best(tmp_path):
    (tmp_path / "home").mkdir()
    live = LiveDaemon(tmp_path / "home", env={"LLMOS_TICK_S": "0.05"}).start()
    try:
        c = live.client
        tiny_models.bert(tmp_path / "cls", minilm_dir(), hidden=16, layers=1,
                         head="sequence", labels=["no", "yes"])
        (tmp_path / "toy.jsonl").write_text("\n".join(json.dumps(r) for r in rows(64)))
        jobs = [c.models.import_("tiny-cls", tmp_path / "cls", memory_mb=2048),
                c.datasets.ingest("toy", [tmp_path / "toy.jsonl"], {
                    "label_field": "label",
                    "split": {"train": 0.75, "validation": 0.25, "seed": 1}})]
        for job in jobs:
            assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED", job
        c.tune.start({
            "name": "lr", "model": "tiny-cls", "dataset": "toy", "output": "toy-tuned",
            "train": {"task": "sequence_classification", "max_length": 16, "batch_size": 8,
                      "epochs": 1, "eval_every": 3, "log_every": 1},
            "space": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2,
                                       "log": True}},
            "objective": {"metric": "eval_accuracy", "direction": "maximize"},
            "trials": 2, "parallel": 2, "sampler": {"name": "random", "seed": 1},
            "pruner": "none", "resources": {"cpu": 1, "memory_mb": 2048}})
        study = wait_for(lambda: (s := c.tune.get("lr"))["state"] != "RUNNING" and s,
                         timeout=300, interval=0.5, what="the study to end")
        assert (study["state"], study["reason"]) == ("SUCCEEDED", None), study
        assert study["done"] == 2
        versions = sorted(t["version"] for t in study["trials"])
        assert versions == [1, 2]
        for t in study["trials"]:  # each trial's value is what its job reported last
            job = c.jobs.get(t["job"])
            assert job["program"] == "train.finetune"
            lr = job["params"]["recipe"]["optimizer"]["lr"]
            assert lr == t["params"]["optimizer.lr"]
        best = study["best"]
        assert best["model"] == "toy-tuned" and best["version"] in versions
        marked = c.models.version("toy-tuned", "best")
        assert marked["version"] == best["version"]
        assert marked["metrics"]["tune:lr"]["params"] == best["params"]
        assert marked["lineage"]["training_params"]["optimizer"]["lr"] == \
            best["params"]["optimizer.lr"]
    finally:
        live.stop()
        live.client.close()
