"""The event log seen as users see it, on one live daemon: a real job's life arrives on the
server-sent-event stream in order; a member of team B never sees an event of team A (not
in the stream, not in the list, not by subject); node events reach every user;
``Last-Event-ID`` resumes; ``llmos events`` prints them and `-f` ends cleanly on Ctrl-C."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from live import LiveDaemon, wait_for

LIFE = ["PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("events") / "home"
    home.mkdir()
    d = LiveDaemon(home).start()
    d.alice = d.user("alice", team="team-a")
    d.bob = d.user("bob", team="team-b")
    yield d
    d.stop()
    for c in (d.client, d.alice, d.bob):
        c.close()


class EventStream:
    def __init__(self, url: str, token: str, params: dict | None = None,
                 headers: dict | None = None, transport: httpx.HTTPTransport | None = None):
        self.events: queue.Queue = queue.Queue()
        self.status: int | None = None
        self._resp: httpx.Response | None = None
        self._opened = threading.Event()
        self._http = httpx.Client(base_url=url, transport=transport,
                                  headers={"Authorization": f"Bearer {token}", **(headers or {})},
                                  timeout=httpx.Timeout(10.0, read=None))
        self._thread = threading.Thread(target=self._run, args=({**(params or {}),
                                                                 "follow": "true"},),
                                        daemon=True)
        self._thread.start()
        assert self._opened.wait(15), "the event stream did not open"
        assert self.status == 200, f"the event stream answered {self.status}"

    def _run(self, params: dict) -> None:
        try:
            with self._http.stream("GET", "/v1/events", params=params) as resp:
                self._resp, self.status = resp, resp.status_code
                self._opened.set()
                data: list[str] = []
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        self.events.put(json.loads("\n".join(data)))
                        data = []
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self._opened.set()
            self.events.put(None)

    def until(self, predicate, timeout: float = 30.0, what: str = "an event") -> list[dict]:
        """Every event read until one matching ``predicate`` (included)."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.01, left))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"saw {seen}") from None
            if event is None:
                raise AssertionError(f"the stream ended while waiting for {what}; saw {seen}")
            seen.append(event)
            if predicate(event):
                return seen

    def drain(self) -> list[dict]:
        """What has arrived so far, without waiting."""
        got = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return got
            if event is not None:
                got.append(event)

    def close(self) -> None:
        """Hang up as a browser does: the connection closes at once (closing the client
        alone leaves the socket open while the reading thread is blocked on it)."""
        stream = self._resp.extensions.get("network_stream") if self._resp else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._http.close()


def _job_events(events: list[dict], job_id: int) -> list[dict]:
    return [e for e in events if e["kind"] == "job" and e["subject"] == str(job_id)]


def test_a_jobs_life_arrives_in_order_and_team_b_sees_none_of_it(live):
    a = EventStream(live.url, live.alice.token, {"kind": "job"})
    b = EventStream(live.url, live.bob.token)
    admin = EventStream(live.url, live.admin_token, {"kind": "job"})
    try:
        job = live.alice.jobs.submit("noop")
        seen = a.until(lambda e: e["subject"] == str(job["id"]) and e["state"] == "SUCCEEDED",
                       what="job's SUCCEEDED event")
        mine = _job_events(seen, job["id"])
        assert [e["state"] for e in mine] == LIFE
        assert [e["action"] for e in mine] == ["created", "state", "state", "state"]
        assert all(e["team"] == "team-a" for e in mine)
        assert [e["id"] for e in mine] == sorted(e["id"] for e in mine)
        assert admin.until(lambda e: e["subject"] == str(job["id"])
                           and e["state"] == "SUCCEEDED")
        # Team B's stream was open all along: its first job event is its own job.
        own = live.bob.jobs.submit("noop")
        got = b.until(lambda e: e["kind"] == "job", what="team B's own job event")
        assert next(e for e in got if e["kind"] == "job")["subject"] == str(own["id"])
        assert all(e.get("team") in (None, "team-b") for e in got)
    finally:
        for s in (a, b, admin):
            s.close()
    with live.http(live.bob.token) as http:
        listed = http.get("/v1/events", params={"limit": 1000}).json()["events"]
        assert listed and all(e["team"] == "team-b" or e["kind"] == "node" for e in listed)
        by_subject = http.get("/v1/events", params={"subject": str(job["id"])}).json()
        assert by_subject["events"] == []
        after = http.get("/v1/events", params={"since": 0, "limit": 1000}).json()["events"]
        assert not _job_events(after, job["id"])
    with live.http(live.alice.token) as http:
        listed = http.get("/v1/events", params={"kind": "job", "subject": job["id"]}).json()
        assert [e["state"] for e in listed["events"]] == LIFE


def test_node_events_reach_every_user_and_alerts_without_team_only_admins(live):
    for c in (live.alice, live.bob):
        with live.http(c.token) as http:
            nodes = http.get("/v1/events", params={"kind": "node"}).json()["events"]
        assert nodes and nodes[0]["action"] == "created" and nodes[0]["team"] is None


def test_last_event_id_resumes_after_the_last_event_seen(live):
    job = live.alice.jobs.submit("noop")
    live.wait_job(job["id"])
    with live.http(live.alice.token) as http:
        life = http.get("/v1/events", params={"subject": job["id"]}).json()["events"]
    assert [e["state"] for e in life] == LIFE
    resumed = EventStream(live.url, live.alice.token, {"kind": "job"},
                          headers={"Last-Event-ID": str(life[1]["id"])})
    try:
        seen = resumed.until(lambda e: e["id"] == life[-1]["id"], what="the resumed events")
    finally:
        resumed.close()
    assert [e["state"] for e in _job_events(seen, job["id"])] == LIFE[2:]


def test_a_stream_ends_when_its_token_is_revoked(live):
    """The stream ends; `llmos events -f` on that token says so and exits 1."""
    extra = live.alice.tokens.create("watcher", scopes=["read"])
    stream = EventStream(live.url, extra["token"], {"kind": "job"})
    follow = subprocess.Popen([sys.executable, "-m", "llmos.cli.main", "events", "-f",
                               "--kind", "job", "--json"], env=live.cli_env(extra["token"]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True).start()
    try:
        _until_followed(live, lines)  # the CLI's stream is open
        live.alice.tokens.revoke(extra["id"])
        job = live.alice.jobs.submit("noop")
        live.wait_job(job["id"])
        with pytest.raises(AssertionError, match="the stream ended"):
            stream.until(lambda e: False, timeout=20, what="the end of the stream")
        assert follow.wait(timeout=30) == 1
        err = follow.stderr.read()
        assert "closed the event stream" in err and "Traceback" not in err
    finally:
        stream.close()
        if follow.poll() is None:
            follow.kill()


def _until_followed(live, lines: queue.Queue) -> dict:
    """Submit jobs until `llmos events -f` (just started) prints one's event."""
    def next_job_event():
        live.alice.jobs.submit("noop")
        try:
            return json.loads(lines.get(timeout=3))
        except queue.Empty:
            return None

    return wait_for(next_job_event, timeout=60, interval=0, what="`llmos events -f`")


def test_open_streams_are_capped_per_token_and_need_the_read_scope(live):
    token = live.alice.tokens.create("dashboards", scopes=["read"])["token"]
    streams = [EventStream(live.url, token) for _ in range(4)]
    try:
        with live.http(token) as http:
            r = http.get("/v1/events", params={"follow": "true"})
        assert r.status_code == 429 and "4 event streams" in r.json()["error"]["message"]
        with live.http(live.bob.token) as http:  # another token still may
            assert http.get("/v1/events", params={"limit": 1}).status_code == 200
    finally:
        for st in streams:
            st.close()
    # closed streams give their places back (the server sees each close within a poll)
    def reopens() -> bool:
        try:
            EventStream(live.url, token).close()
            return True
        except AssertionError:  # 429 still: the server has not seen every close yet
            return False

    wait_for(reopens, timeout=15, what="a stream once the others closed")
    no_read = live.alice.tokens.create("no-read", scopes=["inference"])["token"]
    with live.http(no_read) as http:
        r = http.get("/v1/events", params={"follow": "true"})
        assert r.status_code == 403 and "'read' scope" in r.json()["error"]["message"]


def test_since_passes_over_other_teams_events_and_returns_the_cursor(live):
    with live.http(live.bob.token) as http:
        page = http.get("/v1/events", params={"since": 0, "limit": 1000}).json()
        assert page["next"] >= max(e["id"] for e in page["events"])
        after = http.get("/v1/events", params={"since": page["next"]}).json()
    assert after["events"] == [] and after["next"] >= page["next"]


def test_bad_filters_are_refused_plainly(live):
    with live.http() as http:
        r = http.get("/v1/events", params={"kind": "job,bogus"})
        assert r.status_code == 422 and "bogus" in r.json()["error"]["message"]
        assert http.get("/v1/events", params={"limit": 0}).status_code == 422
    with httpx.Client(base_url=live.url) as anonymous:
        assert anonymous.get("/v1/events").status_code == 401


def test_cli_prints_events_and_follow_ends_cleanly_on_ctrl_c(live):
    job = live.alice.jobs.submit("noop", name="cli-watched")
    live.wait_job(job["id"])
    env = live.cli_env(live.alice.token)
    shown = subprocess.run([sys.executable, "-m", "llmos.cli.main", "events", "--kind", "job",
                            "--subject", str(job["id"]), "--since", "0"], env=env,
                           capture_output=True, check=False, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert len(lines) == 4 and all(f" job {job['id']} " in line for line in lines)
    assert "SUCCEEDED" in lines[-1] and "team=team-a" in lines[0]
    bad = subprocess.run([sys.executable, "-m", "llmos.cli.main", "events", "--kind", "x"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "unknown event kind 'x'" in bad.stderr
    follow = subprocess.Popen([sys.executable, "-m", "llmos.cli.main", "events", "-f",
                               "--kind", "job", "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True).start()
    try:
        def next_job_event():  # the CLI may still be starting: submit until it shows one
            nxt = live.alice.jobs.submit("noop")
            try:
                return json.loads(lines.get(timeout=3)) if nxt else None
            except queue.Empty:
                return None

        first = wait_for(next_job_event, timeout=60, interval=0, what="`llmos events -f`")
        assert first["kind"] == "job" and first["team"] == "team-a"
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=30) == 0, follow.stderr.read()
        assert "Traceback" not in follow.stderr.read()
    finally:
        if follow.poll() is None:
            follow.kill()


def test_stopping_the_daemon_ends_open_streams_at_once(live):
    """Last in this module: it stops the module's daemon. An open dashboard's stream ends
    as soon as the server begins to stop, so `llmos down` is not held for its grace
    period (10 s)."""
    stream = EventStream(live.url, live.alice.token)
    try:
        started = time.monotonic()
        live.stop()
        assert time.monotonic() - started < 8
        assert "stopped cleanly" in live.log()
        with pytest.raises(AssertionError, match="the stream ended"):
            stream.until(lambda e: False, timeout=10, what="the end of the stream")
    finally:
        stream.close()
