"""The REST API's contract: JSON errors with the right status, nothing written on bad
input, a valid OpenAPI schema, verified artifact bytes."""

from __future__ import annotations

import os
import stat

import pytest
from openapi_spec_validator import validate

from live import LiveDaemon, program


@pytest.fixture
def daemon(shared_daemon):
    return shared_daemon


@pytest.fixture
def http(shared_daemon):
    with shared_daemon.http() as client:
        yield client


def _artifact_count(http) -> int:
    return len(http.get("/v1/artifacts", params={"limit": 10000}).json()["artifacts"])


def _job_count(http) -> int:
    return http.get("/v1/jobs").json()["total"]


BAD_JOBS = [
    ({"program": "no_such_module:main"}, 422, "no module named 'no_such_module'"),
    ({"program": "llmos.kernel.builtin_programs:missing"}, 422, "no function 'missing'"),
    ({"program": "whatever"}, 422, "unknown program 'whatever'"),
    ({"program": "relative/file.py:main"}, 422, "must be absolute"),
    ({"program": "sleep", "params": {"minutes": 1}}, 422, "takes no parameter(s) minutes"),
    ({"program": "noop", "resources": {"cpu": -1}}, 422, "resources.cpu"),
    ({"program": "noop", "resources": {"memory_mb": 0}}, 422, "resources.memory_mb"),
    ({"program": "noop", "resources": {"cpu": 64}}, 422, "larger than any node: needs 64 cpu"),
    ({"program": "noop", "resources": {"memory_mb": 10**9}}, 422, "larger than any node"),
    ({"program": "noop", "resources": {"gpu": 1}}, 422, "needs 1 gpu"),
    ({"program": "noop", "resources": {"gpu_memory_mb": 100}}, 422, "gpu_memory_mb needs gpu"),
    ({"program": "noop", "priority": "urgent"}, 422, "priority"),
    ({"program": "noop", "max_retries": -1}, 422, "max_retries"),
    ({"program": "noop", "timeout_s": 0}, 422, "timeout_s"),
    ({"program": "noop", "depends_on": [999999]}, 404, "dependency job(s) not found: 999999"),
    ({"program": "noop", "surprise": True}, 422, "surprise"),
    ({"program": "noop", "executor": "quantum"}, 422, "unknown executor 'quantum'"),
    ({}, 422, "program"),
]


@pytest.mark.parametrize("body,status,message", BAD_JOBS, ids=[m for _, _, m in BAD_JOBS])
def test_bad_job_is_refused_with_a_message_and_nothing_written(http, body, status, message):
    before = _job_count(http)
    resp = http.post("/v1/jobs", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert message in error["message"] and error["code"] == status
    assert _job_count(http) == before


def test_malformed_json_is_a_400(http):
    before = _job_count(http)
    resp = http.post("/v1/jobs", content=b'{"program": ', headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "malformed JSON in the request body"
    assert _job_count(http) == before


def test_a_batch_with_one_bad_job_writes_none(http):
    before = _job_count(http)
    resp = http.post("/v1/jobs/batch", json={"jobs": [{"program": "noop"}, {"program": "nope:x"}]})
    assert resp.status_code == 422
    assert _job_count(http) == before


@pytest.mark.parametrize("path,status", [
    ("/v1/jobs/999999", 404), ("/v1/jobs/0", 422), ("/v1/jobs/99999999999", 422),
    ("/v1/jobs/abc", 404), ("/v1/nothing", 404), ("/v1/artifacts/999999", 404),
    ("/v1/jobs?state=DREAMING", 422), ("/v1/jobs?limit=0", 422),
    ("/v1/jobs/1/logs?stream=both", 422),
])
def test_lookups_answer_json_errors(http, path, status):
    resp = http.get(path)
    assert resp.status_code == status
    assert resp.json()["error"]["message"]


def test_cancel_of_an_unknown_job_is_404_and_of_an_ended_one_409(http, daemon):
    assert http.post("/v1/jobs/424242/cancel").status_code == 404
    job = daemon.client.jobs.submit("noop")
    daemon.wait_job(job["id"])
    resp = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 409 and "already ended" in resp.json()["error"]["message"]


def test_openapi_schema_is_valid(http):
    schema = http.get("/openapi.json").json()
    validate(schema)
    assert {"/v1/jobs", "/v1/jobs/{job_id}/logs", "/v1/artifacts", "/v1/resources",
            "/healthz"} <= set(schema["paths"])


def test_artifact_round_trip_with_lineage(http):
    first = http.post("/v1/artifacts", params={"name": "raw.txt", "kind": "text"},
                      content=b"raw").json()
    second = http.post("/v1/artifacts", params={"name": "clean.txt", "parents": str(first["id"])},
                       content=b"clean").json()
    assert second["parents"] == [first["id"]]
    got = http.get(f"/v1/artifacts/{second['id']}/content")
    assert got.content == b"clean" and got.headers["x-llmos-sha256"] == second["sha256"]


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ".hidden", "x\x00y", ""])
def test_artifact_names_cannot_traverse_paths(http, name):
    before = _artifact_count(http)
    resp = http.post("/v1/artifacts", params={"name": name}, content=b"x")
    assert resp.status_code == 422
    assert _artifact_count(http) == before


def test_a_corrupted_artifact_is_an_error_never_data(http, daemon):
    art = http.post("/v1/artifacts", params={"name": "w.bin"}, content=b"precious").json()
    blob = daemon.home / "artifacts" / "blobs" / art["sha256"][:2] / art["sha256"][2:]
    os.chmod(blob, stat.S_IWUSR | stat.S_IRUSR)
    blob.write_bytes(b"tampered")
    resp = http.get(f"/v1/artifacts/{art['id']}/content")
    assert resp.status_code == 500
    assert "corrupted" in resp.json()["error"]["message"]
    assert b"tampered" not in resp.content


def test_upload_over_the_size_limit_is_413_and_stores_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_MAX_UPLOAD_MB": "1"}).start()
    try:
        with live.http() as http:
            resp = http.post("/v1/artifacts", params={"name": "big.bin"},
                             content=iter([b"x" * (1 << 19)] * 3))  # streamed, no length
            assert resp.status_code == 413
            assert http.get("/v1/artifacts").json()["artifacts"] == []
        assert list((home / "artifacts" / "tmp").iterdir()) == []
    finally:
        live.stop()


def test_job_logs_of_a_running_job_are_readable(http, daemon, tmp_path):
    job = daemon.client.jobs.submit(program("gated"), {"marker_dir": str(tmp_path),
                                    "gate": str(tmp_path / "gate")})
    daemon.wait_job(job["id"], states=("RUNNING",))
    resp = http.get(f"/v1/jobs/{job['id']}/logs", params={"stream": "stdout"})
    assert resp.status_code == 200 and f"attempt 1 of job {job['id']}" in resp.text
    (tmp_path / "gate").write_text("open")
    daemon.wait_job(job["id"])
