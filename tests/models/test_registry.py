"""The model registry through a live daemon: imports as jobs (Hugging Face folder; the
SmolLM2 GGUF import job is checked in tests/serve/test_serving_real.py, on the import that
module serves), versions with hashes, lineage and cards, aliases, removal, and what is
refused before any job exists."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from live import LiveDaemon
from llmos.sdk import APIError
from offline_models import minilm_dir


def cli(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args],
                          env=daemon.cli_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    home = tmp_path_factory.mktemp("registry") / "home"
    home.mkdir()
    live = LiveDaemon(home).start()
    yield live
    live.stop()


def test_a_hugging_face_folder_becomes_a_version_with_hashes_lineage_and_a_card(registry):
    c = registry.client
    job = c.models.import_("minilm", minilm_dir())
    assert registry.wait_job(job["id"], timeout=180)["state"] == "SUCCEEDED"
    v = c.models.version("minilm")
    assert (v["version"], v["architecture"], v["task"]) == (1, "BertModel", "encoder")
    assert 22_000_000 < v["parameters"] < 23_000_000 and v["context_length"] == 512
    assert v["lineage"]["source"]["kind"] == "huggingface" and v["lineage"]["job"] == job["id"]
    for f in v["files"]:
        on_disk = (minilm_dir() / f["path"]).read_bytes()
        assert hashlib.sha256(on_disk).hexdigest() == f["sha256"]
        assert c.artifacts.get(f["artifact_id"])["kind"] == "model-file"
    assert not any(f["path"].endswith((".bin", ".py")) for f in v["files"])
    card = c.models.card("minilm", 1)
    assert card.startswith("---") and "# minilm (version 1)" in card and "BertModel" in card
    shown = cli(registry, "models", "show", "minilm:1")
    assert shown.returncode == 0 and "22,713,216" in shown.stdout


def test_aliases_move_and_guard_removal(registry):
    c = registry.client
    again = cli(registry, "models", "import", str(minilm_dir()), "--name", "minilm")
    assert again.returncode == 0, again.stderr
    assert "minilm:2" in again.stdout
    one, two = c.models.version("minilm", 1), c.models.version("minilm", 2)
    assert [f["sha256"] for f in one["files"]] == [f["sha256"] for f in two["files"]]
    assert cli(registry, "models", "alias", "minilm:1", "production").returncode == 0
    assert c.models.version("minilm", "production")["version"] == 1
    assert cli(registry, "models", "alias", "minilm:2", "production").returncode == 0
    assert c.models.version("minilm", "production")["version"] == 2
    assert c.models.get("minilm")["aliases"] == {"production": 2}
    refused = cli(registry, "models", "rm", "minilm:2", "--yes")
    assert refused.returncode == 1 and "aliased as production" in refused.stderr
    assert cli(registry, "models", "rm", "minilm:1", "--yes").returncode == 0
    with pytest.raises(APIError) as e:
        c.models.version("minilm", 1)
    assert e.value.status == 404 and "has no version 1 (versions: 2)" in e.value.message
    with pytest.raises(APIError) as e:
        c.models.delete("minilm")
    assert e.value.status == 409
    c.models.remove_alias("minilm", "production")
    c.models.delete("minilm")
    assert c.models.list() == []


def _folder_with(tmp_path, name: str, files: dict[str, bytes]):
    folder = tmp_path / name
    folder.mkdir()
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    return folder


@pytest.mark.parametrize("case,status,message", [
    ("pickles", 422, "pickled checkpoint"),
    ("no-config", 422, "config.json"),
    ("not-gguf", 422, "is not a GGUF file"),
    ("missing", 422, "no such file or folder"),
    ("bad-name", 422, "bad model name"),
    ("onnx", 422, "unknown model format 'onnx'; available: gguf, hf"),
    ("gguf-folder", 422, "is a folder; a Hugging Face folder goes through"),
])
def test_what_cannot_be_imported_is_refused_before_any_job(registry, tmp_path, case, status,
                                                            message):
    config = (minilm_dir() / "config.json").read_bytes()
    sources = {
        "pickles": _folder_with(tmp_path, "pt", {"config.json": config,
                                                 "pytorch_model.bin": b"\x80\x04pickle"}),
        "no-config": _folder_with(tmp_path, "nc", {"model.safetensors": b"{}"}),
        "not-gguf": _folder_with(tmp_path, "gg", {"x.gguf": b"GGML not really"}) / "x.gguf",
        "missing": tmp_path / "nowhere",
        "bad-name": minilm_dir(),
        "onnx": minilm_dir(),
        "gguf-folder": minilm_dir(),
    }
    fmt = {"onnx": "onnx", "gguf-folder": "gguf"}.get(case, "auto")
    before = registry.client.jobs.list()["total"]
    with pytest.raises(APIError) as e:
        registry.client.models.import_("Bad Name" if case == "bad-name" else "refused",
                                       sources[case], format=fmt)
    assert e.value.status == status and message in e.value.message, e.value.message
    assert registry.client.jobs.list()["total"] == before


def test_registering_checks_files_against_their_hashes(registry):
    c = registry.client
    art = c.artifacts.put(b"{}", name="config.json")
    info = {"architecture": "BertModel", "model_type": "bert", "task": "encoder",
            "parameters": 0, "dtypes": [], "size_bytes": 2, "weight_files": [],
            "tokenizer_files": [], "vocab_size": None, "chat_template": False,
            "context_length": None,
            "files": [{"path": "config.json", "size": 2, "sha256": "0" * 64}]}
    with registry.http() as http:
        resp = http.post("/v1/registry/models/fake/versions",
                         json={"files": [{"path": "config.json", "artifact_id": art["id"]}],
                               "info": info})
        assert resp.status_code == 422 and "sha256 differs" in resp.json()["error"]["message"]
        resp = http.post("/v1/registry/models/fake/versions",
                         json={"files": [{"path": "../config.json", "artifact_id": art["id"]}],
                               "info": info})
        assert resp.status_code == 422 and "bad model file path" in resp.text
    assert c.models.list() == []
