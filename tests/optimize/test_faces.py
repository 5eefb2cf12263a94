"""Compression and comparison through every face against a live daemon: the CLI follows a
compression job and prints the new version beside its parent; the REST API and the SDK
start comparisons whose jobs are chained and whose rows carry the figures; mistakes are
one clear line (CLI) or a 4xx naming the field (API, SDK), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from live import LiveDaemon

from llmos.sdk import APIError

from .compare_lab import causal_config, classifiers, labeled_dataset


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home").start()
    classifiers(live, live.client, root, "clf")
    labeled_dataset(live, live.client, "reviews")
    causal_config(live, live.client, "chat")
    (root / "int8.yaml").write_text("method: quantize\nquantize: {weights: int8}\n")
    (root / "shrink.yaml").write_text("method: shrink\n")
    live.recipes = root
    yield live
    live.stop()
    live.client.close()


def llmos(live: LiveDaemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args],
                          env=live.cli_env(), capture_output=True, text=True, timeout=300)


def test_compress_in_the_cli_then_compare_through_the_api_and_sdk(lab):
    done = llmos(lab, "models", "compress", str(lab.recipes / "int8.yaml"), "--model",
                 "clf:2", "--output", "clf-int8", "--cpu", "1", "--memory", "2048")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered clf-int8:1 (quantize of clf:2)" in done.stdout
    size = next(line for line in done.stdout.splitlines() if line.strip().startswith("size"))
    assert float(size.split("(")[1].split("x")[0]) < 1  # smaller than the parent
    c = lab.client
    v = c.models.version("clf-int8")
    assert v["lineage"]["parent"] == {"model": "clf", "version": 2}
    assert v["lineage"]["method"] == "quantize"

    with lab.http() as http:
        resp = http.post("/v1/optimize/compare", json={
            "models": ["clf:2", "clf-int8"], "dataset": "reviews", "budget_s": 0.2,
            "resources": {"cpu": 1, "memory_mb": 2048}})
    assert resp.status_code == 201, resp.text
    jobs = resp.json()["jobs"]
    assert [j["program"] for j in jobs] == ["optimize.measure"] * 2
    assert jobs[1]["depends_on"] == [jobs[0]["id"]]
    rows = c.optimize.wait_comparison(jobs, timeout=300)
    assert [(r["model"], r["state"], r["format"]) for r in rows] == [
        ("clf:2", "SUCCEEDED", "safetensors"), ("clf-int8:1", "SUCCEEDED", "int8")]
    parent, int8 = rows
    assert int8["size_bytes"] < parent["size_bytes"]
    assert int8["parameters"] == pytest.approx(parent["parameters"], rel=0.01)
    assert abs(int8["accuracy"] - parent["accuracy"]) <= 0.1
    stored = c.models.version("clf-int8")["metrics"]["compare:reviews:1:test"]
    assert stored["accuracy"] == int8["accuracy"]


def test_compress_detached_prints_the_job_id_alone(lab):
    done = llmos(lab, "models", "compress", str(lab.recipes / "int8.yaml"), "-m", "clf:1",
                 "-o", "clf-later", "--detach", "--cpu", "0.5")
    assert done.returncode == 0, done.stderr
    job = lab.client.jobs.get(int(done.stdout.strip()))
    assert job["program"] == "optimize.compress" and job["params"]["output"] == "clf-later"
    lab.client.jobs.cancel(job["id"])


def test_compress_mistakes_are_one_line_naming_the_field(lab):
    missing = llmos(lab, "models", "compress", "nowhere.yaml", "-m", "clf", "-o", "x")
    assert missing.returncode == 2 and "no such recipe file: nowhere.yaml" in missing.stderr
    bad = llmos(lab, "models", "compress", str(lab.recipes / "shrink.yaml"), "-m", "clf",
                "-o", "x")
    assert bad.returncode == 1 and "method" in bad.stderr and "shrink" in bad.stderr
    assert "Traceback" not in bad.stderr
    c = lab.client
    with pytest.raises(APIError) as e:
        c.optimize.compress({"method": "gguf"}, "clf", "clf-gguf")
    assert e.value.status == 422 and "model: clf:2 is a sequence_classification" in \
        e.value.message
    with pytest.raises(APIError) as e:
        c.optimize.compress({"method": "prune", "prune": {"sparsity": 1.5}}, "clf", "x")
    assert e.value.status == 422 and "prune.sparsity" in e.value.message
    with pytest.raises(APIError) as e:
        c.optimize.compress({"method": "quantize"}, "nosuch", "x")
    assert e.value.status == 404 and "nosuch" in e.value.message
    with lab.http() as http:
        resp = http.post("/v1/optimize/compress", json={"recipe": {"method": "quantize"},
                                                         "model": "clf", "output": "x",
                                                         "colour": "red"})
    assert resp.status_code == 422 and "colour" in resp.json()["error"]["message"]


def test_the_sdk_compare_returns_chained_jobs_and_refuses_mixed_tasks(lab):
    c = lab.client
    with pytest.raises(APIError) as e:
        c.optimize.compare(["clf:1", "chat"], "reviews")
    assert e.value.status == 422 and "compare versions of one task" in e.value.message
    jobs = c.optimize.compare(["clf:1", "clf:2", "clf-int8"], "reviews", budget_s=0.1,
                              max_rows=4, cpu=0.5, memory_mb=2048, priority="low")
    assert [j["params"]["model"] for j in jobs] == [
        {"name": "clf", "version": 1}, {"name": "clf", "version": 2},
        {"name": "clf-int8", "version": 1}]
    assert [j["depends_on"] for j in jobs] == [[], [jobs[0]["id"]], [jobs[1]["id"]]]
    assert all(j["priority"] == "low" for j in jobs)
    for j in reversed(jobs):  # the chain need not run: its last first, so none starts late
        c.jobs.cancel(j["id"])
