"""A job of team B attacks the live daemon from inside: every way out fails.

The attack program (``programs.escape``) is what a real attack on llmos did (issue 13):
read the administrator's credentials, the encryption and audit keys, other jobs' launch
files (their tokens) and logs, the stored blobs; write the database directly; read the
daemon's environment and memory through /proc; signal the daemon and another team's job;
become root; change llmos's own code; reach another team's artifact or mint an admin
token through the API; reach a service on the host's loopback (PostgreSQL here, which
trusts local connections: a job has no network, only the API's socket). Then it plants links to the secrets in place of its own log and
event files, and fails, so that its retry makes the daemon open them again.

This machine (and CI) runs the daemon as root with bubblewrap: jobs must be sandboxed.
Where they are not, the first test fails and says why; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path

import pytest

from live import PROGRAMS, LiveDaemon, program, wait_for


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    home = tmp_path_factory.mktemp("escape") / "home"
    home.mkdir()
    # members of teams run the test programs: their folder is a root they may read
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": str(PROGRAMS.parent)}).start()
    yield live
    live.stop()
    live.client.close()


def test_jobs_run_sandboxed_here(attacked):
    """`llmos up` and /v1/resources say how jobs are isolated; on a root daemon with
    bubblewrap, fully."""
    isolation = attacked.client.resources()["isolation"]
    assert isolation["level"] == "full", f"jobs are not sandboxed here: {isolation['detail']}"
    assert "jobs: sandboxed" in attacked.log()


def test_a_hostile_job_reaches_nothing_that_is_not_its_own(attacked):
    d = attacked
    alice = d.user("alice", team="alpha")
    bob = d.user("bob", team="bravo")
    secret_text = b"alpha's sensitive numbers " + uuid.uuid4().hex.encode()
    secret = alice.artifacts.put(secret_text, name="secret.txt", sensitive=True)
    victim = alice.jobs.submit(program("sleep_long"), {"seconds": 600})
    victim = d.wait_job(victim["id"], states=("RUNNING",))
    wait_for(lambda: (d.home / "jobs" / str(victim["id"]) / "launch.claimed.json").exists(),
             what="the victim job to claim its launch")

    keys_before = _digest(d.home / "keys.json")
    credentials_before = (d.home / "credentials.json").read_text()
    probe = Path(sys.prefix) / f"llmos-escape-probe-{uuid.uuid4().hex}"
    probe.write_text("")
    probe.chmod(0o666)  # writable by anyone: only a read-only system stops the job
    host_tmp = Path("/tmp") / f"llmos-escape-{uuid.uuid4().hex}"
    targets = {
        "home": str(d.home),
        "credentials": str(d.home / "credentials.json"),
        "keys": str(d.home / "keys.json"),
        "audit_key": str(d.home / "audit.key"),
        "db": str(d.home / "llmos.db"),
        "other_job_dir": str(d.home / "jobs" / str(victim["id"])),
        "other_job_pid": victim["pid"],
        "daemon_pid": d.proc.pid,
        "source": str(probe),
        "other_artifact": secret["id"],
        "host_tmp_file": str(host_tmp),
    }
    try:
        job = bob.jobs.submit(program("escape"), {"targets": targets}, max_retries=1)
        job = d.wait_job(job["id"], timeout=120)
        report = json.loads((d.home / "jobs" / str(job["id"]) / "report.json").read_text())

        own_tmp = report.pop("write into the host's /tmp")
        escaped = {name: got for name, got in report.items() if not got.startswith("blocked")}
        assert not escaped, f"the job got out: {json.dumps(escaped, indent=1)}"
        assert len(report) == 20, report
        # refused for the right reasons: out of sight, read-only, not there, not allowed
        assert "Read-only file system" in report["change llmos's own code"]
        assert "ProcessLookupError" in report["kill another team's job"]
        assert "ProcessLookupError" in report["signal the daemon"]
        assert "404" in report["read another team's artifact through the API"]
        assert "403" in report["mint an administrator's token through the API"]
        assert "ConnectionRefused" in report["reach a service on the host's loopback"]
        # its /tmp is its own: what it wrote there never reached the host's
        assert own_tmp.startswith("ESCAPED") and not host_tmp.exists()
        assert probe.read_text() == ""

        # the planted links made the daemon neither leak nor damage its secrets
        assert job["state"] == "FAILED" and job["attempt"] == 2
        logs = bob.jobs.logs(job["id"])
        assert d.admin_token not in logs and "llmos_" not in logs
        assert _digest(d.home / "keys.json") == keys_before
        assert (d.home / "credentials.json").read_text() == credentials_before
        assert d.client.jobs.metrics(job["id"]) == []

        # and nothing changed for anyone else
        assert "intruder" not in {u["name"] for u in d.client.users.list()}
        assert d.client.jobs.get(victim["id"])["state"] == "RUNNING"
        assert alice.artifacts.read(secret["id"]) == secret_text
        assert d.client.health()["status"] == "ok"
    finally:
        probe.unlink(missing_ok=True)
        host_tmp.unlink(missing_ok=True)
        d.client.jobs.cancel(victim["id"])


def test_an_ordinary_job_still_uses_its_whole_context_in_the_sandbox(attacked):
    bob = attacked.user("bob2", team="bravo")
    job = bob.jobs.submit(program("full_context"), {})
    job = attacked.wait_job(job["id"], timeout=120)
    assert job["state"] == "SUCCEEDED", bob.jobs.logs(job["id"])
    made = bob.artifacts.list(job_id=job["id"])
    assert {a["name"] for a in made} == {"input.txt", "output.txt"}
    output = next(a for a in made if a["name"] == "output.txt")
    assert bob.artifacts.read(output["id"]) == b"input bytes + more"
    assert [m["value"] for m in bob.jobs.metrics(job["id"])] == [1.0, 0.5, 0.25]
    assert "reporting from the sandbox" in bob.jobs.logs(job["id"])
    folder = attacked.home / "jobs" / str(job["id"])
    assert (folder / "checkpoints" / "LATEST").read_text() == "1"
    # who it ran as: the team's own system user, in its own PID namespace
    seen = json.loads((folder / "seen.json").read_text())
    assert seen["user"] == "llmos-t-bravo" and seen["uid"] != 0
    assert seen["pids"] <= 4


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reports_a_job_poisons_do_not_stop_the_daemon_for_anyone(attacked):
    """Deeply nested JSON in its event and result files, a step beyond 64 bits, NULs: the
    daemon skips what it cannot read or keep, and every other job goes on."""
    bob = attacked.user("bob3", team="bravo")
    carol = attacked.user("carol", team="alpha")
    poison = bob.jobs.submit(program("poison_reports"), {})
    ordinary = carol.jobs.submit(program("full_context"), {})
    assert attacked.wait_job(ordinary["id"], timeout=120)["state"] == "SUCCEEDED"
    ended = attacked.wait_job(poison["id"], timeout=120)
    assert ended["state"] in ("SUCCEEDED", "FAILED")
    metrics = {m["name"]: m for m in bob.jobs.metrics(poison["id"])}
    assert metrics["fine"]["step"] == 2 and metrics["huge step"]["step"] is None
    assert metrics["nulname"]["value"] == 2.0
    after = carol.jobs.submit("noop")
    assert attacked.wait_job(after["id"])["state"] == "SUCCEEDED"
