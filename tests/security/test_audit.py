"""The audit log records every state-changing request, every failed authentication,
every read of a sensitive artifact and every use of administrator power (never a serving
worker's heartbeat), with what a request created; and `llmos audit verify` names the first
record that was changed, removed or reordered behind its back — even by someone who can
write the database and recompute an unkeyed chain, since the chain is keyed (HMAC) and
anchored in a file outside the database."""

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
    assert records[1]["detail"]["created"]["id"] == 1  # the job the request created
    assert records[2]["detail"]["created"]["id"] == 1  # the artifact
    with daemon.http() as http:
        resp = http.post("/v1/jobs", json={"program": "noop"})
    assert daemon.client.audit.list(limit=1)[0]["request_id"] == resp.headers["x-request-id"]
    assert len(daemon.client.audit.list(action="cancel")) == 1
    # LIKE wildcards are plain characters: '%' matches no action, '_' only the one holding it
    assert daemon.client.audit.list(action="%") == []
    assert [r["action"] for r in daemon.client.audit.list(action="_")] == [
        "POST /v1/jobs/{job_id}/cancel"]
    assert "POST" not in llmos(daemon, "audit", "ls", "--action", "%").stdout
    # Reading the audit log is an administrator's action: each of the 6 reads above
    # (make_history's, 4 lists, the CLI's) has its record.
    reads = daemon.client.audit.list(action="GET /v1/audit")
    assert len(reads) == 6 and reads[0]["detail"]["admin"] == ["reading the audit log"]
    ok = llmos(daemon, "audit", "verify")
    assert ok.returncode == 0 and "14 records, chain intact" in ok.stdout
    listed = llmos(daemon, "audit", "ls", "--action", "artifacts")
    assert listed.returncode == 0 and "POST /v1/artifacts" in listed.stdout


@pytest.mark.parametrize("tamper,first_bad,message", [
    ("UPDATE audit_log SET outcome = '200' WHERE id = 4", 4, "was changed after it was written"),
    ("UPDATE audit_log SET actor = 'admin' WHERE id = 5", 5, "was changed after it was written"),
    ("DELETE FROM audit_log WHERE id = 3", 4, "does not follow the record before it"),
    ("SWAP 3 4", 3, "does not follow the record before it"),
    # 7, the last: make_history's own reading of the log (an administrator's action)
    ("DELETE FROM audit_log WHERE id = 7", None, "records were removed from its end"),
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
    result = llmos(daemon, "audit", "verify")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    # Verifying is an administrator's action, recorded after its answer: the log stays
    # reported as tampered with.
    verdict = daemon.client.audit.verify()
    assert not verdict["ok"]


def test_concurrent_writes_each_get_a_record_and_the_chain_holds(daemon):
    from concurrent.futures import ThreadPoolExecutor

    def submit(_):
        with daemon.http() as http:
            return http.post("/v1/jobs", json={"program": "noop"})

    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(submit, range(40))]
    assert statuses == [201] * 40
    assert len(daemon.client.audit.list(action="POST /v1/jobs", limit=1000)) == 40
    # the bootstrap, 40 jobs and the listing just above (an administrator's read)
    assert daemon.client.audit.verify() == {"ok": True, "records": 42, "first_bad": None,
                                            "message": "42 records, chain intact"}


# -- someone who can write the database (not the key file) rewrites the log ------------------


def _forge(daemon, change, recompute_from: int | None) -> None:
    """Open the daemon's database as an attacker would (no audit key), apply ``change`` to
    the records, then recompute the hashes from record ``recompute_from`` on as the old
    unkeyed chain did (none when None) and fix the database's head to match."""
    from sqlalchemy import select

    from llmos.security.audit import GENESIS, record_hash
    from llmos.store import open_database
    from llmos.store.models import AuditHead, AuditRecord

    db = open_database(f"sqlite:///{daemon.home / 'llmos.db'}", migrate=False)
    try:
        with db.session() as s:
            change(s)
        with db.session() as s:
            prev, count = GENESIS, 0
            records = list(s.scalars(select(AuditRecord).order_by(AuditRecord.id)))
            start = recompute_from if recompute_from is not None else len(records) + 10**6
            for rec in records:
                if rec.id >= start:
                    rec.prev_hash = f"tmp-{rec.id}"  # prev_hash is unique: move aside first
            s.flush()
            for rec in records:
                if rec.id >= start:
                    rec.prev_hash = prev
                    rec.hash = record_hash(prev, rec.at, rec.actor, rec.action, rec.target,
                                           rec.outcome, rec.request_id, rec.detail)
                    s.flush()
                prev, count = rec.hash, count + 1
            head = s.get(AuditHead, 1)
            head.hash, head.count = prev, count
    finally:
        db.close()


def _tampered(daemon, first_bad, message) -> None:
    """The first verify names what is wrong; a second one (the CLI's, after the first
    verify's own record joined the log) still refuses the log."""
    verdict = daemon.client.audit.verify()
    assert (verdict["ok"], verdict["first_bad"]) == (False, first_bad), verdict
    assert message in verdict["message"]
    result = llmos(daemon, "audit", "verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "audit log tampered with" in result.stderr


def test_a_record_deleted_and_the_chain_recomputed_with_its_head_is_found(daemon):
    from llmos.store.models import AuditRecord

    make_history(daemon)
    _forge(daemon, lambda s: s.delete(s.get(AuditRecord, 3)), recompute_from=4)
    # record 4 now sits where 3 was, with a recomputed sha256: its MAC cannot match
    _tampered(daemon, 4, "record 4 was changed after it was written (its MAC does not match")


def test_the_whole_chain_rewritten_is_found(daemon):
    from sqlalchemy import update

    from llmos.store.models import AuditRecord

    make_history(daemon)
    _forge(daemon, lambda s: s.execute(update(AuditRecord).where(AuditRecord.actor == "admin")
                                       .values(actor="someone")), recompute_from=1)
    _tampered(daemon, 1, "record 1 was changed after it was written")


def test_the_tail_cut_off_with_the_head_fixed_is_found(daemon):
    from sqlalchemy import delete

    from llmos.store.models import AuditRecord

    records = make_history(daemon)  # 1..6, then the listing's own record, 7
    _forge(daemon, lambda s: s.execute(delete(AuditRecord).where(AuditRecord.id > 4)),
           recompute_from=None)
    assert records[-1]["id"] == 6
    _tampered(daemon, None, "the log ends after 4 records but 7 were written (the head file "
              "says so): records were removed from its end")


def test_a_removed_or_emptied_head_file_is_found(daemon):
    make_history(daemon)
    head = daemon.home / "audit.head"
    assert head.stat().st_mode & 0o777 == 0o600
    assert (daemon.home / "audit.key").stat().st_mode & 0o777 == 0o600
    lines = head.read_text().splitlines()
    assert len(lines) == 1 + 7 and '"legacy":0' in lines[0]  # header, then one per record
    head.unlink()
    _tampered(daemon, None, "audit.head is missing")
    head.write_text("")
    _tampered(daemon, None, "audit.head is empty: it was removed and made again")
    head.write_text("\n".join(lines) + "\n")  # put back: the records since are keyed
    assert daemon.client.audit.verify()["ok"]


def test_a_wrong_audit_key_refuses_the_start(daemon):
    daemon.stop()
    (daemon.home / "audit.key").write_text("A" * 43 + "=\n")
    result = subprocess.run([sys.executable, "-m", "llmos.cli.main", "up", "--port",
                             str(daemon.port)], env=daemon.env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "llmos will not start: key 'audit' from" in message
    assert "is not the key that id named before" in message


# -- what gets a record -----------------------------------------------------------------------


def test_sensitive_reads_and_administrator_actions_are_recorded_with_what_they_made(daemon):
    c = daemon.client
    secret = c.artifacts.put(b"the merger closes on friday", name="memo.txt", sensitive=True)
    public = c.artifacts.put(b"public words", name="public.txt")
    assert c.artifacts.read(secret["id"]) == b"the merger closes on friday"
    assert c.artifacts.read(public["id"]) == b"public words"
    bob = daemon.user("bob", role="viewer")
    assert bob.artifacts.read(secret["id"]) == b"the merger closes on friday"
    c.users.list()

    reads = c.audit.list(action="/content")
    assert [(r["actor"], r["target"], r["outcome"], r["detail"]["read"]) for r in reads] == [
        ("bob", f"/v1/artifacts/{secret['id']}/content", "200", [f"artifact {secret['id']}"]),
        ("admin", f"/v1/artifacts/{secret['id']}/content", "200",
         [f"artifact {secret['id']}"])]  # newest first; the public read has no record
    made = c.audit.list(action="POST /v1/users")[0]
    assert made["detail"]["created"] == {"name": "bob"}
    assert "creating users" in made["detail"]["admin"]
    assert "token" not in str(made["detail"]["created"])  # never the new user's secret
    listed = c.audit.list(action="GET /v1/users")[0]
    assert (listed["actor"], listed["detail"]["admin"]) == ("admin", ["listing users"])
    put = c.audit.list(action="POST /v1/artifacts", limit=2)
    assert [r["detail"]["created"]["id"] for r in put] == [public["id"], secret["id"]]
    assert c.audit.verify()["ok"]


def test_serving_heartbeats_are_not_recorded_unless_refused():
    """The gate asks ``should_record`` for every request; a worker's heartbeat (every 2 s
    per worker) is the one write it skips, unless it was refused."""
    from llmos.security.audit import RequestNotes, should_record

    beat = "PUT /v1/serving/workers/{job_id}"
    assert not should_record("PUT", beat, 200, RequestNotes())
    assert should_record("PUT", beat, 403, RequestNotes())
    assert should_record("POST", "POST /v1/jobs", 201, RequestNotes())
    assert not should_record("GET", "GET /v1/jobs", 200, RequestNotes())
    assert should_record("GET", "GET /v1/users", 200, RequestNotes(admin=["listing users"]))
    assert should_record("GET", "GET /v1/artifacts/{artifact_id}/content", 200,
                         RequestNotes(reads=["artifact 3"]))


# -- a store from before keyed chains ----------------------------------------------------------


def _unkeyed_chain(db, n: int, break_at: int | None = None) -> None:
    """``n`` records chained as llmos wrote them before keyed chains (sha256, no key)."""
    from llmos.security.audit import GENESIS, record_hash
    from llmos.store.models import AuditHead, AuditRecord, utcnow

    prev = GENESIS
    with db.session() as s:
        for i in range(1, n + 1):
            at = utcnow()
            digest = record_hash(prev, at, "alice", "POST /v1/jobs", "/v1/jobs", "201",
                                 f"req-{i}", {})
            s.add(AuditRecord(at=at, actor="alice", action="POST /v1/jobs", target="/v1/jobs",
                              outcome="201" if i != break_at else "500",
                              request_id=f"req-{i}", detail={}, prev_hash=prev, hash=digest))
            s.flush()
            prev = digest
        s.add(AuditHead(id=1, hash=prev, count=n))


def test_an_unkeyed_chain_from_before_is_checked_once_then_continued_keyed(tmp_path):
    from llmos.security.audit import AuditLog, record_hash
    from llmos.security.rbac import SYSTEM
    from llmos.store import open_database
    from llmos.store.models import AuditRecord

    db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
    try:
        _unkeyed_chain(db, 3)
        log = AuditLog(db, tmp_path / "audit.key", tmp_path / "audit.head")
        log.append("bob", "POST /v1/jobs", "/v1/jobs", "201")
        assert log.verify(SYSTEM).message == "4 records, chain intact"
        # Rewriting the old records (recomputing their unkeyed hashes) breaks the keyed one
        # that follows them.
        with db.session() as s:
            rec = s.get(AuditRecord, 3)
            rec.actor = "mallory"
            rec.hash = record_hash(rec.prev_hash, rec.at, rec.actor, rec.action, rec.target,
                                   rec.outcome, rec.request_id, rec.detail)
        verdict = log.verify(SYSTEM)
        assert (verdict.ok, verdict.first_bad) == (False, 3)
        assert "is not the last record from before the chain was keyed" in verdict.message
    finally:
        db.close()


def test_an_unkeyed_chain_that_does_not_check_is_not_adopted(tmp_path):
    from llmos.security.audit import AuditLog
    from llmos.security.rbac import SYSTEM
    from llmos.store import open_database

    db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
    try:
        _unkeyed_chain(db, 3, break_at=2)
        log = AuditLog(db, tmp_path / "audit.key", tmp_path / "audit.head")
        verdict = log.verify(SYSTEM)
        assert not verdict.ok and "audit.head is missing" in verdict.message
    finally:
        db.close()
