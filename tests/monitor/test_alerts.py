"""Alert rules on one live daemon, driven by real jobs and real requests: a job waiting
longer than its bound fires (its team sees it, another team does not) and resolves when
it is cancelled, and the rule's webhook is called — retried when it first answers 500; a
failing job fires the failure rate; failed logins, a token used from a second address,
many downloads by one token and an administrator reading several teams' objects fire the
security rules (administrators only). A malformed rules file is refused naming the rule
and the field, by the API (the rules in force stay) and by `llmos up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from live import PROGRAMS, LiveDaemon, free_port, program, wait_for

from llmos.errors import InvalidRequest


class Webhook:
    """A real HTTP endpoint on 127.0.0.1: answers 500 to its first call, then 200."""

    def __init__(self):
        self.calls: list[tuple[int, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if not hook.calls else 200
                hook.calls.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("alerts") / "home"
    home.mkdir()
    # The rules file outside LLMOS_HOME, in a folder jobs may read (an ingest root): the
    # file itself must still be hidden from them (webhook URLs may hold keys).
    outside = tmp_path_factory.mktemp("alerts-outside")
    (outside / "alerts.yaml").write_text("rules: []\n")
    (outside / "notes.txt").write_text("readable")
    d = LiveDaemon(home, env={"LLMOS_ALERT_INTERVAL_S": "0.2",
                              "LLMOS_SAMPLE_INTERVAL_S": "1",
                              "LLMOS_ALERTS_FILE": str(outside / "alerts.yaml"),
                              "LLMOS_INGEST_ROOTS": f"{outside}:{PROGRAMS.parent}"}).start()
    d.outside = outside
    d.alice = d.user("alice", team="team-a")
    d.bob = d.user("bob", team="team-b")
    d.hook = Webhook()
    yield d
    d.stop()
    d.hook.close()
    for c in (d.client, d.alice, d.bob):
        c.close()


RULES = """
rules:
  - name: stuck
    kind: job_waiting
    severity: warning
    params: {seconds: 1}
    webhook: {hook}
  - name: failing
    kind: failure_rate
    params: {window_s: 3, threshold: 0.5, min_jobs: 1}
  - name: guessing
    kind: auth_failures
    severity: critical
    params: {count: 3, window_s: 60}
  - name: moved
    kind: token_new_address
    params: {hold_s: 60}
  - name: hoarding
    kind: artifact_downloads
    params: {count: 2, window_s: 60}
  - name: snooping
    kind: admin_cross_team_reads
    params: {teams: 1, window_s: 60}
  - name: crowded
    kind: node_memory
    params: {percent: 0.001}
"""


def _load(live, text: str, token: str | None = None) -> httpx.Response:
    with live.http(token) as http:
        return http.put("/v1/alerts/rules", content=text.encode())


def _alert_events(live, rule: str, token: str | None = None) -> list[dict]:
    with live.http(token) as http:
        r = http.get("/v1/events", params={"kind": "alert", "subject": rule, "limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["events"]


def _wait_event(live, rule: str, action: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: next((e for e in _alert_events(live, rule)
                                  if e["action"] == action), None),
                    timeout=timeout, interval=0.1, what=f"alert {rule} {action}")


@pytest.fixture(scope="module")
def rules(live):
    r = _load(live, RULES.replace("{hook}", live.hook.url))
    assert r.status_code == 200, r.text
    assert [x["name"] for x in r.json()["rules"]] == ["stuck", "failing", "guessing", "moved",
                                                      "hoarding", "snooping", "crowded"]
    return r.json()["rules"]


def test_malformed_rules_are_refused_naming_rule_and_field_and_rules_stay(live, rules):
    bad = RULES.replace("{seconds: 1}", "{seconds: soon}").replace("{hook}", live.hook.url)
    r = _load(live, bad)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "'stuck'" in message and "rules[0]" in message and "params.seconds" in message
    r = _load(live, "rules:\n  - name: x\n    kind: cpu_hot\n")
    assert r.status_code == 422 and "kind" in r.json()["error"]["message"]
    assert _load(live, "rules: [a: *b]").status_code == 422  # YAML aliases refused
    assert _load(live, "rules: []", token=live.alice.token).status_code == 403
    # numbers beyond every bound, infinities and integers Python will not parse: 422s
    for params, field in (("{minutes: 1.0e300}", "params.minutes"),
                          ("{p99_s: .inf}", "params.p99_s"),
                          ("{p99_s: 1, window_s: 1.0e12}", "params.window_s")):
        kind = "job_waiting" if "minutes" in params else "deployment_latency"
        r = _load(live, f"rules:\n  - name: huge\n    kind: {kind}\n    params: {params}\n")
        assert r.status_code == 422, (params, r.text)
        assert "'huge'" in r.json()["error"]["message"] and field in r.text
    r = _load(live, "rules:\n  - name: long\n    kind: failure_rate\n    params: {min_jobs: "
               + "9" * 5000 + "}\n")
    assert r.status_code == 422 and "not valid YAML" in r.json()["error"]["message"]
    with live.http() as http:
        shown = http.get("/v1/alerts").json()
    assert [x["name"] for x in shown["rules"]] == [x["name"] for x in rules]
    assert shown["rules"][0]["webhook"] is True and live.hook.url not in json.dumps(shown)
    assert shown["rules"][0]["params"] == {"seconds": 1}
    with live.http(live.alice.token) as http:  # a member: no rule's parameters
        seen = http.get("/v1/alerts").json()["rules"]
    assert [x["name"] for x in seen] == [x["name"] for x in rules]
    assert all("params" not in x and x["kind"] and x["severity"] for x in seen)
    no_read = live.alice.tokens.create("no-read", scopes=["inference"])["token"]
    with live.http(no_read) as http:
        assert http.get("/v1/alerts").status_code == 403
        assert http.get("/v1/events").status_code == 403


def test_a_waiting_job_fires_then_resolves_when_cancelled_and_calls_the_webhook(live, rules):
    blocker = live.alice.jobs.submit(program("sleep_long"), {"seconds": 120}, cpu=2)
    live.wait_job(blocker["id"], states=("RUNNING",))
    waiter = live.alice.jobs.submit("noop", cpu=1, name="waits")
    try:
        fired = _wait_event(live, "stuck", "firing")
        assert fired["team"] == "team-a" and fired["detail"]["key"] == str(waiter["id"])
        assert fired["state"] == "warning" and "has waited" in fired["detail"]["message"]
        assert _alert_events(live, "stuck", live.alice.token)  # its team sees it
        assert not _alert_events(live, "stuck", live.bob.token)  # another team does not
        with live.http(live.bob.token) as http:
            assert http.get("/v1/alerts").json()["firing"] == []
        with live.http(live.alice.token) as http:
            firing = http.get("/v1/alerts").json()["firing"]
        assert [f["key"] for f in firing if f["rule"] == "stuck"] == [str(waiter["id"])]
        live.alice.jobs.cancel(waiter["id"])
        resolved = _wait_event(live, "stuck", "resolved")
        assert resolved["id"] > fired["id"] and resolved["team"] == "team-a"
    finally:
        live.alice.jobs.cancel(blocker["id"])
    calls = wait_for(lambda: len(live.hook.calls) >= 3 and live.hook.calls, timeout=30,
                     what="the webhook's calls")
    assert [(s, b["action"]) for s, b in calls[:3]] == [(500, "firing"), (200, "firing"),
                                                        (200, "resolved")]
    assert calls[1][1]["rule"] == "stuck" and calls[1][1]["key"] == str(waiter["id"])


def test_a_failing_job_fires_the_failure_rate_of_its_team(live, rules):
    job = live.alice.jobs.submit(program("fail"))
    assert live.wait_job(job["id"])["state"] == "FAILED"
    fired = _wait_event(live, "failing", "firing")
    assert fired["team"] == "team-a" and fired["detail"]["value"] == 1.0
    assert _wait_event(live, "failing", "resolved")  # the failure left the 3 s window


def test_failed_logins_fire_for_administrators_only(live, rules):
    with httpx.Client(base_url=live.url) as anonymous:
        for guess in "abc":
            r = anonymous.get("/v1/jobs", headers={"Authorization": f"Bearer llmos_{guess * 20}"})
            assert r.status_code == 401
    fired = _wait_event(live, "guessing", "firing")
    assert fired["team"] is None and fired["detail"]["key"] == "127.0.0.1"
    assert fired["state"] == "critical"
    assert not _alert_events(live, "guessing", live.alice.token)
    with live.http() as http:
        metrics = http.get("/metrics").text
    assert 'llmos_alerts_firing{rule="guessing",severity="critical"} 1.0' in metrics


def test_a_token_used_from_a_second_address_fires(live, rules):
    with live.http(live.bob.token) as http:
        assert http.get("/v1/jobs").status_code == 200
    other = httpx.HTTPTransport(local_address="127.0.0.2")  # still loopback: a new address
    with live.http(live.bob.token, transport=other) as http:
        assert http.get("/v1/jobs").status_code == 200
    fired = _wait_event(live, "moved", "firing")
    assert fired["detail"]["key"].endswith("@127.0.0.2") and "127.0.0.1" in \
        fired["detail"]["message"]


def test_many_downloads_and_an_admin_reading_many_teams_fire(live, rules):
    art = live.alice.artifacts.put(b"some bytes", name="a.txt")
    with live.http(live.alice.token) as http:
        for _ in range(3):
            assert http.get(f"/v1/artifacts/{art['id']}/content").status_code == 200
    assert _wait_event(live, "hoarding", "firing")["team"] is None
    a_job = live.alice.jobs.submit("noop")
    b_job = live.bob.jobs.submit("noop")
    with live.http() as http:  # the administrator, member of neither team
        assert http.get(f"/v1/jobs/{a_job['id']}").status_code == 200
        assert http.get(f"/v1/jobs/{b_job['id']}").status_code == 200
        assert http.get("/v1/jobs").status_code == 200  # a list of every team's jobs
    assert _wait_event(live, "snooping", "firing")["team"] is None

    def snooping_message():
        with live.http() as http:
            firing = http.get("/v1/alerts").json()["firing"]
        return next((f["message"] for f in firing if f["rule"] == "snooping"
                     and "team-a" in f["message"] and "team-b" in f["message"]), None)

    message = wait_for(snooping_message, timeout=30, what="the snooping alert's teams")
    assert "every team" in message  # the list counts as reading all teams


def test_a_sandboxed_job_cannot_read_the_rules_file_outside_llmos_home(live, rules):
    job = live.alice.jobs.submit(program("probe_paths"), {"paths": [
        str(live.outside / "notes.txt"), str(live.outside / "alerts.yaml")]})
    assert live.wait_job(job["id"])["state"] == "SUCCEEDED"
    seen = json.loads((live.home / "jobs" / str(job["id"]) / "probe.json").read_text())
    assert seen[str(live.outside / "notes.txt")] == "readable"  # the folder is bound
    assert seen[str(live.outside / "alerts.yaml")].startswith("blocked")  # the file is not
    assert "stuck" in (live.outside / "alerts.yaml").read_text()  # PUT wrote it there


def test_node_memory_from_the_samplers_measurements_fires_for_administrators(live, rules):
    fired = _wait_event(live, "crowded", "firing")
    assert fired["team"] is None and fired["detail"]["value"] > 0.001
    assert "memory" in fired["detail"]["message"]
    assert not _alert_events(live, "crowded", live.alice.token)


def test_deployment_latency_is_the_p99_of_the_gateways_requests_in_the_window():
    from llmos.monitor.alert_checks import Inputs, LatencyWindow, deployment_latency
    from llmos.monitor.alert_rules import DeploymentLatency
    from llmos.monitor.metrics import Metrics

    metrics = Metrics()
    window = LatencyWindow(metrics.latency)
    rule = DeploymentLatency(p99_s=1.0, window_s=60)
    window.observe(now=1000)
    for _ in range(98):
        metrics.latency.labels("team-a", "chat", "chat").observe(0.02)
    for _ in range(2):
        metrics.latency.labels("team-a", "chat", "chat").observe(4.0)
    metrics.latency.labels("team-b", "fast", "chat").observe(0.02)
    window.observe(now=1010)
    found = deployment_latency(rule, Inputs(latency=window), 1010)
    assert list(found) == ["team-a/chat"] and found["team-a/chat"].team == "team-a"
    assert 2.5 < found["team-a/chat"].value <= 5.0  # inside the (2.5, 5] bucket
    window.observe(now=1100)  # no request in the last 60 s: nothing breaks the bound
    assert deployment_latency(rule, Inputs(latency=window), 1100) == {}


def test_cli_lists_rules_and_what_fires_and_refuses_a_malformed_file(live, rules, tmp_path):
    shown = subprocess.run([sys.executable, "-m", "llmos.cli.main", "alerts", "ls"],
                           env=live.cli_env(), capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "stuck" in shown.stdout and "job_waiting" in shown.stdout
    assert "guessing" in shown.stdout and "127.0.0.1" in shown.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: late\n    kind: job_waiting\n    params: {hours: 2}\n")
    refused = subprocess.run([sys.executable, "-m", "llmos.cli.main", "alerts", "load",
                              str(bad)], env=live.cli_env(), capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "'late'" in refused.stderr and "params.hours" in refused.stderr
    assert [r["name"] for r in live.client.monitor.alerts()["rules"]] == [
        r["name"] for r in rules]


def test_llmos_up_refuses_a_malformed_rules_file(tmp_path):
    bad = tmp_path / "alerts.yaml"
    bad.write_text("rules:\n  - name: ok\n    kind: node_memory\n"
                   "  - name: broken\n    kind: failure_rate\n    params: {threshold: 7}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_HOME=str(tmp_path / "home"), LLMOS_ALERTS_FILE=str(bad))
    done = subprocess.run([sys.executable, "-m", "llmos.cli.main", "up", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1
    assert "'broken'" in done.stderr and "rules[1]" in done.stderr
    assert "params.threshold" in done.stderr and "Traceback" not in done.stderr


def test_an_allocated_gpu_idle_for_the_window_fires_for_its_jobs_team():
    """GPU measurements as the sampler keeps them (``Latest``); no GPU is needed."""
    from llmos.monitor.alert_checks import Inputs, gpu_idle
    from llmos.monitor.alert_rules import GpuIdle
    from llmos.monitor.sampler import Latest
    from llmos.monitor.usage import Usage

    class Measured:  # what the sampler measured last, as Sampler.latest() answers it
        def __init__(self):
            self.round = Latest()

        def latest(self):
            return self.round

    def gpu(index: int, util: float, job: int | None) -> Usage:  # GPU rows carry no team
        return Usage("gpu", f"n1/{index}", 0.0, team=None,
                     gpu_util=util, extra={"node": "n1", "index": index, "job": job})

    measured, state = Measured(), {}
    rule, inputs = GpuIdle(below=0.1, window_s=30), Inputs(sampler=measured)
    jobs = {7: Usage("job", "7", 0.0, team="team-a"), 8: Usage("job", "8", 0.0, team="team-b")}
    measured.round = Latest(jobs=jobs, gpus={"n1/0": gpu(0, 0.02, 7),
                                             "n1/1": gpu(1, 0.0, None),
                                             "n1/2": gpu(2, 0.9, 8)})
    assert gpu_idle(rule, inputs, 1000, state) == {}  # idle, but not for 30 s yet
    found = gpu_idle(rule, inputs, 1031, state)
    assert list(found) == ["n1/0"] and found["n1/0"].team == "team-a"
    measured.round = Latest(jobs=jobs, gpus={"n1/0": gpu(0, 0.5, 7)})  # busy: it resolves
    assert gpu_idle(rule, inputs, 1032, state) == {}
    assert state["idle_since"] == {}


def test_the_example_rules_file_loads():
    from pathlib import Path

    from llmos.monitor.alert_rules import PARAMS, parse_rules

    path = Path(__file__).resolve().parents[2] / "examples" / "monitoring" / "alerts.yaml"
    rules = parse_rules(path.read_text())
    assert {r.kind for r in rules} == set(PARAMS)  # one rule of every kind


class Trickle:
    """An HTTP endpoint that never finishes answering: one byte every 0.2 s."""

    def __init__(self):
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if self.done.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self):
        self.done.set()
        self.sock.close()


def test_a_trickling_webhook_is_cut_off_at_its_deadline_and_holds_up_no_other():
    """The total deadline of an attempt (not only of each read), and a worker per URL."""
    from llmos.monitor.alerts import Notifier

    slow, fast = Trickle(), Webhook()
    fast.calls.append((0, {}))  # it answers 200 from now on
    notifier = Notifier(attempts=1, timeout_s=3.0)
    notifier.start()
    try:
        started = time.monotonic()
        notifier.submit(slow.url, {"rule": "slow", "action": "firing"})
        notifier.submit(fast.url, {"rule": "fast", "action": "firing"})
        wait_for(lambda: len(fast.calls) == 2, timeout=10, what="the fast webhook's call")
        assert time.monotonic() - started < 2.5  # not behind the slow one (3 s at least)
        wait_for(lambda: notifier.failed == 1, timeout=15, what="the slow webhook's end")
        assert time.monotonic() - started < 7  # cut off at 3 s, though bytes kept coming
        assert notifier.delivered == 1
    finally:
        notifier.stop()
        slow.close()
        fast.close()


def test_a_check_that_raises_is_logged_once_and_the_other_rules_still_fire(tmp_path, caplog):
    from llmos.config import Settings
    from llmos.monitor.alerts import AlertEngine
    from llmos.monitor.events import EventLog
    from llmos.monitor.signals import Signals
    from llmos.pipelines.spec import load as load_pipeline
    from llmos.store import open_database

    class BrokenSampler:  # a sampler whose measurements cannot be read
        def latest(self):
            raise OSError("the measurements are gone")

    settings = Settings(home=tmp_path / "home", alerts_file=None)
    db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
    try:
        signals = Signals()
        engine = AlertEngine(settings, db, EventLog(db), signals, sampler=BrokenSampler(),
                             interval_s=60)
        engine.load("rules:\n  - {name: broken, kind: node_memory}\n"
                    "  - {name: guessing, kind: auth_failures, params: {count: 1}}\n")
        signals.auth_failed("10.0.0.9")
        with caplog.at_level("ERROR", logger="llmos.monitor"):
            for _ in range(3):
                engine.evaluate()
        assert [f["rule"] for f in engine.firing()] == ["guessing"]
        logged = [r for r in caplog.records if "broken" in r.getMessage()]
        assert len(logged) == 1 and "could not be evaluated" in logged[0].getMessage()
    finally:
        db.close()
    # the same clear error for a recipe or pipeline whose YAML holds a huge integer
    with pytest.raises(InvalidRequest, match="pipeline: not valid YAML: Exceeds the limit"):
        load_pipeline("name: p\nsteps: " + "7" * 5000 + "\n")
