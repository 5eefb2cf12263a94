"""Training benchmark: throughput of fine-tuning through llmos against the same training
as a plain script, measured in the same run.

    .venv/bin/python bench/train.py [--steps 120] [--rounds 5] [--cpus 2]

The workload: all-MiniLM-L6-v2 (the real 22M-parameter BERT) fine-tuned as a 4-topic
sequence classifier, batch 16, max length 64, AdamW, fp32 on the CPU, the same rows in the
same order. Two ways, alternated ``--rounds`` times:

1. **plain**: a hand-written PyTorch + transformers loop in a fresh process (no llmos at
   all), pinned to the same cores with the same thread count;
2. **llmos**: a ``train.finetune`` job through a live `llmos up` (fetching the model and the
   dataset version as artifacts, checkpoints on, live metrics, the sandbox).

Throughput is samples per second over the training steps after the first window (model
loading, tokenising and the first steps' allocations are excluded on both sides, the same
way); the end-to-end wall time of the llmos job (queueing, start, fetch, training, export,
registration) is printed too. Target (from the models issue): llmos overhead at most 3%.
Never fails on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from live import LiveDaemon  # noqa: E402
from offline_models import minilm_dir  # noqa: E402

TOPICS = {
    "sports": ["the striker scored", "the coach shouted", "the match ended", "the team won",
               "the referee blew the whistle", "the goalkeeper saved a penalty"],
    "cooking": ["the chef stirred the sauce", "the bread rose", "the soup simmered",
                "the baker kneaded dough", "the cake came out of the oven", "garlic sizzled"],
    "weather": ["heavy rain fell", "the storm arrived", "a cold front moved in",
                "fog covered the valley", "the wind picked up", "snow began to fall"],
    "computing": ["the server crashed", "the compiler failed", "the database was slow",
                  "the program ran out of memory", "the network went down", "a bug appeared"],
}
PLACES = ["this morning", "last night", "in the city", "near the coast", "after lunch",
          "before dawn", "on the weekend", "at noon", "during the week", "without warning"]
RECIPE = {"task": "sequence_classification", "text_field": "text", "label_field": "label",
          "max_length": 64, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 5e-5},
          "schedule": {"name": "constant"}, "seed": 1, "log_every": 5, "max_grad_norm": None}


def rows(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        label = list(TOPICS)[i % 4]
        text = f"{rng.choice(TOPICS[label]).capitalize()} {rng.choice(PLACES)}, said a witness."
        out.append({"id": str(i), "text": text, "label": label})
    return out


PLAIN = r'''
import json, os, random, sys, time
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
rows, model_dir, steps, batch, log_every = json.loads(sys.argv[1])
torch.manual_seed(1)
labels = sorted({r["label"] for r in rows})
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(
    model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)))
enc = tok([r["text"] for r in rows], truncation=True, max_length=64)
y = [labels.index(r["label"]) for r in rows]
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
model.train()
order, epoch, pos, windows, t = [], 0, 0, [], None
for step in range(1, steps + 1):
    if pos + batch > len(order):
        g = torch.Generator().manual_seed(epoch); epoch += 1; pos = 0
        order = torch.randperm(len(rows), generator=g).tolist()
    idx = order[pos:pos + batch]; pos += batch
    feats = tok.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                     "attention_mask": [enc["attention_mask"][i] for i in idx]},
                    return_tensors="pt")
    out = model(**feats, labels=torch.tensor([y[i] for i in idx]))
    out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if step % log_every == 0:
        loss = out.loss.item()
        now = time.perf_counter()
        if t is not None:
            windows.append(log_every * batch / (now - t))
        t = now
print(json.dumps({"samples_per_second": windows}))
'''


def plain(model_dir: Path, data: list[dict], steps: int, cpus: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus),
           "MALLOC_ARENA_MAX": "2"}
    args = json.dumps([data, str(model_dir), steps, RECIPE["batch_size"], RECIPE["log_every"]])
    out = subprocess.run([sys.executable, "-c", PLAIN, args], env=env, capture_output=True,
                         text=True, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, range(cpus)))
    windows = json.loads(out.stdout.strip().splitlines()[-1])["samples_per_second"]
    return statistics.mean(windows)


def settled(live: LiveDaemon, job_id: int) -> dict:
    """The job once it ended, asking once a second (a tighter poll would take CPU from the
    very training it measures)."""
    while (job := live.client.jobs.get(job_id))["state"] not in ("SUCCEEDED", "FAILED",
                                                                   "CANCELLED"):
        time.sleep(1.0)
    return job


def through_llmos(live: LiveDaemon, steps: int, cpus: int, n: int) -> tuple[float, float]:
    c = live.client
    recipe = {**RECIPE, "max_steps": steps}
    start = time.time()
    job = c.train.finetune(recipe, "minilm", "bench", f"bench-{n}", cpu=cpus, memory_mb=4096,
                           validation_split=None, test_split=None)
    done = settled(live, job["id"])
    if done["state"] != "SUCCEEDED":
        raise SystemExit(f"the llmos job failed: {done['reason']}")
    wall = datetime.fromisoformat(done["ended_at"]).timestamp() - start
    windows = [m["value"] for m in c.jobs.metrics(job["id"], name="samples_per_second")]
    # The job reports every window; the first holds the same warm-up the plain loop skips.
    return statistics.mean(windows[1:]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    data = rows(640)
    with tempfile.TemporaryDirectory(prefix="llmos-bench-train-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        src = Path(tmp) / "bench.jsonl"
        src.write_text("\n".join(json.dumps(r) for r in data))
        live = LiveDaemon(home, cpus=args.cpus).start()
        try:
            jobs = [live.client.models.import_("minilm", minilm_dir()),
                    live.client.datasets.ingest("bench", [src], {
                        "label_field": "label", "split": {"train": 1.0}})]
            for j in jobs:
                if live.wait_job(j["id"], timeout=600)["state"] != "SUCCEEDED":
                    raise SystemExit(f"setup job {j['id']} failed")
            plain_rates, llmos_rates, walls = [], [], []
            for n in range(args.rounds):
                plain_rates.append(plain(minilm_dir(), data, args.steps, args.cpus))
                rate, wall = through_llmos(live, args.steps, args.cpus, n)
                llmos_rates.append(rate)
                walls.append(wall)
                print(f"round {n + 1}: plain {plain_rates[-1]:.2f} samples/s, llmos "
                      f"{rate:.2f} samples/s (job end to end {wall:.1f} s)", flush=True)
        finally:
            live.stop()
    p, m = statistics.median(plain_rates), statistics.median(llmos_rates)
    print(f"\nMiniLM fine-tuning, {args.steps} steps of batch {RECIPE['batch_size']}, "
          f"{args.cpus} cpu, median of {args.rounds} rounds")
    print(f"  plain PyTorch loop : {p:8.2f} samples/s")
    print(f"  through llmos      : {m:8.2f} samples/s   (job end to end: "
          f"{statistics.median(walls):.1f} s)")
    print(f"  llmos / plain      : {m / p:8.3f}   overhead {100 * (1 - m / p):+.1f}% "
          f"(target: at most 3%)")


if __name__ == "__main__":
    main()
