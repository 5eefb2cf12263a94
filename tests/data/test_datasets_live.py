"""Datasets through a live daemon: `llmos data` and /v1/datasets, as users see them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data import corpus

RECIPE = """
label_field: label
steps:
  - html_to_text
  - fix_unicode
  - normalize
  - strip_control
  - collapse_whitespace
  - mask_pii
  - exact_dedup
  - near_dedup: {threshold: 0.8}
split: {train: 0.5, test: 0.5, seed: 1}
"""


def llmos(daemon, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args],
                          env=daemon.cli_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    corpus.build(root)
    (root / "recipe.yaml").write_text(RECIPE)
    return root


def test_ingest_with_the_cli_then_read_the_version_every_way(shared_daemon, messy):
    result = llmos(shared_daemon, "data", "ingest", "corpus", "-d", "messy", "-r",
                   "recipe.yaml", cwd=messy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "messy:1  12 documents" in result.stdout
    assert "exact_dedup  removed: duplicate 1" in result.stdout
    assert "mask_pii  changed: email 1, card 1, ip 1, phone 1" in result.stdout
    assert "read 14 documents from 15 files" in result.stdout

    c = shared_daemon.client
    version = c.datasets.version("messy", 1)
    assert version["stats"]["documents"] == 12
    assert version["stats"]["labels"] == {"(none)": 8, "neg": 2, "pos": 2}
    assert {s["split"] for s in version["shards"]} == {"train", "test"}
    assert sum(s["rows"] for s in version["shards"]) == 12
    assert version["schema"] == {"id": "string", "text": "string", "source": "string",
                                 "label": "string"}
    lineage = version["lineage"]
    assert len(lineage["inputs"]) == 15
    assert all(len(f["sha256"]) == 64 for f in lineage["inputs"])
    assert [next(iter(s)) for s in lineage["recipe"]["steps"]][-2:] == ["exact_dedup",
                                                                      "near_dedup"]
    job = c.jobs.get(lineage["job_id"])
    assert version["job_id"] == job["id"] and job["state"] == "SUCCEEDED"
    assert job["progress"]["unit"] == "bytes"
    assert job["progress"]["done"] == job["progress"]["total"] == sum(
        f["bytes"] for f in lineage["inputs"])
    assert job["progress"]["info"] == {"files": "15/15", "documents": 14}
    metrics = {m["name"]: m["value"] for m in c.jobs.metrics(job["id"])}
    assert metrics["documents_kept"] == 12
    for shard in version["shards"]:  # shards are verified artifacts produced by the job
        art = c.artifacts.get(shard["artifact_id"])
        assert art["sha256"] == shard["sha256"] and art["job_id"] == job["id"]

    report = c.datasets.report("messy", 1)
    assert sum(1 for f in report["files"] if f["error"]) == 4
    rows = c.datasets.head("messy", 1, n=20)
    assert len(rows) == 12
    assert any(r["text"] == corpus.CHINESE for r in rows)

    head = llmos(shared_daemon, "data", "head", "messy:1", "-n", "2", "--split", "test")
    assert head.returncode == 0 and head.stdout.count("test  ") == 2
    stats = llmos(shared_daemon, "data", "stats", "messy")
    assert stats.returncode == 0 and "all" in stats.stdout and "near_dedup" in stats.stdout
    show = llmos(shared_daemon, "data", "show", "messy:1", "--json")
    assert json.loads(show.stdout)["content_hash"] == version["content_hash"]
    ls = llmos(shared_daemon, "data", "ls")
    assert "messy" in ls.stdout
    detail = llmos(shared_daemon, "job", "show", str(job["id"]))
    assert "files 15/15" in detail.stdout and "documents 14" in detail.stdout


def test_stats_show_labels_and_languages_per_split_and_familiar_encodings(shared_daemon,
                                                                          tmp_path):
    texts = {"en": ["The weather is lovely today and we walk to the park together.",
                    "The train was late again and everybody on the platform was angry.",
                    "Our neighbours planted apple trees along the quiet country road."],
             "fr": ["Le temps est magnifique aujourd'hui et nous allons au parc ensemble.",
                    "Où est la bibliothèque? Près de la gare, à côté du marché."]}
    records = [{"text": t, "label": "pos" if i % 2 == 0 else "neg"}
               for lang in ("en", "fr") for i, t in enumerate(texts[lang])]
    (tmp_path / "reviews.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "latin1.txt").write_bytes("El niño comió piñata y canción española.".encode(
        "latin-1"))
    (tmp_path / "blank.txt").write_text(" \n\n  \n")
    (tmp_path / "recipe.yaml").write_text(
        "label_field: label\nsteps: [{language: {keep: [en, fr, es]}}]\n"
        "split: {train: 0.5, test: 0.5, seed: 1}\n")
    result = llmos(shared_daemon, "data", "ingest", ".", "-d", "langs", "-r", "recipe.yaml",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "empty  removed: no_text 1" in result.stdout  # the blank file, not "language_…"

    version = shared_daemon.client.datasets.version("langs")
    stats = version["stats"]
    assert stats["languages"] == {"en": 3, "es": 1, "fr": 2}
    assert stats["labels"] == {"(none)": 1, "neg": 2, "pos": 3}
    assert sum(s["languages"].get("fr", 0) for s in stats["splits"].values()) == 2
    encodings = {f["path"].rsplit("/", 1)[-1]: f["encoding"] for f in version["lineage"]["inputs"]}
    assert encodings["latin1.txt"] == "latin-1"

    shown = llmos(shared_daemon, "data", "stats", f"langs:{version['version']}")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    for key in ("labels", "languages"):
        for split, s in [*stats["splits"].items(), ("all", stats)]:
            ranked = sorted(s[key].items(), key=lambda kv: (-kv[1], kv[0]))
            assert f"{split} " + " ".join(f"{k} {n}" for k, n in ranked) in lines, shown.stdout
    assert "documents by language" in shown.stdout and "documents by label" in shown.stdout


def test_same_input_same_hash_and_diff_between_versions(shared_daemon, messy):
    c = shared_daemon.client
    jobs = [c.datasets.ingest("again", [str(messy / "corpus")], RECIPE),
            c.datasets.ingest("again", [str(messy / "corpus")], RECIPE)]
    for job in jobs:
        assert shared_daemon.wait_job(job["id"], timeout=120)["state"] == "SUCCEEDED"
    no_dedup = RECIPE.replace("  - exact_dedup\n", "").replace(
        "  - near_dedup: {threshold: 0.8}\n", "")
    job = c.datasets.ingest("again", [str(messy / "corpus")], no_dedup)
    assert shared_daemon.wait_job(job["id"], timeout=120)["state"] == "SUCCEEDED"

    v1, v2, v3 = (c.datasets.version("again", v) for v in (1, 2, 3))
    assert v1["content_hash"] == v2["content_hash"] != v3["content_hash"]
    same = c.datasets.diff("again", 1, 2)
    assert same["same_content"] and same["documents_added"] == same["documents_removed"] == 0
    changed = c.datasets.diff("again", 2, 3)
    # The exact copy has the same content id as its original; the near copy is new.
    assert changed["documents_added"] == 1 and changed["documents_removed"] == 0
    assert changed["stats"]["documents"] == {"from": 12, "to": 14, "change": 2}
    assert changed["recipe_changed"]
    out = llmos(shared_daemon, "data", "diff", "again:2", "3")
    assert out.returncode == 0 and "documents  +1  -0  =12" in out.stdout


def test_a_failing_ingest_registers_nothing(shared_daemon, messy):
    bad_tokenizer = messy / "tokenizer.json"
    bad_tokenizer.write_text("{not a tokenizer")
    recipe = {"steps": [{"tokenize": {"tokenizer": str(bad_tokenizer)}}]}
    c = shared_daemon.client
    job = c.datasets.ingest("broken", [str(messy / "corpus")], recipe)
    job = shared_daemon.wait_job(job["id"], timeout=120)
    assert job["state"] == "FAILED"
    assert "is not a Hugging Face tokenizer" in job["reason"]
    resp = shared_daemon.http().get("/v1/datasets/broken")
    assert resp.status_code == 404


@pytest.mark.parametrize("body,status,message", [
    ({"dataset": "x", "sources": ["{corpus}"], "recipe": {"steps": ["nope"]}}, 422,
     "recipe: step 1: unknown step 'nope'"),
    ({"dataset": "x", "sources": ["{corpus}"], "recipe": "steps: [normalize: {frm: 1}]"}, 422,
     "unknown parameter 'frm'"),
    ({"dataset": "x", "sources": ["/no/such/place"]}, 422, "no such file or folder"),
    ({"dataset": "x", "sources": ["/no/such/*.txt"]}, 422, "no file matches"),
    ({"dataset": "Bad Name", "sources": ["{corpus}"]}, 422, "bad dataset name"),
    ({"dataset": "x", "sources": []}, 422, "sources"),
    ({"dataset": "x", "sources": ["{corpus}"], "priority": "urgent"}, 422, "priority"),
    ({"dataset": "x", "sources": ["{corpus}"],
      "recipe": {"steps": [{"tokenize": {"tokenizer": "/no/tokenizer"}}]}}, 422,
     "no tokenizer at /no/tokenizer"),
    ({"dataset": "x", "sources": ["{corpus}"],
      "recipe": {"steps": [{"tokenize": {"tokenizer": "./tokenizer"}}]}}, 422,
     "the tokenizer path ./tokenizer must be absolute"),
    ({"dataset": "x", "sources": ["{corpus}"],
      "recipe": {"steps": [{"tokenize": {"tokenizer": "~nosuchuser/tok"}}]}}, 422,
     "the tokenizer path ~nosuchuser/tok must be absolute"),
    ({"dataset": "x", "sources": ["~nosuchuser/corpus"]}, 422,
     "a source starts with '~' of a user this host does not have"),
])
def test_bad_ingest_requests_are_refused_before_any_job(shared_daemon, messy, body, status,
                                                        message):
    before = shared_daemon.client.jobs.list()["total"]
    body = json.loads(json.dumps(body).replace("{corpus}", str(messy / "corpus")))
    resp = shared_daemon.http().post("/v1/datasets/ingest", json=body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]["message"]
    assert shared_daemon.client.jobs.list()["total"] == before


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", "/v1/datasets/unknown", 404, "dataset 'unknown' not found"),
    ("GET", "/v1/datasets/unknown/versions/1", 404, "not found"),
    ("GET", "/v1/datasets/unknown/versions/x", 422,
     "path.version: String should match pattern '^(latest|[0-9]+)$'"),
    ("GET", "/v1/datasets/unknown/diff?from=1&to=2", 404, "not found"),
    ("GET", "/v1/datasets/unknown/versions/1/head?n=0", 422,
     "query.n: Input should be greater than or equal to 1"),
    ("POST", "/v1/datasets/x/versions", 422, "content_hash: Field required; shards: Field "
     "required; schema: Field required; stats: Field required; lineage: Field required"),
])
def test_bad_dataset_reads_are_4xx(shared_daemon, method, path, status, message):
    with shared_daemon.http() as http:
        resp = http.request(method, path, json={} if method == "POST" else None)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]["message"]


def test_registering_a_version_checks_its_artifacts(shared_daemon):
    body = {"content_hash": "0" * 64, "schema": {"text": "string"}, "stats": {}, "lineage": {},
            "shards": [{"artifact_id": 999999, "split": "train", "rows": 1, "text_bytes": 1,
                        "sha256": "0" * 64, "name": "train-00000.parquet"}]}
    resp = shared_daemon.http().post("/v1/datasets/ghost/versions", json=body)
    assert resp.status_code == 404
    assert "artifact(s) not found: 999999" in resp.json()["error"]["message"]


@pytest.mark.parametrize("args,code,message", [
    (["data", "show", "nope"], 1, "dataset 'nope' not found"),
    (["data", "show", "nope:x"], 2, "write NAME or NAME:VERSION"),
    (["data", "head", "messy", "--split", "dev"], 2, "--split is train, validation or test"),
    (["data", "ingest", "corpus", "-d", "y", "-r", "missing.yaml"], 2, "cannot read the recipe"),
    (["data", "ingest", "nowhere", "-d", "y"], 1, "no such file or folder"),
])
def test_cli_errors_are_one_line(shared_daemon, messy, args, code, message):
    result = llmos(shared_daemon, *args, cwd=messy)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_versions_registered_at_once_all_get_distinct_numbers(shared_daemon):
    from concurrent.futures import ThreadPoolExecutor

    c = shared_daemon.client
    art = c.artifacts.put(b"shard bytes", name="race-train-00000.parquet", kind="dataset-shard")
    body = {"content_hash": "1" * 64, "schema": {"text": "string"}, "stats": {"documents": 1},
            "lineage": {}, "shards": [{"artifact_id": art["id"], "split": "train", "rows": 1,
                                       "text_bytes": 1, "sha256": art["sha256"],
                                       "name": "train-00000.parquet"}]}

    def register(_):
        return shared_daemon.http().post("/v1/datasets/race/versions", json=body,
                          timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(register, range(8)))
    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == list(range(1, 9))
