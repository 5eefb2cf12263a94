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
    ({"program": "noop", "resources": {"gpu_share_mb": 4096}}, 422,
     "needs a 4096 MB share of a gpu"),
    ({"program": "noop", "resources": {"gpu": 1, "gpu_share_mb": 4096}}, 422, "exclude each other"),
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
    assert resp.json()["error"]["message"] == "program 'nope:x': no module named 'nope'"
    assert _job_count(http) == before


@pytest.mark.parametrize("path,status,message", [
    ("/v1/jobs/999999", 404, "job 999999 not found"),
    ("/v1/jobs/0", 422, "path.job_id: Input should be greater than or equal to 1"),
    ("/v1/jobs/99999999999", 422, "path.job_id: Input should be less than or equal to "
     "2147483647"),
    ("/v1/jobs/abc", 404, "no such route: GET /v1/jobs/abc"),
    ("/v1/nothing", 404, "no such route: GET /v1/nothing"),
    ("/v1/artifacts/999999", 404, "artifact 999999 not found"),
    ("/v1/jobs?state=DREAMING", 422, "unknown state 'DREAMING'; one of PENDING, SCHEDULED, "
     "RUNNING, SUCCEEDED, FAILED, CANCELLED, PREEMPTED"),
    ("/v1/jobs?limit=0", 422, "query.limit: Input should be greater than or equal to 1"),
    ("/v1/jobs/1/logs?stream=both", 422, "query.stream: Input should be 'stdout' or 'stderr'"),
])
def test_lookups_answer_json_errors(http, path, status, message):
    resp = http.get(path)
    assert resp.status_code == status
    assert resp.json()["error"] == {"message": message, "code": status, "type": (
        "not_found_error" if status == 404 else "invalid_request_error")}


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


@pytest.mark.parametrize("name,message", [
    *[(bad, f"bad artifact name {bad!r}: use letters, digits, '.', '_', '-', '+', '@' and "
       "spaces, no folders") for bad in ("../etc/passwd", "a/b", ".hidden", "x\x00y")],
    ("", "query.name: String should have at least 1 character"),
])
def test_artifact_names_cannot_traverse_paths(http, name, message):
    before = _artifact_count(http)
    resp = http.post("/v1/artifacts", params={"name": name}, content=b"x")
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == message
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


@pytest.mark.parametrize("path,body", [
    ("/v1/jobs", {"program": "noop", "depends_on": [2**63]}),
    ("/v1/jobs", {"program": "noop", "depends_on": [2**31]}),  # ids are 32-bit columns
    ("/v1/jobs/batch", {"jobs": [{"program": "noop", "depends_on": [2**63]}]}),
    ("/v1/jobs", {"program": "noop", "resources": {"gpu_memory_mb": 2**63}}),
    ("/v1/deployments", {"model": "m", "max_batch": 2**64}),
    ("/v1/chat/completions", {"model": "m", "seed": 2**64,
                              "messages": [{"role": "user", "content": "hi"}]}),
])
def test_integers_beyond_their_column_are_refused_never_a_500(http, path, body):
    before = _job_count(http)
    resp = http.post(path, json=body)
    assert resp.status_code in (400, 422), resp.text
    assert "less than or equal to" in resp.json()["error"]["message"]
    assert _job_count(http) == before


def test_bodies_and_job_params_are_capped_with_a_413(http):
    before = _job_count(http)
    big = {"program": "noop", "params": {"text": "x" * (2 << 20)}}  # 2 MB of params
    resp = http.post("/v1/jobs", json=big)
    assert resp.status_code == 413
    assert "LLMOS_MAX_JOB_PARAMS_KB" in resp.json()["error"]["message"]
    huge = b'{"program": "noop", "params": {"text": "' + b"x" * (33 << 20) + b'"}}'
    for content in (huge, iter([huge[i:i + (1 << 20)] for i in range(0, len(huge), 1 << 20)])):
        resp = http.post("/v1/jobs", content=content,  # with a length, then streamed without
                         headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert resp.json()["error"] == {
            "message": "the request body is larger than 32 MB (LLMOS_MAX_BODY_MB)",
            "type": "invalid_request_error", "code": 413}
    assert _job_count(http) == before
    listed = http.get("/v1/jobs", params={"limit": 10})
    assert len(listed.content) < 1 << 20


def test_openai_routes_read_json_whatever_the_content_type(http):
    """curl -d sends application/x-www-form-urlencoded; the body is still JSON."""
    for route, body in (("/v1/chat/completions",
                         b'{"model": "nobody", "messages": [{"role": "user", "content": "hi"}]}'),
                        ("/v1/completions", b'{"model": "nobody", "prompt": "hi"}'),
                        ("/v1/embeddings", b'{"model": "nobody", "input": "hi"}'),
                        ("/v1/classify", b'{"model": "nobody", "input": "hi"}')):
        for ctype in ("application/x-www-form-urlencoded", "text/plain", None):
            headers = {"content-type": ctype} if ctype else {}
            resp = http.post(route, content=body, headers=headers)
            assert resp.status_code == 404, (route, ctype, resp.text)  # parsed: no such model
            assert resp.json()["error"]["code"] == "model_not_found"
    resp = http.post("/v1/chat/completions", content=b"model=nobody",
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "malformed JSON in the request body"
