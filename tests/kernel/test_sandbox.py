"""The job sandbox holds a job's whole process tree and its limits, and keeps a job's
folder and token its own (kernel/executors/sandbox.py, cgroups.py).

Children that double-fork into sessions of their own used to outlive a cancel (5 of 5)
and to escape the memory limit (six such workers held 772 MB in a 200 MB job, which then
SUCCEEDED). Here they are cancelled with the job and counted against its memory; a job
cannot start more processes than LLMOS_JOB_MAX_PROCESSES; its folder and launch file are
its team user's alone; its token dies with its attempt.
"""

from __future__ import annotations

import json
import os
import stat
import uuid

import httpx
import psutil
import pytest

from live import PROGRAMS, LiveDaemon, program, wait_for


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory):
    home = tmp_path_factory.mktemp("sandbox") / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_JOB_MAX_PROCESSES": "48"}).start()
    yield live
    live.stop()
    live.client.close()


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if tag in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def test_children_in_sessions_of_their_own_are_cancelled_with_the_job(sandboxed):
    tag = f"tag-{uuid.uuid4().hex}"
    job = sandboxed.client.jobs.submit(
        program("runaway"), {"workers": 5, "mb": 1, "tag": tag, "then": "sleep"},
        memory_mb=1024)
    wait_for(lambda: len(_tagged(tag)) == 5, timeout=60, what="five detached workers")
    assert all(p.uids().real != 0 for p in _tagged(tag))  # not root: the team's user
    sandboxed.client.jobs.cancel(job["id"])
    assert sandboxed.wait_job(job["id"])["state"] == "CANCELLED"
    wait_for(lambda: not _tagged(tag), timeout=30, what="every worker to be gone")


def test_detached_workers_count_against_the_jobs_memory(sandboxed):
    tag = f"tag-{uuid.uuid4().hex}"
    job = sandboxed.client.jobs.submit(
        program("runaway"), {"workers": 6, "mb": 120, "tag": tag}, memory_mb=200)
    job = sandboxed.wait_job(job["id"], timeout=120)
    assert job["state"] == "FAILED"
    assert "memory limit" in job["reason"] and "200 MB" in job["reason"]
    wait_for(lambda: not _tagged(tag), timeout=30, what="every worker to be gone")


def test_a_job_cannot_start_more_processes_than_its_cap(sandboxed):
    job = sandboxed.client.jobs.submit(program("fork_many"), {"count": 200})
    job = sandboxed.wait_job(job["id"], timeout=120)
    assert job["state"] == "FAILED"
    assert "Resource temporarily unavailable" in sandboxed.client.jobs.logs(job["id"])
    started = int((sandboxed.home / "jobs" / str(job["id"]) / "started").read_text())
    assert 0 < started < 48
    # and the daemon, the team and the machine go on
    after = sandboxed.client.jobs.submit("noop")
    assert sandboxed.wait_job(after["id"])["state"] == "SUCCEEDED"


def test_a_jobs_folder_and_token_are_its_own_and_the_token_dies_with_it(sandboxed):
    job = sandboxed.client.jobs.submit(program("own_token"), {})
    assert sandboxed.wait_job(job["id"])["state"] == "SUCCEEDED"
    folder = sandboxed.home / "jobs" / str(job["id"])
    info = folder.stat()
    assert info.st_uid != 0 and stat.S_IMODE(info.st_mode) == 0o700
    launch = (folder / "launch.claimed.json").stat()
    assert launch.st_uid == info.st_uid and stat.S_IMODE(launch.st_mode) == 0o600
    sandboxed.client.artifacts.put(b"x", name="x", sensitive=True)  # makes keys.json
    home = sandboxed.home.stat()
    assert stat.S_IMODE(home.st_mode) == 0o700  # whatever the umask (the tests run with 0)
    for secret in ("llmos.db", "keys.json", "credentials.json"):
        assert stat.S_IMODE(os.stat(sandboxed.home / secret).st_mode) == 0o600, secret
    token = (folder / "token").read_text()
    resp = httpx.get(f"{sandboxed.url}/v1/auth/whoami",
                     headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert "no longer running" in resp.json()["error"]["message"]


def test_without_isolation_llmos_says_so_and_refuses_a_second_teams_jobs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_SANDBOX": "off"}).start()
    try:
        assert "warning: jobs are not isolated" in live.log()
        job = live.client.jobs.submit("noop")  # one team: allowed, with the warning
        assert live.wait_job(job["id"])["state"] == "SUCCEEDED"
        live.client.teams.create("second")
        resp = live.http().post("/v1/jobs", json={"program": "noop"})
        assert resp.status_code == 409
        message = resp.json()["error"]["message"]
        assert "not isolated" in message and "LLMOS_REQUIRE_ISOLATION=auto" in message
    finally:
        live.stop()
        live.client.close()


def test_a_read_root_above_llmos_home_shows_its_files_but_never_the_home(tmp_path):
    """An ingest root that holds LLMOS_HOME (a careless setting) is bound into jobs whole,
    and LLMOS_HOME is hidden again inside it; a key file kept there is masked."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("words for the job")
    home = tmp_path / "home"
    home.mkdir()
    key_file = tmp_path / "keys.json"
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": f"{tmp_path}:{PROGRAMS.parent}",
                                 "LLMOS_KEY_FILE": str(key_file)}).start()
    try:
        live.client.artifacts.put(b"x", name="x", sensitive=True)  # writes the key file
        dev = live.user("dana", team="default")
        job = dev.jobs.submit(program("probe_paths"), {"paths": [
            str(tmp_path / "data" / "corpus.txt"), str(home), str(key_file),
            str(home / "credentials.json")]})
        assert live.wait_job(job["id"])["state"] == "SUCCEEDED"
        seen = json.loads((home / "jobs" / str(job["id"]) / "probe.json").read_text())
        assert seen[str(tmp_path / "data" / "corpus.txt")] == "words for the job"
        assert seen[str(home)] == ["jobs"]
        assert seen[str(key_file)].startswith("blocked")  # masked
        assert seen[str(home / "credentials.json")].startswith("blocked")
    finally:
        live.stop()
        live.client.close()


def test_a_job_inherits_what_programs_need_of_the_daemons_environment_never_its_secrets(
        tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"AWS_SECRET_ACCESS_KEY": "aws-secret", "HF_TOKEN": "hf-token",
                                 "SOME_SERVICE_URL": "https://user:pw@example.com",
                                 "HF_HUB_OFFLINE": "1", "MY_SETTING": "kept",
                                 "LLMOS_JOB_ENV": "MY_SETTING"}).start()
    try:
        job = live.client.jobs.submit(program("environment"), {"out": "env.json"})
        assert live.wait_job(job["id"])["state"] == "SUCCEEDED"
        env = json.loads((home / "jobs" / str(job["id"]) / "env.json").read_text())["env"]
        for secret in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "SOME_SERVICE_URL"):
            assert secret not in env
        assert not [k for k in env if k.startswith("LLMOS_")]
        assert env["HF_HUB_OFFLINE"] == "1" and env["MY_SETTING"] == "kept"
        assert env["PATH"] and env["HOME"] == str(home / "jobs" / str(job["id"]))
    finally:
        live.stop()
        live.client.close()
