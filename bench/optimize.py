"""Optimization benchmark: what compression buys on this CPU, and what ASHA pruning saves in
a tuning study, each against a baseline measured in the same run.

    .venv/bin/python bench/optimize.py [--budget 5] [--rounds 1] [--skip-tune]
                                       [--skip-compress]

On one live `llmos up` (tests/live.py, the daemon's default settings, 2 cpus):

1. **Compression** (the flow of tests/optimize/test_minilm.py, through the SDK): the real
   all-MiniLM-L6-v2 fine-tuned into a 4-topic classifier (tests/topic_corpus.py rows, the
   test's recipe), then compressed by llmos's own jobs with the shipped recipes:
   ``examples/optimize/quantize-int8.yaml`` (torch dynamic int8), ``prune-ffn.yaml`` (40 %
   of the feed-forward channels removed + a recovery fine-tune), ``distill-3-layers.yaml``
   (a 3-layer student) and ``onnx-int8.yaml`` (ONNX edge bundle, onnxruntime int8). Then
   one comparison (``client.optimize.compare``: one measuring job per version, one after
   the other, on 200 held-out rows written with other templates and words) prints the
   side-by-side table: size on disk, parameters, latency p50/p99 at batch 1 and 32
   (``--budget`` seconds of timing per batch size), samples/s, accuracy and macro F1, each
   with its ratio to the parent (the baseline). With ``--rounds`` > 1 the comparison is
   repeated, the order rotated each round, and each figure is the median over rounds.
   Targets (issue 16): int8 ONNX >= 3x smaller and faster at batch 1, accuracy within 1
   point; ffn pruning + recovery within 2 points and measurably faster; the 3-layer student
   keeps >= 95 % of the accuracy.
2. **Tuning**: the same 12-trial study (tests/optimize/test_tune.py's ``curve`` study of
   tests/optimize/tune_programs.py: a noisy learning curve, ``--steps`` steps ``--delay``
   seconds apart, 3 trials in parallel, TPE with a fixed seed) with the ASHA pruner and
   without pruning, alternated ``--rounds`` times; medians of the wall time (start to the
   study's end), of the trial time spent (sum over trials) and of the best value.
   Target: ASHA finishes sooner, its best value close to the unpruned study's.

Never fails on timing; exits non-zero only when a job or a study does not succeed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "optimize"))

from live import LiveDaemon, wait_for  # noqa: E402
from offline_models import minilm_dir  # noqa: E402
from rich.console import Console  # noqa: E402
from test_minilm import FINETUNE  # noqa: E402
from test_tune import curve  # noqa: E402
from topic_corpus import _rows, train_rows  # noqa: E402

from llmos.cli.optimize import comparison_table, not_measured  # noqa: E402

EXAMPLES = ROOT / "examples" / "optimize"
# version suffix -> (shipped recipe, dataset it trains on)
COMPRESS = {"int8": ("quantize-int8.yaml", None), "pruned": ("prune-ffn.yaml", "topics"),
            "student": ("distill-3-layers.yaml", "topics"),
            "onnx-int8": ("onnx-int8.yaml", None)}
ASHA = {"name": "asha", "min_resource": 1, "reduction_factor": 3}
out = Console(width=160, highlight=False)


def seconds(job: dict) -> float:
    """A job's run time: started to ended."""
    return (datetime.fromisoformat(job["ended_at"])
            - datetime.fromisoformat(job["started_at"])).total_seconds()


def succeeded(live: LiveDaemon, job: dict, what: str, timeout: float = 1800) -> dict:
    done = live.wait_job(job["id"], timeout=timeout)
    if done["state"] != "SUCCEEDED":
        raise SystemExit(f"{what} (job {job['id']}) {done['state']}: {done.get('reason')}")
    return done


# ---------------------------------------------------------------- compression


def setup(live: LiveDaemon, tmp: Path) -> float:
    """The model, the training and held-out datasets, and the fine-tuned parent
    ``topics-clf``; returns the fine-tune job's run time."""
    c = live.client
    (tmp / "topics.jsonl").write_text("\n".join(json.dumps(r) for r in train_rows()))
    (tmp / "held.jsonl").write_text("\n".join(json.dumps(r) for r in _rows("held", 50, 3)))
    jobs = [c.models.import_("minilm", minilm_dir()),
            c.datasets.ingest("topics", [tmp / "topics.jsonl"], {
                "label_field": "label", "split": {"train": 0.85, "validation": 0.15,
                                                  "seed": 1}}),
            c.datasets.ingest("held-out", [tmp / "held.jsonl"], {
                "label_field": "label", "split": {"train": 0.0, "test": 1.0}})]
    for job in jobs:
        succeeded(live, job, f"setup {job['program']}", timeout=600)
    trained = c.train.finetune(FINETUNE, "minilm", "topics", "topics-clf", cpu=2,
                               test_split=None)
    return seconds(succeeded(live, trained, "the fine-tune"))


def compress_all(live: LiveDaemon) -> dict[str, float]:
    """The four compressed versions (two jobs at a time, one cpu each); {suffix: run time
    of its job}."""
    c = live.client
    jobs = {name: c.optimize.compress(EXAMPLES / recipe, "topics-clf", f"topics-clf-{name}",
                                      dataset=dataset, cpu=1, memory_mb=3072, test_split=None)
            for name, (recipe, dataset) in COMPRESS.items()}
    return {name: seconds(succeeded(live, job, f"compressing {name}"))
            for name, job in jobs.items()}


def report_compression(rows: dict[str, dict], budget: float, rounds: int) -> None:
    """The side-by-side table, then each target with its figure."""
    out.print(comparison_table(list(rows.values()),
                               f"held-out (test), 200 rows, {budget:g} s of timing per batch "
                               f"size, median of {rounds}"))
    for line in not_measured(list(rows.values())):
        out.print(f"not measured: {line}")
    p = rows["parent"]
    if p["state"] != "SUCCEEDED":
        return

    def ratio(name: str, key: str) -> str:
        r = rows[name]
        if r["state"] != "SUCCEEDED" or not r.get(key) or not p.get(key):
            return "-"
        return f"{r[key] / p[key]:.2f}x"

    def points(name: str) -> str:
        r = rows[name]
        if r["state"] != "SUCCEEDED":
            return "-"
        return f"{100 * (r['accuracy'] - p['accuracy']):+.1f} points"

    out.print("\ntargets (issue 16), against the parent measured in the same run:")
    out.print(f"  int8 ONNX : size {ratio('onnx-int8', 'size_bytes')} (target <= 0.33x), "
              f"batch-1 p50 {ratio('onnx-int8', 'latency_b1_p50_ms')} (target < 1x), "
              f"accuracy {points('onnx-int8')} (target >= -1)")
    out.print(f"  torch int8: size {ratio('int8', 'size_bytes')}, batch-1 p50 "
              f"{ratio('int8', 'latency_b1_p50_ms')}, accuracy {points('int8')} "
              f"(target >= -1)")
    out.print(f"  ffn -40 % : parameters {ratio('pruned', 'parameters')}, batch-1 p50 "
              f"{ratio('pruned', 'latency_b1_p50_ms')}, batch-32 p50 "
              f"{ratio('pruned', 'latency_b32_p50_ms')} (target < 1x), accuracy "
              f"{points('pruned')} (target >= -2)")
    out.print(f"  3 layers  : accuracy kept {ratio('student', 'accuracy')} (target >= 0.95x), "
              f"batch-1 p50 {ratio('student', 'latency_b1_p50_ms')}, batch-32 p50 "
              f"{ratio('student', 'latency_b32_p50_ms')}")


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """One row per version: the median over rounds of each figure (a version that failed
    in any round keeps that round's failed row)."""
    rows = []
    for measured in zip(*rounds, strict=True):
        failed = [r for r in measured if r["state"] != "SUCCEEDED"]
        if failed:
            rows.append(failed[0])
            continue
        row = dict(measured[0])
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "job":
                row[key] = statistics.median(r[key] for r in measured)
        rows.append(row)
    return rows


def compare(live: LiveDaemon, names: list[str], budget: float, rounds: int) -> list[dict]:
    """``rounds`` comparisons, each measuring every version one after the other, the order
    rotated each round (so no version is always measured first); per-figure medians, in
    ``names`` order."""
    c = live.client
    by_round = []
    for n in range(rounds):
        order = names[n % len(names):] + names[:n % len(names)]
        t0 = time.monotonic()
        rows = c.optimize.wait_comparison(c.optimize.compare(order, "held-out", cpu=2,
                                                             budget_s=budget), timeout=3600)
        out.print(f"comparison {n + 1}: {len(rows)} versions in {time.monotonic() - t0:.0f} s "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        found = {r["model"].rsplit(":", 1)[0]: r for r in rows}
        by_round.append([found[name] for name in names])
    return median_rows(by_round)


def compression(live: LiveDaemon, tmp: Path, budget: float, rounds: int) -> bool:
    t0 = time.monotonic()
    tuned = setup(live, tmp)
    out.print(f"fine-tuned topics-clf in {tuned:.1f} s")
    made = compress_all(live)
    out.print("compressed: " + ", ".join(f"{k} {v:.1f} s" for k, v in made.items()))
    rows = compare(live, ["topics-clf", *(f"topics-clf-{n}" for n in COMPRESS)], budget, rounds)
    out.print(f"(the whole compression part: {time.monotonic() - t0:.0f} s)\n")
    report_compression(dict(zip(["parent", *COMPRESS], rows, strict=True)), budget, rounds)
    return all(r["state"] == "SUCCEEDED" for r in rows)


# ---------------------------------------------------------------- tuning


def study(live: LiveDaemon, name: str, pruner, steps: int, delay: float) -> dict:
    """One study to its end: wall time, trial time spent, counts and best value."""
    c = live.client
    t0 = time.monotonic()
    c.tune.start(curve(name, pruner=pruner, params={"steps": steps, "delay": delay}))
    wait_for(lambda: c.tune.get(name, importances=False)["state"] != "RUNNING",
             timeout=1800, interval=0.2, what=f"study {name} to end")
    wall = time.monotonic() - t0
    s = c.tune.get(name, importances=False)
    if s["state"] != "SUCCEEDED":
        raise SystemExit(f"study {name} {s['state']}: {s.get('reason')}")
    spent = sum((datetime.fromisoformat(t["ended_at"])
                 - datetime.fromisoformat(t["started_at"])).total_seconds()
                for t in s["trials"] if t["started_at"] and t["ended_at"])
    steps_run = sum(t["last_step"] or 0 for t in s["trials"])
    return {"wall": wall, "spent": spent, "steps": steps_run, "done": s["done"],
            "pruned": s["pruned"], "best": s["best"]["value"]}


def tuning(live: LiveDaemon, rounds: int, steps: int, delay: float) -> None:
    runs: dict[str, list[dict]] = {"asha": [], "none": []}
    for n in range(rounds):
        order = ["asha", "none"] if n % 2 == 0 else ["none", "asha"]
        for kind in order:
            r = study(live, f"bench-{kind}-{n}", ASHA if kind == "asha" else "none", steps,
                      delay)
            runs[kind].append(r)
            out.print(f"round {n + 1} {kind:>4}: {r['wall']:6.1f} s wall, {r['spent']:6.1f} s "
                      f"of trials, {r['steps']:3d} steps, {r['done']} done {r['pruned']} "
                      f"pruned, best {r['best']:.4f}")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    out.print(f"\ntuning study: 12 trials of {steps} steps x {delay:g} s, 3 in parallel, TPE "
              f"(seed 0); median of {rounds} round(s)")
    out.print(f"  {'':<12}{'wall s':>8}{'trial s':>9}{'steps':>7}{'pruned':>8}{'best':>9}")
    for kind, label in (("none", "no pruning"), ("asha", "ASHA")):
        out.print(f"  {label:<12}{med(kind, 'wall'):8.1f}{med(kind, 'spent'):9.1f}"
                  f"{med(kind, 'steps'):7.0f}{med(kind, 'pruned'):8.0f}"
                  f"{med(kind, 'best'):9.4f}")
    out.print(f"  ASHA / none : wall {med('asha', 'wall') / med('none', 'wall'):.2f}x, trial "
              f"time {med('asha', 'spent') / med('none', 'spent'):.2f}x, best value "
              f"{med('asha', 'best') - med('none', 'best'):+.4f} (lower is better; target: "
              f"faster, best value close)")


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--budget", type=float, default=5.0,
                    help="seconds of timing per batch size in each measuring job")
    ap.add_argument("--rounds", type=int, default=1,
                    help="comparisons and tuning rounds (medians are printed)")
    ap.add_argument("--steps", type=int, default=30, help="steps of each tuning trial")
    ap.add_argument("--delay", type=float, default=0.2, help="seconds between trial steps")
    ap.add_argument("--skip-tune", action="store_true")
    ap.add_argument("--skip-compress", action="store_true")
    args = ap.parse_args()
    started, ok = time.monotonic(), True
    with tempfile.TemporaryDirectory(prefix="llmos-bench-optimize-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        live = LiveDaemon(home, cpus=2).start()
        try:
            if not args.skip_compress:
                ok = compression(live, Path(tmp), args.budget, args.rounds)
                out.print()
            if not args.skip_tune:
                tuning(live, args.rounds, args.steps, args.delay)
        finally:
            live.stop()
    out.print(f"\nbenchmark wall time {time.monotonic() - started:.0f} s")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
