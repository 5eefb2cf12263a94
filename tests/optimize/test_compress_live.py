"""Compression as kernel jobs through a live daemon, on tiny models: what can be refused
before a job exists is refused with a 422 naming the field, and no job is made; another
team's model is not found; an ONNX export is served by the onnx engine and pulled as an
edge bundle; a pipeline step compresses like the verb. (The other methods run end to end
on the real MiniLM in test_minilm.py, quantization through the CLI in test_faces.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tiny_models
from live import LiveDaemon
from offline_models import minilm_dir
from topic_corpus import train_rows

LABELS = ["computing", "cooking", "sports", "weather"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A daemon with a tiny BERT classifier, a tiny Llama and a topics dataset."""
    root = tmp_path_factory.mktemp("compress-live")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home").start()
    c = live.client
    tiny_models.bert(root / "bert", minilm_dir(), hidden=64, layers=2, head="sequence",
                     labels=LABELS)
    tiny_models.llama(root / "llama", tiny_models.smollm2_tokenizer(root / "smol-tok"))
    jobs = [c.models.import_(name, root / folder, memory_mb=3072)
            for name, folder in (("tiny-cls", "bert"), ("tiny-llama", "llama"))]
    (root / "topics.jsonl").write_text("\n".join(json.dumps(r) for r in train_rows()))
    jobs.append(c.datasets.ingest("topics", [root / "topics.jsonl"], {
        "label_field": "label",
        "split": {"train": 0.7, "validation": 0.15, "test": 0.15, "seed": 1}}))
    for job in jobs:
        assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED", job
    yield live
    live.stop()


def compress(live: LiveDaemon, recipe, model: str, output: str, token: str | None = None,
             **extra):
    with live.http(token or live.client.token) as http:
        return http.post("/v1/optimize/compress", json={
            "recipe": recipe, "model": model, "output": output,
            "resources": {"cpu": 1, "memory_mb": 3072}, **extra})


def run(live: LiveDaemon, recipe, model: str, output: str, **extra) -> dict:
    r = compress(live, recipe, model, output, **extra)
    assert r.status_code in (200, 201), r.text
    ended = live.wait_job(r.json()["id"], timeout=300)
    assert ended["state"] == "SUCCEEDED", ended.get("reason")
    return live.client.models.version(output)


@pytest.mark.parametrize("recipe, model, extra, says", [
    ({"method": "squeeze"}, "tiny-cls", {}, "method: unknown method 'squeeze'"),
    ({"method": "gguf"}, "tiny-cls", {},
     "model: tiny-cls:1 is a sequence_classification model; gguf works on causal_lm models"),
    ({"method": "onnx"}, "tiny-llama", {}, "onnx works on encoder or sequence_classification"),
    ({"method": "prune", "prune": {"structure": "ffn", "sparsity": 0.99}}, "tiny-cls", {},
     "prune.sparsity"),
    ({"method": "distill"}, "tiny-cls", {}, "dataset: this recipe trains"),
    ({"method": "distill", "distill": {"student_layers": 1, "train": {"epochs": 0}}},
     "tiny-cls",
     {"dataset": "topics"}, "distill.train: epochs"),
    ({"method": "quantize"}, "tiny-cls", {"dataset": "topics"},
     "dataset: quantize trains nothing"),
    ({"method": "distill", "distill": {"student_layers": 1, "train": {"text_field": "body"}}},
     "tiny-cls",
     {"dataset": "topics"}, "has no 'body' column"),
    ({"method": "quantize"}, "no-such-model", {}, "no-such-model"),
    ({"method": "distill", "distill": {"student_layers": 2}}, "tiny-cls", {"dataset": "topics"},
     "distill.student_layers: 2 is not fewer than the 2 layers of tiny-cls:1"),
    ({"method": "prune", "prune": {"structure": "heads"}}, "tiny-cls", {},
     "prune.structure: heads are removed from Llama-style causal LMs only"),
    ("method: quantize\nquantize: &q {weights: int8}\nextra: *q", "tiny-cls", {},
     "YAML aliases (*name) are not accepted"),
])
def test_what_can_be_refused_is_refused_before_any_job(lab, recipe, model, extra, says):
    before = len(lab.client.jobs.list(limit=1000)["jobs"])
    r = compress(lab, recipe, model, "never-made", **extra)
    assert r.status_code in (404, 422), r.text
    assert says in r.json()["error"]["message"], r.json()
    assert len(lab.client.jobs.list(limit=1000)["jobs"]) == before
    assert "never-made" not in {m["name"] for m in lab.client.models.list()}


def test_another_teams_model_is_not_found(lab):
    other = lab.user("mallory", team="rivals")
    r = compress(lab, {"method": "quantize"}, "tiny-cls", "stolen", token=other.token)
    assert r.status_code == 404, r.text
    assert "stolen" not in {m["name"] for m in lab.client.models.list()}


def test_an_onnx_export_is_served_by_the_onnx_engine_and_pulled_as_a_bundle(lab, tmp_path):
    v = run(lab, {"method": "onnx", "onnx": {"quantize": True}}, "tiny-cls", "tiny-cls-onnx")
    paths = {f["path"] for f in v["files"]}
    assert {"model.onnx", "manifest.json", "config.json", "tokenizer.json"} <= paths
    assert v["info"]["task"] == "sequence_classification"
    c = lab.client
    d = c.deployments.create("tiny-cls-onnx")
    assert d["engine"] == "onnx"
    with lab.http(c.token) as http:
        r = http.post("/v1/classify", json={"model": "tiny-cls-onnx",
                                            "input": ["the striker scored a goal"]},
                      timeout=120)
    assert r.status_code == 200, r.text
    served = r.json()["data"][0]["label"]
    assert served in LABELS
    c.deployments.delete("tiny-cls-onnx")
    # pulled, it is an edge bundle: its runner gives what the server gave
    edge = tmp_path / "edge"
    pulled = subprocess.run([sys.executable, "-m", "llmos.cli.main", "models", "pull",
                             "tiny-cls-onnx", str(edge)], env=lab.cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    (edge / "numpy.py").write_text("raise SystemExit('a file in the bundle was imported')\n")
    ran = subprocess.run([sys.executable, str(edge / "runner.py"), str(edge),
                          "the striker scored a goal"], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["results"][0]["label"] == served
    again = subprocess.run([sys.executable, "-m", "llmos.cli.main", "models", "pull",
                            "tiny-cls-onnx", str(edge)], env=lab.cli_env(),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "not an empty folder" in again.stdout + again.stderr


def test_compression_is_a_pipeline_step_cached_like_any_job(lab):
    spec = {"name": "shrink", "steps": {"quantize": {
        "program": "optimize.compress", "inputs": {"model": "tiny-cls"},
        "params": {"output": "tiny-cls-piped", "recipe": {"method": "quantize"}},
        "resources": {"cpu": 1, "memory_mb": 3072}}}}
    c = lab.client
    run = c.pipelines.wait(c.pipelines.run(spec)["id"], timeout=300)
    assert run["state"] == "SUCCEEDED", run
    step = run["steps"][0]
    assert step["state"] == "SUCCEEDED" and step["outputs"]["model"]["name"] == "tiny-cls-piped"
    v = c.models.version("tiny-cls-piped")
    assert v["lineage"]["parent"] == {"model": "tiny-cls", "version": 1}
    again = c.pipelines.wait(c.pipelines.run(spec)["id"], timeout=300)
    assert again["steps"][0]["state"] == "CACHED"
    assert len(c.models.get("tiny-cls-piped")["versions"]) == 1
