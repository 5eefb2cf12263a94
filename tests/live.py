"""A real llmos daemon (`llmos up` in a subprocess, which builds the whole system through
``llmos.system``, as in production) for tests and benchmarks, and polling helpers.

No sleeps to wait for state: everything polls the API with a deadline. The daemon's first
start creates the administrator and saves its token in ``home/credentials.json``; the
daemon's ``client`` uses it (``admin_token``), and :meth:`LiveDaemon.user` makes further
users with a role in a team.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from llmos.sdk import Client, DaemonUnreachable

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
PROGRAMS = Path(__file__).parent / "programs.py"


def program(name: str) -> str:
    """A test program by function name, as an absolute path/to/file.py:function."""
    return f"{PROGRAMS}:{name}"


def free_port() -> int:
    """A port free now, for a daemon that binds it a moment later: drawn at random below
    the kernel's ephemeral range (32768 and up on Linux), so that neither this process's
    nor the other pytest worker's outgoing connections take it meanwhile."""
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32767")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class LiveDaemon:
    def __init__(self, home: Path, cpus: int = 2, env: dict | None = None,
                 ca: str | None = None):
        self.home = home
        self.port = free_port()
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.ca = ca
        self.verify = ca or True  # with TLS: the CA bundle that verifies the daemon
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")},
            "LLMOS_HOME": str(home),
            "LLMOS_CPUS": str(cpus),
            "LLMOS_URL": self.url,
            "LLMOS_CANCEL_GRACE_S": "2",
            # team members run the test programs: their folder is a root they may read
            "LLMOS_INGEST_ROOTS": str(PROGRAMS.parent),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.admin_token: str | None = None
        self.client = Client(self.url, token="", verify=self.verify)

    def start(self) -> LiveDaemon:
        log = open(self.home / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmos.cli.main", "up", "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self._healthy, timeout=60, what="the daemon to answer /healthz")
        if self.admin_token is None:  # saved by this store's first start (on any port)
            saved = json.loads((self.home / "credentials.json").read_text())["daemons"]
            entry = saved.get(self.url) or next(iter(saved.values()))
            self.admin_token = entry["token"]
        self.client.close()
        self.client = Client(self.url, token=self.admin_token, verify=self.verify)
        return self

    def user(self, name: str, team: str = "default", role: str = "developer") -> Client:
        """A client for a new user with ``role`` in ``team`` (created when missing)."""
        if team not in {t["name"] for t in self.client.teams.list()}:
            self.client.teams.create(team)
        made = self.client.users.create(name, team=team, role=role)
        return Client(self.url, token=made["token"], verify=self.verify)

    def http(self, token: str | None = None, **kwargs) -> httpx.Client:
        """A raw HTTP client, presenting ``token`` (default: the administrator's)."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        verify = ssl.create_default_context(cafile=self.verify) if self.ca else True
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, verify=verify,
                            **kwargs)

    def cli_env(self, token: str | None = None) -> dict:
        """Environment for running the `llmos` CLI against this daemon."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
        env.update(LLMOS_URL=self.url, LLMOS_TOKEN=token or self.admin_token, COLUMNS="200")
        return env

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.client.health()["status"] == "ok"
        except DaemonUnreachable:
            return False

    def log(self) -> str:
        return (self.home / "daemon.log").read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=60)
        return self.proc.returncode if self.proc else 0

    def wait_job(self, job_id: int, timeout: float = 60.0, states=TERMINAL) -> dict:
        try:
            return wait_for(lambda: (j := self.client.jobs.get(job_id))["state"] in states and j,
                            timeout=timeout, what=f"job {job_id} to reach {states}")
        except AssertionError as e:  # say where the job stands and what the daemon logged
            job = self.client.jobs.get(job_id)
            history = [(t["to_state"], t["attempt"], t["reason"]) for t in job["transitions"]]
            lines = self.log().splitlines()
            raise AssertionError(f"{e}: it is {job['state']} on {job.get('node')} "
                                 f"({job.get('reason')}), history {history}\n"
                                 "daemon log (end):\n" + "\n".join(lines[-60:])) from None

    def wait_all(self, ids: list[int], timeout: float = 120.0) -> list[dict]:
        def done():
            jobs = self.client.jobs.list(limit=10_000)["jobs"]
            mine = [j for j in jobs if j["id"] in set(ids)]
            return all(j["state"] in TERMINAL for j in mine) and len(mine) == len(ids) and mine
        return wait_for(done, timeout=timeout, interval=0.2, what=f"{len(ids)} jobs to end")


def register_copy(live: LiveDaemon, c: Client, source: str, target: str, version: int,
                  corrupt: str | None = None) -> int:
    """Register ``source:version``'s files as the next version of ``target``, the file
    ``corrupt`` replaced by bytes that are not a model (a broken upload)."""
    v = c.models.version(source, version)
    files = [{"path": f["path"], "artifact_id": f["artifact_id"]} for f in v["files"]]
    info = v["info"]
    if corrupt:
        art = c.artifacts.put(b"these bytes are not a safetensors file" * 64, name=corrupt)
        files = [f if f["path"] != corrupt else {"path": corrupt, "artifact_id": art["id"]}
                 for f in files]
        info = {**info, "files": [f if f["path"] != corrupt else
                                  {**f, "sha256": art["sha256"], "size": art["size"]}
                                  for f in info["files"]]}
    with live.http(c.token) as http:
        r = http.post(f"/v1/registry/models/{target}/versions",
                      json={"files": files, "info": info})
    assert r.status_code == 201, r.text
    return r.json()["version"]


import pytest  # noqa: E402


@pytest.fixture
def daemon(tmp_path):
    """A live daemon on a 2-cpu node of its own, stopped after the test."""
    (tmp_path / "home").mkdir()
    live = LiveDaemon(tmp_path / "home").start()
    yield live
    live.stop()
    live.client.close()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    """One live daemon for a whole test module (its tests must not assume an empty store)."""
    home = tmp_path_factory.mktemp("shared") / "home"
    home.mkdir()
    live = LiveDaemon(home).start()
    yield live
    live.stop()
    live.client.close()
