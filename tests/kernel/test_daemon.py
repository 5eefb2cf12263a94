"""The kernel end to end: a live `llmos up`, jobs as real sandboxed processes."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime

import psutil
import pytest

from live import LiveDaemon, program, wait_for
from llmos.sdk import APIError, job_spec


def _t(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def _interval(job: dict) -> tuple[float, float]:
    """From binding (resources taken) to the end (resources freed)."""
    scheduled = [t["at"] for t in job["transitions"] if t["to_state"] == "SCHEDULED"]
    return _t(scheduled[0]), _t(job["ended_at"])


def test_200_jobs_all_succeed_and_never_oversubscribe_the_machine(daemon):
    jobs = daemon.client.jobs.submit_many([job_spec("noop")] * 200)
    assert len(jobs) == 200
    daemon.wait_all([j["id"] for j in jobs], timeout=240)
    done = [daemon.client.jobs.get(j["id"]) for j in jobs]
    assert {j["state"] for j in done} == {"SUCCEEDED"}, \
        {(j["state"], j["reason"]) for j in done if j["state"] != "SUCCEEDED"}
    # Sweep the recorded intervals: cpus in use never exceed the node's 2 cores, and
    # no core is handed to two jobs at once.
    events = []
    for j in done:
        start, end = _interval(j)
        assert start <= end
        events += [(start, 1, j), (end, -1, j)]
    in_use: dict[int, dict] = {}
    for _, kind, j in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 1:
            in_use[j["id"]] = j
            assert sum(x["resources"]["cpu"] for x in in_use.values()) <= 2
            cores = [c for x in in_use.values() for c in x["allocation"]["cores"]]
            assert len(cores) == len(set(cores)), "a core was given to two jobs at once"
        else:
            in_use.pop(j["id"])


def test_high_priority_job_starts_before_50_queued_low_priority_jobs(daemon, tmp_path):
    gate = tmp_path / "gate"
    blocker = daemon.client.jobs.submit(program("gated"), {"marker_dir": str(tmp_path),
                                        "gate": str(gate)}, cpu=2)
    daemon.wait_job(blocker["id"], states=("RUNNING",))
    lows = daemon.client.jobs.submit_many([job_spec("noop", priority="low")] * 50)
    high = daemon.client.jobs.submit("noop", priority="high")
    queued = daemon.client.jobs.get(lows[0]["id"])
    assert queued["state"] == "PENDING" and queued["reason"] is not None
    gate.write_text("open")
    daemon.wait_all([j["id"] for j in lows] + [high["id"]], timeout=120)
    started = {j["id"]: _t(daemon.client.jobs.get(j["id"])["started_at"])
               for j in lows + [high]}
    first = min(started, key=started.get)
    assert first == high["id"]


def test_pending_job_says_why_it_waits(daemon, tmp_path):
    gate = tmp_path / "gate"
    running = daemon.client.jobs.submit(program("gated"), {"marker_dir": str(tmp_path),
                                        "gate": str(gate)}, cpu=1.5)
    daemon.wait_job(running["id"], states=("RUNNING",))
    big = daemon.client.jobs.submit("noop", cpu=2)
    after = daemon.client.jobs.submit("noop", depends_on=[big["id"]])
    wait_for(lambda: daemon.client.jobs.get(big["id"])["reason"] == "needs 2 cpu, 0.5 free",
             what="the cpu reason")
    wait_for(lambda: daemon.client.jobs.get(after["id"])["reason"] == f"after job {big['id']}",
             what="the dependency reason")
    gate.write_text("open")
    assert daemon.wait_job(after["id"])["state"] == "SUCCEEDED"


def _runner_of(folder) -> psutil.Process:
    """The host's view of a job's runner (inside its sandbox it has a pid of its own)."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if str(folder) in cmd and "llmos.kernel.executors._runner" in cmd:
            if p.name() != "bwrap":
                return p
    raise AssertionError(f"no runner for {folder}")


def test_kill_9_of_the_daemon_loses_no_job_and_runs_none_twice(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    gate = tmp_path / "gate"
    first = LiveDaemon(home).start()
    params = {"marker_dir": str(markers), "gate": str(gate)}
    jobs = first.client.jobs.submit_many(
        [job_spec(program("gated"), params, cpu=0.4, max_retries=1)] * 5)
    ids = [j["id"] for j in jobs]
    wait_for(lambda: len(list(markers.iterdir())) == 5, what="5 jobs to start")
    first.kill9()

    # While no daemon runs, one job's process dies: it must run again under its retries.
    victim = ids[0]
    os.kill(_runner_of(home / "jobs" / str(victim)).pid, signal.SIGKILL)

    second = LiveDaemon(home)
    second.port, second.url = first.port, first.url
    second.client = first.client
    second.start()
    try:
        running = wait_for(
            lambda: all(second.client.jobs.get(i)["state"] == "RUNNING" for i in ids),
            what="the four survivors adopted and the victim restarted")
        assert running
        gate.write_text("open")
        done = second.wait_all(ids)
        assert {j["state"] for j in done} == {"SUCCEEDED"}
        runs = sorted(m.name for m in markers.iterdir())
        for i in ids:
            attempts = [r for r in runs if r.startswith(f"{i}-")]
            assert len(attempts) == (2 if i == victim else 1), (i, attempts)
        victim_job = second.client.jobs.get(victim)
        assert victim_job["attempt"] == 2 and victim_job["failures"] == 1
        assert any("no daemon watched" in (t["reason"] or "")
                   for t in victim_job["transitions"])
    finally:
        second.stop()


def test_memory_limit_stops_the_job_and_says_so(daemon):
    job = daemon.client.jobs.submit(program("hog_memory"), memory_mb=200)
    ended = daemon.wait_job(job["id"])
    assert ended["state"] == "FAILED"
    assert "memory limit" in ended["reason"]


def test_timeout_stops_the_job_and_says_so(daemon):
    job = daemon.client.jobs.submit(program("sleep_long"), timeout_s=1)
    ended = daemon.wait_job(job["id"])
    assert ended["state"] == "FAILED"
    assert ended["reason"] == "timed out after 1s"
    assert ended["exit_code"] is not None or ended["signal"] is not None


def test_failures_are_retried_then_recorded(daemon):
    job = daemon.client.jobs.submit(program("fail"), {"message": "bad luck"}, max_retries=2)
    ended = daemon.wait_job(job["id"])
    assert ended["state"] == "FAILED"
    assert ended["attempt"] == 3 and ended["failures"] == 3
    assert ended["reason"] == "ValueError: bad luck"
    retries = [t["reason"] for t in ended["transitions"] if t["to_state"] == "PENDING"][1:]
    assert retries == ["ValueError: bad luck; retry 1 of 2", "ValueError: bad luck; retry 2 of 2"]
    assert ended["exit_code"] == 1
    assert "ValueError: bad luck" in daemon.client.jobs.logs(job["id"], stream="stderr")


def test_a_failed_dependency_fails_its_dependents(daemon):
    first = daemon.client.jobs.submit(program("fail"))
    second = daemon.client.jobs.submit("noop", depends_on=[first["id"]])
    third = daemon.client.jobs.submit("noop", depends_on=[second["id"]])
    assert daemon.wait_job(third["id"])["state"] == "FAILED"
    assert daemon.client.jobs.get(second["id"])["reason"] == (
        f"dependency job {first['id']} failed; not started")


def _alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` (started at ``started``, when given) still runs."""
    try:
        proc = psutil.Process(pid)
        same = started is None or abs(proc.create_time() - started) < 0.01
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancel_pending_running_and_ended_jobs(daemon):
    running = daemon.client.jobs.submit(program("sleep_long"), cpu=2)
    pid = daemon.wait_job(running["id"], states=("RUNNING",))["pid"]
    started = psutil.Process(pid).create_time()
    queued = daemon.client.jobs.submit("noop")
    assert daemon.client.jobs.cancel(queued["id"])["state"] == "CANCELLED"
    daemon.client.jobs.cancel(running["id"])
    ended = daemon.wait_job(running["id"])
    assert ended["state"] == "CANCELLED" and ended["reason"] == "cancelled by the user"
    assert not _alive(pid, started)
    with pytest.raises(APIError) as err:
        daemon.client.jobs.cancel(running["id"])
    assert err.value.status == 409
    # The queued job never started: no binding, no attempt, no folder.
    never = daemon.client.jobs.get(queued["id"])
    assert [t["to_state"] for t in never["transitions"]] == ["PENDING", "CANCELLED"]
    assert never["attempt"] == 0 and never["pid"] is None
    assert not (daemon.home / "jobs" / str(queued["id"])).exists()


def test_a_job_ignoring_sigterm_is_killed_after_the_grace_period_with_its_grandchildren(
        daemon, tmp_path):
    pids_file = tmp_path / "pids"
    job = daemon.client.jobs.submit(program("stubborn"), {"pids_file": str(pids_file)})
    wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3,
             what="the job, its child and its grandchild")
    # the pids it wrote are its own view (a sandbox has its own PID namespace): the host's
    # view of the same tree is the job's process and all its descendants
    root = psutil.Process(daemon.client.jobs.get(job["id"])["pid"])
    tree = [root, *root.children(recursive=True)]
    assert sum("python" in p.name() for p in tree) >= 3
    started = {p.pid: p.create_time() for p in tree}
    asked = time.time()
    daemon.client.jobs.cancel(job["id"])
    ended = daemon.wait_job(job["id"])
    assert ended["state"] == "CANCELLED" and ended["signal"] == signal.SIGKILL
    assert _t(ended["ended_at"]) - asked >= 2  # LLMOS_CANCEL_GRACE_S: SIGTERM, 2 s, SIGKILL
    wait_for(lambda: not any(_alive(pid, t) for pid, t in started.items()),
             what="the whole process tree to be gone")


def test_sandbox_environment(daemon, tmp_path, monkeypatch):
    out = tmp_path / "env.json"
    job = daemon.client.jobs.submit(program("environment"), {"out": str(out)})
    assert daemon.wait_job(job["id"])["state"] == "SUCCEEDED"
    seen = json.loads(out.read_text())
    job = daemon.client.jobs.get(job["id"])
    assert not [k for k in seen["env"] if k.startswith("LLMOS_")]
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert seen["affinity"] == sorted(int(c) for c in job["allocation"]["cores"])
    assert seen["cwd"] == str(daemon.home / "jobs" / str(job["id"]))
    assert seen["pgid_is_pid"] and seen["sid_is_pid"]


def test_system_calls_reach_the_api_while_the_job_runs(daemon, tmp_path):
    gate = tmp_path / "gate"
    job = daemon.client.jobs.submit(program("report"), {"gate": str(gate)})
    seen = wait_for(lambda: (j := daemon.client.jobs.get(job["id"]))["progress"]
                    and j["progress"]["done"] == 3 and j, what="progress while running")
    assert seen["state"] == "RUNNING" and seen["progress"]["total"] == 10
    metrics = wait_for(lambda: len(daemon.client.jobs.metrics(job["id"], "loss")) == 3
                       and daemon.client.jobs.metrics(job["id"], "loss"), what="metrics")
    assert [m["value"] for m in metrics] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    arts = wait_for(lambda: len(a := daemon.client.artifacts.list(job_id=job["id"])) == 2 and a,
                    what="both artifacts")
    output = next(a for a in arts if a["name"] == "output.txt")
    assert daemon.client.artifacts.read(output["id"]) == b"input bytes + more"
    assert len(output["parents"]) == 1 and output["job_id"] == job["id"]
    assert "INFO reporting" in daemon.client.jobs.logs(job["id"], stream="stderr")
    gate.write_text("open")
    assert daemon.wait_job(job["id"])["progress"]["done"] == 10


def test_logs_follow_streams_until_the_job_ends(daemon):
    job = daemon.client.jobs.submit("echo", {"message": "hello follow"})
    events = list(daemon.client.jobs.follow(job["id"]))
    assert ("stdout", "hello follow") in events
    assert events[-1][0] == "end" and json.loads(events[-1][1])["state"] == "SUCCEEDED"


def test_sigterm_stops_the_daemon_and_requeues_running_jobs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    first = LiveDaemon(home).start()
    job = first.client.jobs.submit("sleep", {"seconds": 60, "steps": 600})
    first.wait_job(job["id"], states=("RUNNING",))
    assert first.stop() in (0, -15)  # uvicorn re-raises SIGTERM after its clean shutdown
    assert "llmos daemon stopped cleanly" in first.log()
    second = LiveDaemon(home)
    second.port, second.url, second.client = first.port, first.url, first.client
    second.start()
    try:
        again = second.wait_job(job["id"], states=("RUNNING",))
        reasons = [t["reason"] for t in again["transitions"]]
        assert "requeued: the daemon shut down while it ran" in reasons
        assert again["attempt"] == 2 and again["failures"] == 0
        second.client.jobs.cancel(job["id"])
        assert second.wait_job(job["id"])["state"] == "CANCELLED"
    finally:
        second.stop()


def test_high_priority_job_preempts_a_checkpointable_low_one_which_resumes(daemon, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    low = daemon.client.jobs.submit(program("resumable"), {
        "steps": 100, "step_s": 0.05, "marker_dir": str(markers)}, cpu=2, priority="low",
        checkpointable=True)
    wait_for(lambda: (daemon.client.jobs.get(low["id"])["progress"] or {}).get("done", 0) >= 5,
             what="the low job to make progress")
    high = daemon.client.jobs.submit("noop", cpu=1, priority="high")
    assert daemon.wait_job(high["id"])["state"] == "SUCCEEDED"
    ended = daemon.wait_job(low["id"], timeout=120)
    assert ended["state"] == "SUCCEEDED"
    states = [t["to_state"] for t in ended["transitions"]]
    assert states == ["PENDING", "SCHEDULED", "RUNNING", "PREEMPTED", "PENDING", "SCHEDULED",
                      "RUNNING", "SUCCEEDED"]
    preempted = next(t for t in ended["transitions"] if t["to_state"] == "PREEMPTED")
    assert preempted["reason"] == f"preempted by higher-priority job {high['id']}"
    # The second attempt resumed from the checkpoint, not from step 0.
    runs = sorted(m.name for m in markers.iterdir())
    assert runs[0] == f"{low['id']}-1-from-0"
    assert runs[1].startswith(f"{low['id']}-2-from-") and not runs[1].endswith("-from-0")
    high_job = daemon.client.jobs.get(high["id"])
    assert _t(high_job["started_at"]) >= _t(preempted["at"])


def test_jobs_that_are_not_checkpointable_are_never_preempted(daemon, tmp_path):
    gate = tmp_path / "gate"
    low = daemon.client.jobs.submit(program("gated"), {"marker_dir": str(tmp_path),
                                    "gate": str(gate)}, cpu=2, priority="low")
    daemon.wait_job(low["id"], states=("RUNNING",))
    high = daemon.client.jobs.submit("noop", cpu=1, priority="high")
    wait_for(lambda: daemon.client.jobs.get(high["id"])["reason"] == "needs 1 cpu, 0 free",
             what="the high job to wait")
    assert daemon.client.jobs.get(low["id"])["state"] == "RUNNING"
    gate.write_text("open")
    assert daemon.wait_job(high["id"])["state"] == "SUCCEEDED"
    assert daemon.wait_job(low["id"])["transitions"][-1]["to_state"] == "SUCCEEDED"


@pytest.mark.parametrize("result", ["list", "fifo", "link"])
def test_a_job_forging_its_result_file_fails_alone_and_the_daemon_watches_on(daemon, result):
    """A job's folder is its own: a result.json that is no object, a FIFO or a link must
    neither crash nor hang the daemon's supervision of every other job."""
    forged = daemon.client.jobs.submit(program("forge_files"), {"result": result})
    ended = daemon.wait_job(forged["id"])
    assert ended["state"] == "FAILED" and ended["reason"] == "exited with code 3"
    after = daemon.client.jobs.submit("echo", {"message": "still watched"})
    assert daemon.wait_job(after["id"])["state"] == "SUCCEEDED"


def test_a_job_cannot_forge_the_end_of_its_followed_log(daemon):
    """A carriage return in a log line is a line break to SSE clients: it must start a
    new data line, never an `event: end` the job wrote."""
    job = daemon.client.jobs.submit(program("forge_files"), {"result": "none",
                                                            "fake_log": True})
    events = list(daemon.client.jobs.follow(job["id"]))
    ends = [json.loads(data) for event, data in events if event == "end"]
    assert ends == [{"state": "FAILED", "reason": "exited with code 3"}]
    assert any(event == "stdout" and "event: end" in data for event, data in events)
