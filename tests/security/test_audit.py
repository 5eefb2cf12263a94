"""The audit log records every state-changing request, and `llmos audit verify` names
the first record that was changed, removed or reordered behind its back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import httpx
import pytest

from live import program


def llmos(daemon, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_URL=daemon.url, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def make_history(daemon) -> list[dict]:
    c = daemon.client
    job = c.jobs.submit("noop")
    daemon.wait_job(job["id"])
    c.artifacts.put(b"data", name="a.txt")
    httpx.post(f"{daemon.url}/v1/jobs/999/cancel")  # refused: recorded with its outcome
    c.jobs.submit(program("sleep_long"), {})
    records = c.audit.list(limit=100)
    return list(reversed(records))


def test_writes_are_recorded_with_outcome_and_request_id(daemon):
    records = make_history(daemon)
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("POST /v1/jobs", "201"), ("POST /v1/artifacts", "201"),
        ("POST /v1/jobs/{job_id}/cancel", "404"), ("POST /v1/jobs", "201")]
    assert records[2]["target"] == "/v1/jobs/999/cancel"
    assert all(r["actor"] == "anonymous@127.0.0.1" for r in records)
    resp = httpx.post(f"{daemon.url}/v1/jobs", json={"program": "noop"})
    assert daemon.client.audit.list(limit=1)[0]["request_id"] == resp.headers["x-request-id"]
    assert len(daemon.client.audit.list(action="cancel")) == 1
    ok = llmos(daemon, "audit", "verify")
    assert ok.returncode == 0 and "5 records, chain intact" in ok.stdout
    listed = llmos(daemon, "audit", "ls", "--action", "artifacts")
    assert listed.returncode == 0 and "POST /v1/artifacts" in listed.stdout


@pytest.mark.parametrize("tamper,first_bad,message", [
    ("UPDATE audit_log SET outcome = '200' WHERE id = 3", 3, "was changed after it was written"),
    ("DELETE FROM audit_log WHERE id = 2", 3, "does not follow the record before it"),
    ("UPDATE audit_log SET id = CASE id WHEN 2 THEN 3 ELSE 2 END WHERE id IN (2, 3)", 2,
     "does not follow the record before it"),
    ("DELETE FROM audit_log WHERE id = 4", None, "records were removed from its end"),
])
def test_tampering_is_found_and_the_first_bad_record_named(daemon, tamper, first_bad, message):
    make_history(daemon)
    db = sqlite3.connect(daemon.home / "llmos.db")
    if "CASE" in tamper:  # swap two records: move one aside to dodge the primary key
        db.execute("UPDATE audit_log SET id = 1000 WHERE id = 2")
        db.execute("UPDATE audit_log SET id = 2 WHERE id = 3")
        db.execute("UPDATE audit_log SET id = 3 WHERE id = 1000")
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
        return httpx.post(f"{daemon.url}/v1/jobs", json={"program": "noop"}, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(submit, range(40))]
    assert statuses == [201] * 40
    assert len(daemon.client.audit.list(action="POST /v1/jobs", limit=1000)) == 40
    assert daemon.client.audit.verify() == {"ok": True, "records": 40, "first_bad": None,
                                            "message": "40 records, chain intact"}
