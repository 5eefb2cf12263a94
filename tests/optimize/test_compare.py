"""`llmos models compare` as a user runs it against a live daemon: two versions of a tiny
classifier measured one after the other on the same split, printed side by side with
their sizes, latencies and accuracy, and stored on each version; bad requests refused
before any job, naming what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tiny_models
from live import LiveDaemon

from llmos.sdk import APIError

from .compare_lab import (causal_config, classifiers, gguf_folder, labeled_dataset,
                          register_folder)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home").start()
    c = live.client
    classifiers(live, c, root, "clf")
    labeled_dataset(live, c, "reviews")
    labeled_dataset(live, c, "trainonly", splits=("train",))
    causal_config(live, c, "chat")
    causal_config(live, c, "broken", "LlamaForSequenceClassification",
                  "sequence_classification")  # no weights: its measuring job fails
    yield live
    live.stop()
    live.client.close()


def llmos(live: LiveDaemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args],
                          env=live.cli_env(), capture_output=True, text=True, timeout=300)


def test_two_versions_compared_side_by_side_and_stored_on_each(lab):
    done = llmos(lab, "models", "compare", "clf:1", "clf:2", "--dataset", "reviews:1",
                 "--budget", "0.2", "--cpu", "1", "--memory", "2048")
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout
    assert "Comparison on reviews:1 (test)" in table
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("Comparison on"))
    header = " ".join(lines[at + 1].split() + lines[at + 2].split())  # titles on two lines
    for column in ("version", "format", "size", "params", "b1 p50", "b1 p99", "b32 p50",
                   "b32 p99", "samples", "accuracy", "F1", "MB", "ms", "/s", "macro"):
        assert column in header
    first = next(line for line in lines if line.strip().startswith("clf:1"))
    second = next(line for line in lines if line.strip().startswith("clf:2"))
    assert "safetensors" in first and "safetensors" in second
    # the ratio line under the second version: the bigger model, more parameters
    ratios = lines[lines.index(second) + 1].split()
    assert len(ratios) == 9 and all(r.endswith("x") for r in ratios)
    assert float(ratios[0][:-1]) > 1 and float(ratios[1][:-1]) > 1

    c = lab.client
    figures = {}
    for v in (1, 2):
        stored = c.models.version("clf", v)["metrics"]["compare:reviews:1:test"]
        assert stored["format"] == "safetensors" and stored["samples"] == 40
        assert 0 <= stored["accuracy"] <= 1 and 0 <= stored["f1_macro"] <= 1
        assert stored["latency_b1_reps"] >= 1 and stored["throughput_sps"] > 0
        assert stored["latency_b1_p99_ms"] >= stored["latency_b1_p50_ms"] > 0
        assert stored["parameters"] == c.models.version("clf", v)["parameters"]
        figures[v] = stored
    assert figures[2]["size_bytes"] > figures[1]["size_bytes"]
    assert f"{figures[1]['accuracy']:.4f}" in first
    # one after the other: the second started only once the first had ended
    jobs = [j for j in c.jobs.list(limit=10)["jobs"] if j["program"] == "optimize.measure"]
    one, two = sorted(jobs, key=lambda j: j["id"])
    assert two["depends_on"] == [one["id"]]
    assert two["started_at"] >= one["ended_at"]


def test_a_version_that_cannot_be_measured_is_named_with_its_reason(lab):
    done = llmos(lab, "models", "compare", "broken", "clf:1", "--dataset", "reviews",
                 "--budget", "0.1", "--cpu", "0.5", "--memory", "2048")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("not measured")]
    assert len(lines) == 2 and "Traceback" not in done.stdout + done.stderr
    assert lines[0].startswith("not measured: broken:1: job ") and " FAILED: " in lines[0]
    assert "tokenizer" in lines[0] or "safetensors" in lines[0]
    first_job = lines[0].split("job ")[1].split()[0]
    assert lines[1].startswith("not measured: clf:1: job ")
    assert lines[1].endswith(f"dependency job {first_job} failed; not started")
    assert "Comparison on" not in done.stdout


@pytest.mark.slow
def test_causal_lms_compare_by_perplexity_a_gguf_file_included(lab, tmp_path):
    c = lab.client
    llama = tiny_models.llama(tmp_path / "llama", tiny_models.smollm2_tokenizer(tmp_path / "t"))
    register_folder(lab, c, llama, "tiny-llama")
    register_folder(lab, c, gguf_folder(tmp_path / "gguf"), "smol-gguf")
    done = llmos(lab, "models", "compare", "tiny-llama", "smol-gguf", "--dataset", "reviews",
                 "--max-rows", "8", "--field", "max_length=32", "--budget", "0.1",
                 "--cpu", "1", "--memory", "3072")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "perplexity" in done.stdout and "accuracy" not in done.stdout
    gguf = next(line for line in done.stdout.splitlines() if "smol-gguf:1" in line)
    assert " gguf " in gguf and "134.5M" in gguf
    stored = c.models.version("smol-gguf")["metrics"]["compare:reviews:1:test"]
    assert stored["format"] == "gguf" and stored["runtime"] == "llama.cpp"
    assert 1 < stored["perplexity"] < c.models.version("tiny-llama")["metrics"][
        "compare:reviews:1:test"]["perplexity"]  # a trained model beats a random one


def refusal(c, models, dataset="reviews", **kw) -> APIError:
    with pytest.raises(APIError) as e:
        c.optimize.compare(models, dataset, **kw)
    return e.value


def test_bad_requests_are_refused_before_any_job_naming_what_is_wrong(lab):
    c = lab.client
    before = c.jobs.list(limit=1000)["total"]
    e = refusal(c, ["clf:1", "clf:9"])
    assert e.status == 404 and "no version 9" in e.message
    e = refusal(c, ["clf:1", "nosuch"])
    assert e.status == 404 and "nosuch" in e.message
    e = refusal(c, ["clf:1"])
    assert e.status == 422 and "models:" in e.message and "1 given" in e.message
    e = refusal(c, ["clf:1", "clf@latest-but-not-an-alias"])
    assert e.status == 404 and "alias" in e.message
    e = refusal(c, ["clf:2", "clf"])
    assert e.status == 422 and "list each version once" in e.message
    e = refusal(c, ["clf:1", "chat"])
    assert e.status == 422 and "chat:1 is a causal_lm model" in e.message
    assert "clf:1 is a sequence_classification model" in e.message
    e = refusal(c, ["clf:1", "clf:2"], dataset="trainonly")
    assert e.status == 422 and "no test split (splits: train)" in e.message
    e = refusal(c, ["clf:1", "clf:2"], split="validation")
    assert e.status == 422 and "no validation split" in e.message
    e = refusal(c, ["clf:1", "clf:2"], dataset="reviews:7")
    assert e.status == 404 and "no version 7" in e.message
    e = refusal(c, ["clf:1", "clf:2"], fields={"text_field": "body"})
    assert e.status == 422 and "'body'" in e.message and "text_field" in e.message
    e = refusal(c, ["clf:1", "clf:2"] * 5)
    assert e.status == 422 and "models" in e.message
    assert c.jobs.list(limit=1000)["total"] == before


def test_the_cli_refuses_one_version_and_shows_the_daemons_refusals(lab):
    one = llmos(lab, "models", "compare", "clf:1", "--dataset", "reviews")
    assert one.returncode == 2 and "at least two versions" in one.stderr
    bad = llmos(lab, "models", "compare", "clf:1", "chat", "--dataset", "reviews")
    assert bad.returncode == 1 and "chat:1 is a causal_lm model" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_timing_warms_up_then_times_enough_calls_within_its_budget():
    from llmos.optimize.timing import Plan, percentile, time_calls

    calls = []
    plan = Plan(warmup=3, min_reps=10, max_reps=50, budget_s=30, hard_cap_s=60)
    timed = time_calls(calls.append, [[1], [2]], plan)
    assert len(calls) == 3 + 50 and timed["reps"] == 50  # fast calls: max_reps ends it
    calls.clear()
    spent = time_calls(calls.append, [[1]], Plan(warmup=5, min_reps=7, max_reps=80,
                                                 budget_s=0.0, hard_cap_s=30))
    assert len(calls) == 1 + 7 and spent["reps"] == 7  # budget spent: one warm-up, min_reps
    assert 0 <= timed["p50_ms"] <= timed["p99_ms"] and timed["mean_ms"] >= 0
    capped = time_calls(calls.append, [[1]], Plan(warmup=0, min_reps=10**6, max_reps=10**6,
                                                  budget_s=0.0, hard_cap_s=0.05))
    assert 1 <= capped["reps"] < 10**6 and capped["seconds"] < 1  # the hard cap holds
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert Plan.scaled(5, 1).min_reps == 100 and Plan.scaled(5, 32).hard_cap_s == 20


def test_every_format_loads_behind_one_surface(tmp_path):
    """A classifier, its int8 version and its int8 ONNX bundle: each opens as its format,
    counts about the same weights, names the same labels and predicts the same."""
    from offline_models import minilm_dir

    from llmos.optimize.backends import open_backend
    from llmos.optimize.onnx_export import export_onnx
    from llmos.optimize.quantize import quantize_folder

    parent = tiny_models.bert(tmp_path / "clf", minilm_dir(), hidden=32, layers=2,
                              head="sequence", labels=["neg", "pos"])
    quantize_folder(parent, tmp_path / "int8")
    export_onnx(parent, tmp_path / "onnx", quantize=True)
    texts = ["a good day", "bad dull slow thing", "lovely", "the broken day"]
    base = open_backend(parent, "sequence_classification", 64, threads=1)
    for folder, fmt in (("clf", "safetensors"), ("int8", "int8"), ("onnx", "onnx-int8")):
        b = open_backend(tmp_path / folder, "sequence_classification", 64, threads=1)
        assert (b.format, b.labels) == (fmt, ["neg", "pos"])
        assert b.parameters == pytest.approx(base.parameters, rel=0.01)
        logits = b.logits(texts)
        assert logits.shape == (4, 2)
        assert (logits.argmax(-1) == base.logits(texts).argmax(-1)).all()
        b.call(texts[:1])
