"""`llmos top` as a user sees it: the real CLI in a pseudo-terminal (and without one)
against one live daemon whose 2-cpu node is full: a running job, a job waiting for room,
and a deployment whose worker waits too (so it shows as starting: a deployment that
becomes ready would cost a model load, and top draws a starting one the same way)."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest

from live import LiveDaemon, free_port, wait_for

# CSI sequences (colours, cursor moves), OSC titles, charset and keypad switches
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)"
                  r"|[()][0-9A-Za-z]|[=>78])")
ROWS, COLS = 50, 160


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """A daemon with its node full: ``running`` holds both cpus, ``waiting`` waits for one,
    and deployment ``top-serve`` of a registered (never loaded) model waits for a worker."""
    home = tmp_path_factory.mktemp("top") / "home"
    home.mkdir()
    live = LiveDaemon(home, cpus=2).start()
    c = live.client
    running = c.jobs.submit("sleep", {"seconds": 600, "steps": 600}, name="top-running", cpu=2)
    live.wait_job(running["id"], states=("RUNNING",))
    waiting = c.jobs.submit("sleep", {"seconds": 1}, name="top-waiting", cpu=1)
    register_embedder(live, "top-embedder")
    c.deployments.create("top-embedder", name="top-serve", cpu=0.25, memory_mb=1024)
    wait_for(lambda: c.jobs.get(waiting["id"])["reason"], what="the pending job's reason")
    yield live
    live.stop()
    live.client.close()


def register_embedder(live: LiveDaemon, name: str) -> None:
    """An encoder model version registered from two small files (no import job): enough to
    deploy; its worker never starts here, so nothing ever loads it."""
    files, listed = [], []
    for path, data in (("config.json", b'{"model_type": "bert"}'), ("tokenizer.json", b"{}")):
        art = live.client.artifacts.put(data, name=path)
        files.append({"path": path, "artifact_id": art["id"]})
        listed.append({"path": path, "size": len(data), "sha256": art["sha256"]})
    info = {"architecture": "BertModel", "model_type": "bert", "task": "encoder",
            "parameters": 0, "dtypes": [], "size_bytes": 24, "weight_files": [],
            "tokenizer_files": ["tokenizer.json"], "vocab_size": None, "chat_template": False,
            "context_length": None, "files": listed}
    with live.http() as http:
        r = http.post(f"/v1/registry/models/{name}/versions", json={"files": files,
                                                                     "info": info})
    assert r.status_code == 201, r.text


def expected(live: LiveDaemon) -> list[str]:
    """What the screen must show: the node, both jobs, why one waits, the deployment."""
    overview = live.client.monitor.overview()
    reason = next(p["reason"] for p in overview["pending"] if p["name"] == "top-waiting")
    return [overview["nodes"][0]["name"], "top-running", "top-waiting", reason[:24],
            "top-serve", "starting"]


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


class Terminal:
    """`llmos top` on the slave side of a pseudo-terminal of ROWS x COLS; the test reads
    the master side with a deadline."""

    def __init__(self, env: dict, *args: str):
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.modes = termios.tcgetattr(self.slave)
        env = {**env, "TERM": "xterm-256color"}
        env.pop("COLUMNS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmos.cli.main", "top", *args], env=env,
            stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # Ctrl-C reaches it
        self.raw = b""

    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def _read(self, seconds: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(0.0, seconds))
        if ready:
            self.raw += os.read(self.master, 1 << 16)

    def shows(self, words: list[str], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while not all(w in self.text() for w in words):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                missing = [w for w in words if w not in self.text()]
                raise AssertionError(f"top never showed {missing}:\n{self.text()[-4000:]}")
            self._read(deadline - time.monotonic())
        return self.text()

    def exit_code(self, timeout: float = 15.0) -> int:
        """Its exit status, reading what it writes meanwhile (a full pty would stall it)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"top did not exit:\n{self.text()[-4000:]}")
            self._read(0.05)
        self._read(0)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)


def test_top_in_a_terminal_shows_the_machine_and_quits_on_q(busy):
    term = Terminal(busy.cli_env(), "--interval", "0.5")
    try:
        screen = term.shows(expected(busy))
        assert "Running jobs (1)" in screen and "Traceback" not in screen
        assert "Pending jobs" in screen and "Deployments (1)" in screen
        os.write(term.master, b"q")
        assert term.exit_code() == 0, term.text()[-2000:]
        assert b"\x1b[?1049h" in term.raw and term.raw.rfind(b"\x1b[?1049l") > \
            term.raw.rfind(b"\x1b[?1049h")  # it left the alternate screen it took
        assert b"\x1b[?25h" in term.raw  # the cursor is shown again
        assert termios.tcgetattr(term.slave) == term.modes  # echo and line mode are back
    finally:
        term.close()


def test_ctrl_c_quits_as_cleanly(busy):
    term = Terminal(busy.cli_env(), "--interval", "5")
    try:
        term.shows(["top-running"])
        os.write(term.master, b"\x03")
        assert term.exit_code() == 0, term.text()[-2000:]
        assert "Traceback" not in term.text() and "KeyboardInterrupt" not in term.text()
        assert termios.tcgetattr(term.slave) == term.modes
    finally:
        term.close()


def test_once_without_a_terminal_prints_one_frame(busy):
    result = cli("top", "--once", env=busy.cli_env())
    assert result.returncode == 0, result.stderr
    for word in expected(busy):
        assert word in result.stdout, (word, result.stdout)
    assert "\x1b[?1049h" not in result.stdout and "Traceback" not in result.stderr


def test_another_team_sees_the_nodes_but_none_of_these_jobs(busy):
    outsider = busy.user("top-outsider", team="top-elsewhere", role="viewer")
    result = cli("top", "--once", env=busy.cli_env(outsider.token))
    assert result.returncode == 0, result.stderr
    assert busy.client.nodes()[0]["name"] in result.stdout
    for word in ("top-running", "top-waiting", "top-serve"):
        assert word not in result.stdout, result.stdout


def test_no_daemon_or_a_bad_interval_is_one_line_and_non_zero():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_URL=f"http://127.0.0.1:{free_port()}", LLMOS_TOKEN="x", COLUMNS="200")
    result = cli("top", "--once", env=env)
    assert result.returncode == 1 and "cannot reach the llmos daemon" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for bad in ("0", "nan", "1e300"):  # too short, not a number, forever
        result = cli("top", "--interval", bad, env=env)
        assert result.returncode == 2, (bad, result.stderr)
        assert "--interval must be between 0.2 and 3600" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_hung_daemon_shows_as_lost_within_the_refresh_timeout():
    """A daemon that accepts and never answers: the refresh gives up after its timeout
    and the view keeps the last answer under a red line (so q is read again)."""
    from llmos.cli.top import Source
    from llmos.sdk.client import Client

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        with Client(f"http://127.0.0.1:{hung.getsockname()[1]}", token="x") as client:
            source = Source(client, timeout_s=1.0)
            source.data = {"nodes": [], "running": [], "pending": [], "deployments": []}
            started = time.monotonic()
            source.frame()
            assert time.monotonic() - started < 10
            assert source.problem and "cannot reach the llmos daemon" in source.problem
    finally:
        hung.close()


def test_control_characters_from_the_api_never_reach_the_terminal():
    """A name or reason holding terminal escapes (set the clipboard, clear the screen) is
    drawn as visible \\xNN text; a list cut by the API says how many more there are."""
    from rich.console import Console

    from llmos.cli.top import render

    evil = "evil\x1b]52;c;aGk=\x07\x1b[2J\x9b"
    pending = [{"id": i, "name": evil if i == 1 else f"p{i}", "team": "a",
                "priority": "normal", "waiting_s": 5, "reason": evil} for i in range(1, 201)]
    console = Console(width=160, record=True, color_system="truecolor", force_terminal=True,
                      file=io.StringIO())
    console.print(render({"nodes": [], "running": [], "pending": pending, "pending_total": 450,
                          "running_total": 0, "deployments": []}, "http://x"))
    raw = console.export_text(styles=True, clear=False)
    assert "]52;" in raw and "\x07" not in raw and "\x9b" not in raw
    assert "[2J" in raw and "\x1b[2J" not in raw and "\x1b]" not in raw
    screen = console.export_text()
    assert "evil\\x1b]52;c;aGk=\\x07\\x1b[2J\\x9b" in screen, screen
    assert "Pending jobs (450)" in screen and "... and 430 more" in screen


def test_a_gpu_node_draws_its_devices_and_gpu_bar():
    """No GPU on the test machine: the frame of an overview with one (the API's shape, as
    on a GPU node) shows each device's use and the node's GPU row."""
    from rich.console import Console

    from llmos.cli.top import render

    gpus = [{"index": i, "name": "NVIDIA H200", "memory_mb": 143771, "allocated": i == 0,
             "util": 0.87 if i == 0 else 0.0, "memory_used_mb": 70000 if i == 0 else 0}
            for i in range(2)]
    node = {"name": "gpu-1", "state": "ready", "capacity": {"cpu": 16, "memory_mb": 131072,
                                                            "gpu": 2},
            "allocated": {"cpu": 4, "memory_mb": 32768, "gpu": 1},
            "usage": {"cpu": 3.5, "memory_mb": 20480, "at": None}, "gpus": gpus}
    console = Console(width=120, record=True, color_system=None)
    job = {"id": 7, "name": "train-7", "team": "a", "node": "gpu-1", "started_at": None,
           "usage": {"cpu": 1.5, "memory_mb": 1234.4, "gpu_util": 0.5, "gpu_memory_mb": 9}}
    console.print(render({"nodes": [node], "running": [job], "pending": [],
                          "deployments": []}, "http://x"))
    screen = console.export_text()
    job_row = next(line for line in screen.splitlines() if "train-7" in line)
    assert job_row.split()[4:7] == ["1.5", "1234", "50%"], job_row
    assert "NVIDIA H200" in screen and "87%" in screen and "68.4/140.4" in screen
    gpu_row = next(line for line in screen.splitlines() if " gpu " in f" {line} ")
    assert "1/2" in gpu_row and "0.87" in gpu_row


def test_a_long_queue_is_listed_in_part_and_counted_whole(busy):
    """The overview lists the 200 longest-waiting pending jobs and counts all of them;
    `top` says how many more wait (the node is full: every one of these waits)."""
    from llmos.sdk.client import job_spec

    before = busy.client.monitor.overview()["pending_total"]
    queued = busy.client.jobs.submit_many([job_spec("noop", name=f"q{i}", cpu=1)
                                           for i in range(210)])
    overview = busy.client.monitor.overview()
    assert overview["pending_total"] == before + 210 and len(overview["pending"]) == 200
    listed = {p["id"] for p in overview["pending"]}
    assert queued[0]["id"] in listed and queued[-1]["id"] not in listed  # oldest first
    result = cli("top", "--once", env=busy.cli_env())
    assert result.returncode == 0, result.stderr
    assert f"Pending jobs ({before + 210})" in result.stdout, result.stdout
    assert f"... and {before + 210 - 20} more" in result.stdout, result.stdout
