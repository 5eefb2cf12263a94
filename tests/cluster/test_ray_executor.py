"""The Ray executor on a real three-node Ray cluster (tests/cluster/conftest.py), driven
as the daemon drives it: nodes as llmos sees them, a launch on the node llmos chose,
logs and reports brought to the daemon's folder while the job runs, its exit, kill, a
fresh executor finding a running attempt again, a node dying under its job, and an
address where no cluster answers.

The functions below ``# -- programs`` also run as jobs (this file, loaded by path): the
module imports nothing but the standard library at the top for that reason.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster
HERE = Path(__file__).resolve()
_ids = count(int(time.time()) % 100_000 * 100)  # job ids unique across runs of this file


# -- programs (run as jobs) -----------------------------------------------------------


def chatty(ctx, lines: int = 3) -> str:
    """Print ``lines`` lines, then wait for a file named ``gate`` in its folder."""
    for i in range(lines):
        print(f"line {i + 1} of job {ctx.job_id}", flush=True)
        ctx.progress(i + 1, lines)
    deadline = time.monotonic() + 120
    while not (ctx.workdir / "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "done"


def call_api(ctx) -> dict:
    """Call the API (the job has no network: through the agent's socket)."""
    return ctx.request("GET", "/v1/ping")


# -- fixtures and helpers ---------------------------------------------------------------


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """tests/live.py's wait_for, polling every 20 ms (imported here: this file is also
    the jobs' program, which runs where tests/ is not on the path)."""
    from live import wait_for as live_wait_for

    return live_wait_for(predicate, timeout, interval=0.02, what=what)


@pytest.fixture(scope="module")
def settings(ray_cluster, tmp_path_factory):
    from llmos.config import Settings

    return Settings(home=tmp_path_factory.mktemp("daemon-home"), ray_address=ray_cluster.address)


@pytest.fixture(scope="module")
def executor(settings):
    from llmos.kernel.executors.ray import RayExecutor

    ex = RayExecutor(settings)
    yield ex
    ex.close()


def plan(settings, node: str, program: str, params: dict | None = None, cores=(0,),
         api_url: str | None = None):
    from llmos.kernel.executors import LaunchPlan
    from llmos.kernel.resources import Allocation

    job_id = next(_ids)
    return LaunchPlan(job_id, 1, program, params or {},
                      Allocation(node, {c: 1000 for c in cores}, 512),
                      settings.jobs_dir / str(job_id), api_url=api_url, api_token="job-token")


def node_workdir(executor, handle) -> Path:
    from llmos.kernel.executors.ray.agent import default_home

    return default_home(handle.ref["node_id"]) / "jobs" / str(handle.job_id)


def mirrored(handle, name: str = "stdout.log") -> str:
    path = handle.workdir / name
    return path.read_text() if path.exists() else ""


def poll_until_exit(executor, handle, timeout: float = 60.0):
    return wait_for(lambda: executor.poll(handle), timeout, "the attempt to end")


def job_processes(folder: Path) -> list:
    """Live processes whose command line names the job's folder on its node (its
    sandbox and runner)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if (any(str(folder) in arg for arg in p.info["cmdline"] or [])
                and p.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(p)
    return found


def open_gate(executor, handle) -> None:
    (node_workdir(executor, handle) / "gate").write_text("go")


# -- tests ------------------------------------------------------------------------------


def test_nodes_are_the_clusters_with_their_labels(executor, ray_cluster):
    nodes = {n.name: n for n in executor.nodes()}
    assert {"head", "edge", "cpu"} <= set(nodes)
    for name in ("head", "edge", "cpu"):
        n = nodes[name]
        assert n.state == "ready" and n.reason == ""
        assert len(n.node_id) == 56 and n.address
        assert n.capacity.memory_mb > 256
        assert not any(k.startswith("ray.io/") for k in n.capacity.labels)
    assert nodes["head"].capacity.labels == {"zone": "core"}
    assert nodes["edge"].capacity.labels == {"zone": "edge"}
    assert nodes["cpu"].capacity.labels == {"gpu": "none"}
    assert nodes["edge"].capacity.cores == (0, 1)
    assert nodes["cpu"].capacity.cores == (0, 1, 2, 3)  # more than this machine has


def test_a_job_runs_on_its_node_and_its_logs_reach_the_daemon(executor, settings):
    import psutil

    p = plan(settings, "edge", f"{HERE}:chatty", {"lines": 3})
    handle = executor.launch(p)
    assert handle.ref["node"] == "edge" and "on node edge" in handle.describe()
    edge = next(n for n in executor.nodes() if n.name == "edge")
    assert handle.ref["node_id"] == edge.node_id
    # the lines show in the daemon's folder while the job runs
    wait_for(lambda: executor.poll(handle) is None and "line 3" in mirrored(handle),
             30, "the job's lines in the daemon's stdout.log")
    assert psutil.pid_exists(handle.pid)
    assert any(str(node_workdir(executor, handle)) in " ".join(q.cmdline())
               for q in [psutil.Process(handle.pid)])
    open_gate(executor, handle)
    ended = poll_until_exit(executor, handle)
    assert ended.kind.value == "succeeded", ended
    assert ended.result["return"] == "done"
    out = mirrored(handle)
    assert out.startswith(f"--- llmos: attempt 1 of job {p.job_id}")
    assert [line for line in out.splitlines() if line.startswith("line")] == [
        f"line {i} of job {p.job_id}" for i in (1, 2, 3)]
    events = [json.loads(x) for x in mirrored(handle, "events.jsonl").splitlines()]
    assert [e["done"] for e in events if e["type"] == "progress"] == [1.0, 2.0, 3.0]
    wait_for(lambda: not job_processes(node_workdir(executor, handle)), 10,
             "the job's processes to be gone")


def test_kill_stops_the_job(executor, settings):
    handle = executor.launch(plan(settings, "head", "sleep", {"seconds": 300}))
    folder = node_workdir(executor, handle)
    wait_for(lambda: job_processes(folder), 20, "the job to run")
    assert executor.poll(handle) is None
    executor.kill(handle)
    ended = poll_until_exit(executor, handle, 20)
    assert ended.kind.value == "killed", ended
    wait_for(lambda: not job_processes(folder), 10, "the job's processes to be gone")


def test_a_fresh_executor_recovers_a_running_attempt(executor, settings):
    from llmos.kernel.executors import Handle
    from llmos.kernel.executors.ray import RayExecutor

    # core 3 of a node declaring 4 CPUs on a machine with fewer: pinned to a real one
    p = plan(settings, "cpu", f"{HERE}:chatty", {"lines": 2}, cores=(3,))
    first = executor.launch(p)
    wait_for(lambda: executor.poll(first) is None and "line 1" in mirrored(first), 30,
             "the first line")
    stored = json.loads(json.dumps(first.ref))  # as the daemon keeps it
    again = RayExecutor(settings)  # a restarted daemon's
    found = again.recover(p.job_id, p.attempt, p.workdir, 512, stored)
    assert isinstance(found, Handle) and found.pid == first.pid
    assert "on node cpu" in found.describe()
    open_gate(again, found)
    ended = poll_until_exit(again, found)
    assert ended.kind.value == "succeeded", ended
    lines = [x for x in mirrored(found).splitlines() if x.startswith("line")]
    assert lines == [f"line {i} of job {p.job_id}" for i in (1, 2)]  # each once
    # an attempt that ended is reported from its reference as well
    assert again.recover(p.job_id, p.attempt, p.workdir, 512, stored).kind.value == "succeeded"


def test_jobs_die_with_their_agent_and_a_new_agent_takes_over(executor, settings):
    handle = executor.launch(plan(settings, "cpu", "sleep", {"seconds": 300}))
    folder = node_workdir(executor, handle)
    wait_for(lambda: job_processes(folder), 20, "the job to run")
    agent_pid = executor.agent_health("cpu")["pid"]

    executor.cluster.kill(handle.ref["node_id"])  # the agent's process dies, not the node
    wait_for(lambda: not job_processes(folder), 15, "the job's processes to be gone")
    ended = poll_until_exit(executor, handle, 15)
    assert ended.kind.value == "lost" and ended.message.startswith("node cpu was lost: ")

    after = executor.launch(plan(settings, "cpu", "echo", {"message": "after"}))
    assert poll_until_exit(executor, after).kind.value == "succeeded"
    assert executor.agent_health("cpu")["pid"] != agent_pid


_PARENT = """
import sys, time
from pathlib import Path
from llmos.config import Settings
from llmos.kernel.executors import LaunchPlan
from llmos.kernel.executors.local import LocalExecutor
from llmos.kernel.resources import Allocation
home = Path(sys.argv[1])
ex = LocalExecutor(Settings(home=home, sandbox=sys.argv[2]), die_with_parent=True)
h = ex.launch(LaunchPlan(1, 1, "sleep", {"seconds": 300}, Allocation("x", {0: 1000}, 256),
                         home / "jobs" / "1"))
print(h.pid, ex.sandbox.mode, flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_a_job_started_to_die_with_its_parent_does(tmp_path, sandbox):
    """LocalExecutor(die_with_parent=True), as agents use it: bubblewrap's
    --die-with-parent in a sandbox, the parent-death signal without one."""
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path), sandbox],
                              stdout=subprocess.PIPE, text=True)
    try:
        mode = parent.stdout.readline().split()[1]
        assert (mode == "none") == (sandbox == "off")
        folder = tmp_path / "jobs" / "1"
        wait_for(lambda: (folder / "launch.claimed.json").exists(), 20, "the job to run")
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: not job_processes(folder), 10, "the job to die with its parent")


def test_a_job_without_network_reaches_the_api_through_its_nodes_agent(executor, settings):
    seen = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"pong": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = plan(settings, "edge", f"{HERE}:call_api",
                 api_url=f"http://127.0.0.1:{server.server_address[1]}")
        handle = executor.launch(p)
        ended = poll_until_exit(executor, handle)
    finally:
        server.shutdown()
    assert ended.kind.value == "succeeded", (ended, mirrored(handle, "stderr.log"))
    assert ended.result["return"] == {"pong": "/v1/ping"}
    assert seen == ["Bearer job-token"]


def test_a_dead_node_is_lost_and_its_job_dies_with_it(executor, settings, ray_cluster):
    ray_cluster.add("doomed", {"zone": "edge"}, num_cpus=1)
    assert any(n.name == "doomed" and n.state == "ready" for n in executor.nodes())
    handle = executor.launch(plan(settings, "doomed", "sleep", {"seconds": 300}))
    folder = node_workdir(executor, handle)
    wait_for(lambda: job_processes(folder), 20, "the job to run")
    assert executor.poll(handle) is None

    ray_cluster.kill("doomed")
    lost = wait_for(lambda: [n for n in executor.nodes()
                             if n.name == "doomed" and n.state == "lost"], 15,
                    "the node to be reported lost")
    assert "Ray reports the node dead" in lost[0].reason
    started = time.monotonic()
    ended = executor.poll(handle)
    assert time.monotonic() - started < 5
    assert ended.kind.value == "lost" and ended.message.startswith("node doomed was lost: ")
    # best effort, never an exception or a hang, on a node that is gone
    started = time.monotonic()
    assert executor.memory_used_mb(handle) is None
    executor.terminate(handle)
    executor.kill(handle)
    assert time.monotonic() - started < 5
    wait_for(lambda: not job_processes(folder), 15, "the job's processes to be gone")


def test_an_unreachable_cluster_is_a_one_line_error_within_seconds(tmp_path):
    from llmos.config import Settings
    from llmos.kernel.executors.ray import ClusterError, RayExecutor

    for address, words in (("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
                           ("no-port-here", "is not host:port"),
                           ("ray://127.0.0.1:10001", "is a URL")):
        started = time.monotonic()
        with pytest.raises(ClusterError) as e:
            RayExecutor(Settings(home=tmp_path, ray_address=address)).nodes()
        assert time.monotonic() - started < 5
        assert words in str(e.value) and "\n" not in str(e.value)


def test_an_agent_reports_its_health_and_each_launch_reaches_the_daemons_folder(executor,
                                                                              settings):
    """What `llmos nodes` and an operator read from an agent: its process, memory and
    sandbox; and repeated launches each mirror their output back. (Memory and launch
    latency are measured against bare Ray by bench/cluster.py, not bounded here.)"""
    health = executor.agent_health("edge")
    assert health["pid"] > 0 and health["rss_mb"] > 0, health
    from llmos.kernel.executors.ray.agent import default_home

    assert health["home"] == str(default_home(health["node_id"]))
    for n in range(3):
        handle = executor.launch(plan(settings, "edge", "echo", {"message": f"hi {n}"}))
        assert poll_until_exit(executor, handle).exit_code == 0
        wait_for(lambda: f"hi {n}\n" in mirrored(handle), 15, "the mirrored line")


# -- the executor's own decisions, with Ray replaced (its real behaviour is tested above) --


class FakeCluster:
    """RayCluster's methods over a node table the test writes; agents answer ``answers``
    (a value, or an exception to raise)."""

    def __init__(self, nodes: list[dict], answers: dict | None = None) -> None:
        self.table, self.answers, self.calls = nodes, answers or {}, []

    def connect(self) -> None:
        pass

    def nodes(self) -> list[dict]:
        return self.table

    def agent(self, node_id, config):
        return node_id

    def call(self, node_id, method, *args, timeout):
        self.calls.append(method)
        answer = self.answers.get(method)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


def raw_node(node_id: str, alive: bool = True, **labels) -> dict:
    return {"node_id": node_id * 7, "alive": alive, "address": "10.1.1.1",
            "resources": {"CPU": 3.0, "memory": float(5 << 30), "GPU": 2.0,
                          "accelerator_type:H100": 1.0},
            "labels": {"ray.io/node-id": node_id, **labels},
            "death_reason": "" if alive else "health check failed"}


def test_a_node_refuses_what_it_cannot_isolate_or_reach_without_network(settings,
                                                                         ray_cluster):
    """A node whose agent runs without a sandbox refuses jobs while isolation is required,
    and no node gives a job the host's network because the API is https."""
    from dataclasses import replace

    from llmos.config import Settings
    from llmos.kernel.executors.ray import RayExecutor

    ray_cluster.add("bare", {"sandbox": "off"})
    bare = RayExecutor(Settings(home=settings.home, ray_address=ray_cluster.address,
                                sandbox="off"))
    try:
        wait_for(lambda: "bare" in {n.name for n in bare.nodes()}, 30, "the bare node")
        with pytest.raises(RuntimeError, match="cannot isolate jobs"):
            bare.launch(replace(plan(settings, "bare", "noop"), require_isolation=True))
        ok = bare.launch(plan(settings, "bare", "noop"))  # not required: it runs
        assert poll_until_exit(bare, ok).kind.value == "succeeded"
    finally:
        bare.close()
    ex = RayExecutor(settings)
    try:
        with pytest.raises(RuntimeError, match="plain-http advertised URL"):
            ex.launch(plan(settings, "edge", "noop", api_url="https://llmos.example:8470"))
    finally:
        ex.close()


def test_ray_nodes_as_llmos_nodes(tmp_path):
    from llmos.config import Settings
    from llmos.kernel.executors.ray import RayExecutor

    fake = FakeCluster([raw_node("aaaaaaaa", **{"llmos.io/name": "a", "zone": "x"}),
                        raw_node("bbbbbbbb", alive=False, **{"llmos.io/name": "a"}),
                        raw_node("cccccccc", alive=False)])
    nodes = RayExecutor(Settings(home=tmp_path), cluster=fake).nodes()
    assert [n.name for n in nodes] == ["a", "node-cccccccccccc"]  # the live "a" wins
    a, c = nodes
    assert a.state == "ready" and a.capacity.labels == {"zone": "x"}
    assert a.capacity.cores == (0, 1, 2) and a.capacity.memory_mb == 5 << 10
    assert [(g.index, g.name, g.memory_mb) for g in a.capacity.gpus] == [(0, "H100", 0),
                                                                          (1, "H100", 0)]
    assert c.state == "lost"
    assert c.reason == "Ray reports the node dead (health check failed)"


def test_a_silent_agent_counts_as_running_then_lost(tmp_path, monkeypatch):
    from llmos.config import Settings
    from llmos.kernel.executors import Handle
    from llmos.kernel.executors import ray as rayexec
    from llmos.kernel.executors.ray._ray import CallTimeout

    fake = FakeCluster([raw_node("aaaaaaaa")], {"poll": CallTimeout("no answer")})
    ex = rayexec.RayExecutor(Settings(home=tmp_path), cluster=fake)
    handle = Handle(1, 1, tmp_path / "1", 256, {"node": "a", "node_id": "a" * 56})
    assert ex.poll(handle) is None  # busy, perhaps: not lost yet
    monkeypatch.setattr(rayexec, "UNANSWERED_LOST_S", 0.0)
    ended = ex.poll(handle)
    assert ended.kind.value == "lost" and "has not answered" in ended.message
    # and once Ray says the node is dead, no agent is asked at all
    fake.table = [raw_node("aaaaaaaa", alive=False)]
    fake.calls.clear()
    ex._table = (0.0, {})
    assert ex.poll(handle).message.startswith("node a was lost: Ray reports the node dead")
    assert fake.calls == []


def test_a_launch_that_timed_out_is_revoked_on_its_node(tmp_path):
    from llmos.config import Settings
    from llmos.kernel.executors.ray import RayExecutor
    from llmos.kernel.executors.ray._ray import CallTimeout

    fake = FakeCluster([raw_node("aaaaaaaa", **{"llmos.io/name": "a"})],
                       {"launch": CallTimeout("the agent did not answer within 60 s"),
                        "abandon": {"done": "never"}})
    settings = Settings(home=tmp_path)
    with pytest.raises(RuntimeError) as e:
        RayExecutor(settings, cluster=fake).launch(plan(settings, "a", "echo"))
    assert fake.calls == ["launch", "abandon"]
    assert "did not answer" in str(e.value) and "revoked there before it started" in str(e.value)


def test_supported_ray_versions():
    from llmos.kernel.executors.ray._ray import version_ok

    assert version_ok("2.60.0") and version_ok("2.40.0")
    assert not version_ok("2.39.1") and not version_ok("3.0.0") and not version_ok("dev")
