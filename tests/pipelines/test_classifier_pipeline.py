"""examples/pipelines/classifier.yaml on a live daemon, with the real all-MiniLM-L6-v2:
raw labelled lines -> dataset -> fine-tuned classifier -> evaluation -> promotion ->
canary rollout -> a deployment answering /v1/classify, each answer naming its version.

One module: run A (a learning rate too small to learn) makes the first champion and the
deployment; run B (a learning rate that learns) beats it, is promoted and rolled out as a
canary that completes; B again starts no job; A again is not promoted, and says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from live import LiveDaemon, register_copy, wait_for
from offline_models import minilm_dir

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from topic_corpus import held_out_rows, train_rows  # noqa: E402

EXAMPLE = Path(__file__).parents[2] / "examples" / "pipelines" / "classifier.yaml"
FAST = {"canary_window_s": 3.0, "canary_min_requests": 6}  # a short canary for a test
WEAK = {"learning_rate": 1.0e-7, "epochs": 1}  # learns nothing: about chance (0.25)
GOOD = {"learning_rate": 3.0e-4, "epochs": 3}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    corpus_dir = tmp_path_factory.mktemp("corpus")
    corpus = corpus_dir / "topics.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in train_rows() + held_out_rows()))
    corpus.chmod(0o644)
    home = tmp_path_factory.mktemp("classifier") / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": str(corpus_dir)}).start()
    job = live.client.models.import_("minilm", minilm_dir())
    assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED"
    live.corpus = str(corpus)
    yield live
    live.stop()
    live.client.close()


def run(lab, params: dict, timeout: float = 900) -> dict:
    with lab.http() as http:
        r = http.post("/v1/pipelines/runs", json={"spec": EXAMPLE.read_text(),
                                                  "params": {"corpus": lab.corpus, **FAST,
                                                             **params}})
        assert r.status_code == 201, r.text
        return r.json()


def get(lab, run_id: int) -> dict:
    with lab.http() as http:
        return http.get(f"/v1/pipelines/runs/{run_id}").json()


def ended(lab, run_id: int, timeout: float = 900) -> dict:
    return wait_for(lambda: (r := get(lab, run_id))["state"] in ("SUCCEEDED", "FAILED",
                                                                 "CANCELLED") and r,
                    timeout=timeout, interval=0.5, what=f"pipeline run {run_id}")


def states(r: dict) -> dict:
    return {s["name"]: s["state"] for s in r["steps"]}


def step(r: dict, name: str) -> dict:
    return next(s for s in r["steps"] if s["name"] == name)


def job_count(lab) -> int:
    return len(lab.client.jobs.list(limit=10_000)["jobs"])


def classify(lab, text: str):
    with lab.http() as http:
        return http.post("/v1/classify", json={"model": "text-classifier", "input": text})


@pytest.mark.slow
def test_a_first_run_from_the_readme_command_makes_the_champion_and_the_deployment(lab):
    cli = subprocess.run(
        [sys.executable, "-m", "llmos.cli.main", "pipeline", "run", str(EXAMPLE),
         "--param", f"corpus={lab.corpus}", *(f"--param={k}={v}"
                                              for k, v in {**FAST, **WEAK}.items())],
        env=lab.cli_env(), capture_output=True, text=True, timeout=900)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    [first] = lab.client.pipelines.runs()  # noqa: the SDK's list, newest first
    r = get(lab, first["id"])
    assert r["state"] == "SUCCEEDED", r["reason"]
    assert states(r) == {"ingest": "SUCCEEDED", "train": "SUCCEEDED",
                         "evaluate": "SUCCEEDED", "promote": "SUCCEEDED",
                         "rollout": "SUCCEEDED"}
    assert step(r, "promote")["outputs"]["promoted"] is True
    assert "no champion yet" in step(r, "promote")["outputs"]["comparison"]["reason"]
    assert step(r, "rollout")["outputs"]["outcome"] == "deployed"
    model = lab.client.models.get("text-classifier")
    assert model["aliases"] == {"champion": 1}
    answer = wait_for(lambda: (x := classify(lab, "The chef tasted the risotto.")
                               ).status_code == 200 and x, timeout=300, what="the deployment")
    assert answer.headers["x-llmos-model-version"] == "text-classifier:1"


@pytest.mark.slow
def test_a_better_candidate_is_promoted_and_its_canary_completes(lab):
    r = run(lab, GOOD)
    # the canary: half of the requests go to the candidate while the rollout watches
    wait_for(lambda: (d := lab.client.deployments.get("text-classifier")).get("canary") or
             get(lab, r["id"])["state"] != "RUNNING", timeout=900, interval=0.5,
             what="the canary to start")
    seen = set()
    while get(lab, r["id"])["state"] == "RUNNING":
        answer = classify(lab, "Heavy rain and strong winds are expected tonight.")
        assert answer.status_code == 200, answer.text
        seen.add(answer.headers["x-llmos-model-version"])
        assert answer.json()["model"] == answer.headers["x-llmos-model-version"]
    done = ended(lab, r["id"])
    assert done["state"] == "SUCCEEDED", done["reason"]
    assert states(done)["ingest"] == "CACHED"  # a new learning rate: ingest did not rerun
    assert states(done)["train"] == "SUCCEEDED"
    assert step(done, "ingest")["cached_from_run"] == 1
    promote = step(done, "promote")["outputs"]
    assert promote["promoted"] is True, promote["comparison"]
    assert promote["comparison"]["candidate"]["value"] > promote["comparison"]["champion"]["value"]
    assert step(done, "rollout")["outputs"]["outcome"] == "completed"
    assert seen == {"text-classifier:1", "text-classifier:2"}  # both served during the canary
    d = lab.client.deployments.get("text-classifier")
    assert d["version"] == 2 and not d.get("canary")
    assert classify(lab, "The striker scored.").headers["x-llmos-model-version"] == \
        "text-classifier:2"


@pytest.mark.slow
def test_the_same_run_again_starts_no_job(lab):
    before = job_count(lab)
    done = ended(lab, run(lab, GOOD)["id"])
    assert done["state"] == "SUCCEEDED", done["reason"]
    assert {states(done)[s] for s in ("ingest", "train", "evaluate")} == {"CACHED"}
    assert step(done, "promote")["outputs"]["promoted"] is False  # it already is champion
    assert states(done)["rollout"] == "SKIPPED"
    assert job_count(lab) == before


@pytest.mark.slow
def test_a_worse_candidate_is_not_promoted_and_the_comparison_says_why(lab):
    done = ended(lab, run(lab, WEAK)["id"])
    assert done["state"] == "SUCCEEDED", done["reason"]
    assert states(done)["train"] == "CACHED"  # run A's model, already trained
    comparison = step(done, "promote")["outputs"]["comparison"]
    assert step(done, "promote")["outputs"]["promoted"] is False
    assert "not better" in comparison["reason"] and "champion text-classifier:2" in \
        comparison["reason"]
    assert states(done)["rollout"] == "SKIPPED"
    model = lab.client.models.get("text-classifier")
    assert model["aliases"] == {"champion": 2}
    v1 = lab.client.models.version("text-classifier", 1)
    assert v1["metrics"]["promotion:champion"]["promoted"] is False


@pytest.mark.slow
def test_the_deployments_lineage_reaches_the_raw_file(lab):
    with lab.http() as http:
        tree = http.get("/v1/lineage/deployments/text-classifier").json()
    text = json.dumps(tree)
    import hashlib
    digest = hashlib.sha256(Path(lab.corpus).read_bytes()).hexdigest()
    assert digest in text  # raw file -> dataset -> run/step -> model -> deployment
    assert '"pipeline": "text-classifier"' in text


@pytest.mark.slow
def test_a_canary_with_a_broken_challenger_rolls_back(lab):
    """A challenger whose weights are corrupt (a broken upload) cannot answer: the rollout
    sees its errors and takes the traffic back, and the deployment keeps its version."""
    broken = register_copy(lab, lab.client, "text-classifier", "text-classifier", 2,
                           corrupt="model.safetensors")
    spec = {"name": "ship", "params": {"version": broken}, "steps": {"rollout": {
        "program": "rollout", "inputs": {"model": "text-classifier:${params.version}"},
        "params": {"deployment": "text-classifier", "weight": 50, "window_s": 60,
                   "min_requests": 4, "max_error_rate": 0.05}}}}
    with lab.http() as http:
        r = http.post("/v1/pipelines/runs", json={"spec": spec})
    assert r.status_code == 201, r.text
    wait_for(lambda: lab.client.deployments.get("text-classifier").get("canary"),
             timeout=120, what="the canary")
    answers = []
    while get(lab, r.json()["id"])["state"] == "RUNNING" and len(answers) < 200:
        answers.append(classify(lab, "The baker kneaded the sourdough.").status_code)
    done = ended(lab, r.json()["id"])
    assert done["state"] == "FAILED"
    rollout = step(done, "rollout")
    assert rollout["reason"].startswith("rolled back: canary error rate"), rollout["reason"]
    assert rollout["outputs"]["outcome"] == "rolled back"
    assert 503 in answers and 200 in answers  # the stable version kept answering
    d = lab.client.deployments.get("text-classifier")
    assert d["version"] == 2 and not d.get("canary")
    assert classify(lab, "The striker scored.").headers["x-llmos-model-version"] == \
        "text-classifier:2"
