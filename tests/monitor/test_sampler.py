"""The sampler measures what real jobs use (``/v1/monitor/overview`` and
``/v1/monitor/usage`` show it, to the job's team only), and its history ages into minute
and ten-minute means (the compaction, driven here with given timestamps)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from live import LiveDaemon, program, wait_for
from llmos.monitor import sampler
from llmos.monitor.sampler import Nvml
from llmos.monitor.usage import RAW_KEEP_S, Usage, UsageHistory
from llmos.store import open_database
from llmos.store.models import UsageSample

BURN = f"{Path(__file__).parent / 'usage_programs.py'}:burn"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("sampler") / "home"
    home.mkdir()
    daemon = LiveDaemon(home, env={"LLMOS_SAMPLE_INTERVAL_S": "0.5"}).start()
    yield daemon
    daemon.stop()
    daemon.client.close()


def get(live: LiveDaemon, path: str, token: str | None = None, **params):
    with live.http(token) as http:
        return http.get(path, params=params)


def test_a_busy_job_shows_its_cpu_and_memory_to_its_team_only(live):
    team = live.user("ann", team="alpha")
    other = live.user("bob", team="beta")
    job = team.jobs.submit(BURN, {"mb": 200, "seconds": 60}, cpu=1, memory_mb=1024)["id"]
    blocked = team.jobs.submit("noop", cpu=2)["id"]  # waits: one of two cores is taken
    live.wait_job(job, states=("RUNNING",))

    def measured():
        view = get(live, "/v1/monitor/overview", team.token).json()
        mine = [r for r in view["running"] if r["id"] == job]
        u = mine and mine[0]["usage"]
        # busy (the machine's other work may share its core), and 200 MB resident
        return u and u["cpu"] >= 0.15 and u["memory_mb"] >= 200 and (view, mine[0])

    view, row = wait_for(measured, timeout=30, what="the job's usage in the overview")
    assert row["usage"]["cpu"] <= 1.5 and row["usage"]["memory_mb"] < 1024
    assert row["team"] == "alpha" and row["program"] == BURN and row["node"]
    (node,) = view["nodes"]
    assert node["capacity"]["cpu"] == 2 and node["allocated"]["cpu"] == 1
    assert node["usage"]["cpu"] >= 0.15 and node["usage"]["memory_mb"] > 200
    waiting = next(p for p in view["pending"] if p["id"] == blocked)
    assert waiting["reason"] and waiting["waiting_s"] >= 0 and waiting["priority"] == "normal"

    def history():
        r = get(live, "/v1/monitor/usage", team.token, kind="job", subject=job, window_s=600)
        samples = r.json()["samples"]
        return len(samples) >= 3 and samples[-1]["cpu"] >= 0.15 and r.json()

    usage = wait_for(history, timeout=30, what="the job's usage history")
    assert usage["kind"] == "job" and usage["subject"] == str(job) and usage["resolution_s"] == 1
    # the first samples may precede the allocation; oldest first, ending at 200 MB held
    assert all(0 < s["memory_mb"] < 1024 for s in usage["samples"])
    assert usage["samples"][-1]["memory_mb"] >= 200
    assert [s["at"] for s in usage["samples"]] == sorted(s["at"] for s in usage["samples"])
    node_usage = get(live, "/v1/monitor/usage", other.token, kind="node",
                     subject=node["name"]).json()
    assert node_usage["samples"] and node_usage["samples"][-1]["memory_mb"] > 0

    # another team: not its job (not found, as a missing one), nothing of alpha listed
    r = get(live, "/v1/monitor/usage", other.token, kind="job", subject=job)
    assert r.status_code == 404, r.text
    seen = get(live, "/v1/monitor/overview", other.token).json()
    assert seen["running"] == [] and seen["pending"] == [] and seen["nodes"]
    for j in (blocked, job):
        team.jobs.cancel(j)
    live.wait_all([job, blocked])


def test_a_failing_jobs_escape_sequences_never_reach_the_terminal(live):
    """A job's own error text becomes its reason and its events' detail: the control
    characters in it are gone when `llmos events` and `llmos job show` print it; a job
    name holding one is refused at submit."""
    evil = "boom\x1b]52;c;aGk=\x07\x1b[2J\x9b done"
    job = live.client.jobs.submit(program("fail"), {"message": evil}, name="evil-fail")["id"]
    ended = live.wait_job(job)
    assert ended["state"] == "FAILED" and "boom" in ended["reason"] and "done" in ended["reason"]
    assert not any(c in ended["reason"] for c in "\x1b\x07\x9b"), ended["reason"]
    env = live.cli_env()
    for args in (["events", "--kind", "job", "--subject", str(job)], ["job", "show", str(job)]):
        out = subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "boom" in out.stdout, (args, out.stdout, out.stderr)
        assert not any(c in out.stdout for c in "\x1b\x07\x9b"), (args, out.stdout)
    with live.http() as http:
        r = http.post("/v1/jobs", json={"program": "noop", "name": "x\x1b[2Jy"})
    assert r.status_code == 422 and "control characters" in r.text, r.text


def test_a_process_tree_is_measured_up_to_a_cap_and_a_reused_pid_not_at_all(monkeypatch):
    """A job forking without end costs a bounded round (the sample says it was cut); a
    pid that now names another process (its create time differs) is not measured."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "kids = [subprocess.Popen(['sleep', '60']) for _ in range(5)]\n"
                               "print('ready', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        started = psutil.Process(parent.pid).create_time()
        tree, cut = sampler._Table({}).tree(parent.pid, started)
        assert len(tree) == 6 and not cut
        monkeypatch.setattr(sampler, "MAX_TREE", 3)
        cache: dict = {}
        table = sampler._Table(cache)
        tree, cut = table.tree(parent.pid, started)
        assert len(tree) == 3 and cut
        assert table.tree(parent.pid, started - 100) == ([], False)  # another process
        monkeypatch.setattr(sampler, "MAX_CACHED", 1)
        table.trim()
        assert len(cache) <= 1
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()


@pytest.mark.parametrize("params, status", [
    ({"kind": "disk", "subject": "1"}, 422),
    ({"kind": "job", "subject": "twelve"}, 422),
    ({"kind": "job", "subject": "1", "window_s": 0}, 422),
    ({"kind": "job", "subject": "1", "window_s": 10**9}, 422),
    ({"kind": "job", "subject": "999999"}, 404),
    ({"kind": "node", "subject": "no-such-node"}, 404),
    ({"kind": "gpu", "subject": "no-such-node/0"}, 404),
    ({"kind": "node", "subject": "a\x00b"}, 422),
])
def test_bad_usage_queries_get_a_clear_4xx(live, params, status):
    r = get(live, "/v1/monitor/usage", **params)
    assert r.status_code == status, r.text
    assert "error" in r.json() or "detail" in r.json()


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def test_compaction_averages_minutes_then_ten_minutes_and_prunes(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'usage.db'}")
    history = UsageHistory(db)
    t0 = 1_800_000_000.0  # a multiple of 600
    # 21 minutes of raw rows every 5 s for a job (cpu = its minute index) and a node
    rows = []
    for i in range(21 * 12):
        t = t0 + 5 * i
        rows += [Usage("job", "7", t, "alpha", cpu=float(i // 12), memory_mb=100.0),
                 Usage("node", "n1", t, None, cpu=1.0, memory_mb=None)]
    history.record(rows, 5)
    now = t0 + 21 * 60 + 2
    done = history.compact(now)
    assert done["minute_rows"] == 2 * 21 and done["ten_minute_rows"] == 2 * 2
    with db.session() as s:
        minutes = s.scalars(select(UsageSample).where(
            UsageSample.resolution_s == 60, UsageSample.kind == "job")
            .order_by(UsageSample.at)).all()
        assert [m.cpu for m in minutes] == [float(i) for i in range(21)]
        assert {m.team for m in minutes} == {"alpha"}
        assert minutes[0].at == at(t0) and minutes[-1].at == at(t0 + 20 * 60)
        tens = s.scalars(select(UsageSample).where(
            UsageSample.resolution_s == 600, UsageSample.kind == "job")
            .order_by(UsageSample.at)).all()
        assert [(t.at, t.cpu, t.memory_mb) for t in tens] == [
            (at(t0), 4.5, 100.0), (at(t0 + 600), 14.5, 100.0)]
        node = s.scalars(select(UsageSample).where(
            UsageSample.resolution_s == 60, UsageSample.kind == "node")).first()
        assert node.cpu == 1.0 and node.memory_mb is None  # no value: no mean
    assert history.compact(now)["minute_rows"] == 0  # nothing rolled twice

    # the history as a reader sees it: raw rows up to an hour, minutes beyond
    res, raw = history.query("job", "7", 120, now, raw_s=5)
    assert res == 5 and len(raw) == 23 and raw[-1]["cpu"] == 20.0  # (now-120, now]
    res, by_minute = history.query("job", "7", 7200, now, raw_s=5)
    assert res == 60 and len(by_minute) == 21

    # an hour and a day later: raw rows are gone, their minute means stay a day
    later = t0 + 21 * 60 + RAW_KEEP_S + 60
    history.compact(later)
    with db.session() as s:
        kinds = {r.resolution_s for r in s.scalars(select(UsageSample))}
    assert kinds == {60, 600}
    history.compact(t0 + 2 * 86400)
    with db.session() as s:
        assert {r.resolution_s for r in s.scalars(select(UsageSample))} == {600}
    db.close()


def test_gpus_are_read_through_nvml_and_a_machine_without_one_gets_no_rows():
    """NVML (nvidia-ml-py, a dependency) with no NVIDIA driver: no rows, no error; with
    one, each GPU with plausible figures."""
    nvml = Nvml()
    rows = nvml.read()
    try:
        if not (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()):
            assert rows == [] and nvml.read() == []
        for g in rows:
            assert g["total_mb"] > 0 and 0 <= g["used_mb"] <= g["total_mb"]
            assert g["util"] is None or 0 <= g["util"] <= 1
            assert all(pid > 0 and used >= 0 for pid, used in g["processes"].items())
    finally:
        nvml.close()
