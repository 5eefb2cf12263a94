"""The audit log records every state-changing request and every failed authentication,
and `llmos audit verify` names the first record that was changed, removed or reordered
behind its back."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import httpx
import pytest

from live import program


def llmos(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args],
                          env=daemon.cli_env(), capture_output=True, text=True, timeout=120)


def make_history(daemon) -> list[dict]:
    """Records 2..6 (record 1 is the first start's bootstrap)."""
    c = daemon.client
    job = c.jobs.submit("noop")
    daemon.wait_job(job["id"])
    c.artifacts.put(b"data", name="a.txt")
    with daemon.http() as http:
        http.post("/v1/jobs/999/cancel")  # refused: recorded with its outcome
    httpx.post(f"{daemon.url}/v1/jobs", json={"program": "noop"},
               headers={"Authorization": "Bearer llmos_not-a-token"})
    c.jobs.submit(program("sleep_long"), {})
    return list(reversed(c.audit.list(limit=100)))


def test_writes_and_failed_logins_are_recorded_with_actor_outcome_and_request_id(daemon):
    records = make_history(daemon)
    assert [(r["actor"], r["action"], r["outcome"]) for r in records] == [
        ("system", "bootstrap", "created"),
        ("admin", "POST /v1/jobs", "201"), ("admin", "POST /v1/artifacts", "201"),
        ("admin", "POST /v1/jobs/{job_id}/cancel", "404"),
        ("anonymous@127.0.0.1", "auth failed: POST /v1/jobs", "401"),
        ("admin", "POST /v1/jobs", "201")]
    assert records[3]["target"] == "/v1/jobs/999/cancel"
    assert records[4]["detail"] == {"auth": "invalid token"}
    assert records[1]["detail"]["token"] == daemon.admin_token[:12]
    with daemon.http() as http:
        resp = http.post("/v1/jobs", json={"program": "noop"})
    assert daemon.client.audit.list(limit=1)[0]["request_id"] == resp.headers["x-request-id"]
    assert len(daemon.client.audit.list(action="cancel")) == 1
    # LIKE wildcards are plain characters: '%' matches no action, '_' only the one holding it
    assert daemon.client.audit.list(action="%") == []
    assert [r["action"] for r in daemon.client.audit.list(action="_")] == [
        "POST /v1/jobs/{job_id}/cancel"]
    assert "POST" not in llmos(daemon, "audit", "ls", "--action", "%").stdout
    ok = llmos(daemon, "audit", "verify")
    assert ok.returncode == 0 and "7 records, chain intact" in ok.stdout
    listed = llmos(daemon, "audit", "ls", "--action", "artifacts")
    assert listed.returncode == 0 and "POST /v1/artifacts" in listed.stdout


@pytest.mark.parametrize("tamper,first_bad,message", [
    ("UPDATE audit_log SET outcome = '200' WHERE id = 4", 4, "was changed after it was written"),
    ("UPDATE audit_log SET actor = 'admin' WHERE id = 5", 5, "was changed after it was written"),
    ("DELETE FROM audit_log WHERE id = 3", 4, "does not follow the record before it"),
    ("SWAP 3 4", 3, "does not follow the record before it"),
    ("DELETE FROM audit_log WHERE id = 6", None, "records were removed from its end"),
])
def test_tampering_is_found_and_the_first_bad_record_named(daemon, tamper, first_bad, message):
    make_history(daemon)
    db = sqlite3.connect(daemon.home / "llmos.db")
    if tamper.startswith("SWAP"):  # swap two records: move one aside to dodge the primary key
        a, b = tamper.split()[1:]
        db.execute(f"UPDATE audit_log SET id = 1000 WHERE id = {a}")
        db.execute(f"UPDATE audit_log SET id = {a} WHERE id = {b}")
        db.execute(f"UPDATE audit_log SET id = {b} WHERE id = 1000")
    else:
        db.execute(tamper)
    db.commit()
    db.close()
    verdict = daemon.client.audit.verify()
    assert not verdict["ok"]
    assert verdict["first_bad"] == first_bad
    assert message in verdict["message"]
    result = llmos(daemon, "audit", "verify")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_concurrent_writes_each_get_a_record_and_the_chain_holds(daemon):
    from concurrent.futures import ThreadPoolExecutor

    def submit(_):
        with daemon.http() as http:
            return http.post("/v1/jobs", json={"program": "noop"})

    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(submit, range(40))]
    assert statuses == [201] * 40
    assert len(daemon.client.audit.list(action="POST /v1/jobs", limit=1000)) == 40
    assert daemon.client.audit.verify() == {"ok": True, "records": 41, "first_bad": None,
                                            "message": "41 records, chain intact"}
