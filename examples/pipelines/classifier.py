"""examples/pipelines/classifier.yaml, written in Python with the SDK's builder: the same
pipeline (``pipeline().to_dict()`` equals the YAML file's content; a test checks it).

    python examples/pipelines/classifier.py /data/topics.jsonl   # runs it, like
    llmos pipeline run examples/pipelines/classifier.yaml --param corpus=/data/topics.jsonl
"""

from __future__ import annotations

import sys

from llmos.sdk.pipeline import Pipeline, param

FIELDS = {"text_field": "text", "label_field": "label", "max_length": 32}


def pipeline() -> Pipeline:
    p = Pipeline("text-classifier", params={
        "corpus": param(str, required=True, description="Labelled JSON lines (text, label)."),
        "dataset": param(str, "labelled-text"),
        "base": param(str, "minilm", description="The base model: NAME, NAME:V or NAME@ALIAS."),
        "model": param(str, "text-classifier", description="What the result is registered as."),
        "learning_rate": param(float, 2.0e-4),
        "epochs": param(int, 2),
        "margin": param(float, 0.0, description="How much better a candidate must be."),
        "deployment": param(str, "text-classifier"),
        "canary_weight": param(int, 50),
        "canary_window_s": param(float, 60.0),
        "canary_min_requests": param(int, 20),
    })
    ingest = p.step("ingest", "data.ingest", params={
        "dataset": p.params.dataset,
        "sources": [p.params.corpus],
        "recipe": {"text_field": "text", "label_field": "label",
                   "steps": ["fix_unicode", "normalize", "collapse_whitespace", "exact_dedup"],
                   "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 13}}})
    train = p.step("train", "train.finetune",
                   inputs={"model": p.params.base, "dataset": ingest.out("dataset")},
                   params={"output": p.params.model,
                           "recipe": {"task": "sequence_classification", "text_field": "text",
                                      "label_field": "label", "max_length": 32,
                                      "method": "full",
                                      "optimizer": {"name": "adamw",
                                                    "lr": p.params.learning_rate,
                                                    "weight_decay": 0.01},
                                      "batch_size": 16, "epochs": p.params.epochs,
                                      "seed": 13, "log_every": 5}},
                   resources={"cpu": 1, "memory_mb": 4096})
    evaluate = p.step("evaluate", "train.evaluate",
                      inputs={"model": train.out("model"), "dataset": ingest.out("dataset")},
                      params={"split": "test", "fields": FIELDS},
                      resources={"cpu": 1, "memory_mb": 3072})
    promote = p.step("promote", "promote", after=[evaluate],
                     inputs={"model": train.out("model"), "dataset": ingest.out("dataset")},
                     params={"alias": "champion", "metric": "accuracy",
                             "margin": p.params.margin, "fields": FIELDS,
                             "resources": {"cpu": 1, "memory_mb": 3072}})
    p.step("rollout", "rollout", when=promote.out("promoted"),
           inputs={"model": train.out("model")},
           params={"deployment": p.params.deployment, "weight": p.params.canary_weight,
                   "window_s": p.params.canary_window_s,
                   "min_requests": p.params.canary_min_requests,
                   "deploy": {"cpu": 1.0, "memory_mb": 2048}})
    return p


if __name__ == "__main__":
    from llmos.sdk import Client

    with Client() as llmos:
        run = llmos.pipelines.run(pipeline(), params={"corpus": sys.argv[1]})
        print(f"pipeline run {run['id']}: {run['state']}")
