"""Autoscaling, scale to zero, cold start and drain replacement of serving pools.

The policy (``serve.autoscale``) is pure: its decisions are checked here pass by pass with
a clock in hand. The live tests run a daemon with short periods and deploy the tiny Llama
the other serving tests use: load starts a second worker and its end stops it; an idle
deployment scales to zero and a request wakes it; a drained node gets its worker replaced
before the old one stops.
"""

from __future__ import annotations

import concurrent.futures
import re
import socket
import threading
import time

import httpx
import psutil
import pytest
import tiny_models
from live import LiveDaemon, wait_for

from llmos.serve.autoscale import (
    Load,
    Policy,
    Scale,
    Tuning,
    WorkerJob,
    decide,
    initial,
    plan_workers,
    policy_of,
)
from llmos.serve.deployments import DeployRequest

# -- the policy, pass by pass --------------------------------------------------------------

POLICY = Policy(min_replicas=1, max_replicas=4, idle_s=None, target_inflight=4,
                down_after_s=30)


def run(policy: Policy, passes: list[tuple[float, Load]], start: int = 1) -> list[Scale]:
    """The decisions over passes of (time, load), from ``start`` replicas."""
    last, out = Scale(start, "deployed"), []
    for now, load in passes:
        last = decide(policy, load, last, now)
        out.append(last)
    return out


def test_load_above_the_target_scales_up_at_once_to_what_it_needs():
    [s] = run(POLICY, [(0, Load(inflight=10))])
    assert s.desired == 3 and "10 request(s) in flight" in s.reason  # ceil(10 / 4)
    [s] = run(POLICY, [(0, Load(inflight=100))])
    assert s.desired == 4 and "capped at max_replicas 4" in s.reason


def test_scaling_down_waits_for_a_stable_period_and_goes_one_step_at_a_time():
    low = Load(inflight=1)
    seen = [s.desired for s in run(POLICY, [(t, low) for t in (0, 10, 29, 30, 45, 60, 90)],
                                   start=4)]
    # low since 0: one step at 30, the clock starts again, the next at 60, then 90
    assert seen == [4, 4, 4, 3, 3, 2, 1]
    [*_, last] = run(POLICY, [(t, low) for t in range(0, 300, 10)], start=4)
    assert last.desired == 1 and "one step down" in last.reason  # never below min


def test_the_dead_band_between_half_and_whole_target_never_flaps():
    # 2 replicas, 5 in flight: 2.5 per replica, between 2 and 4 — nothing moves, ever
    passes = [(t, Load(inflight=5)) for t in range(0, 600, 15)]
    assert {s.desired for s in run(POLICY, passes, start=2)} == {2}
    # a dip below half the target restarts nothing unless it lasts the whole period
    dips = [(0, Load(inflight=1)), (20, Load(inflight=5)), (40, Load(inflight=1)),
            (65, Load(inflight=1)), (70, Load(inflight=1))]
    assert [s.desired for s in run(POLICY, dips, start=2)] == [2, 2, 2, 2, 1]


def test_scale_to_zero_only_after_idle_and_a_request_wakes_it():
    zero = Policy(min_replicas=0, max_replicas=2, idle_s=60, target_inflight=4)
    out = run(zero, [(0, Load(idle_for_s=30)), (30, Load(idle_for_s=60)),
                     (31, Load(idle_for_s=61)), (40, Load(waiting=1, idle_for_s=0))])
    assert [s.desired for s in out] == [1, 0, 0, 1]
    assert "scaled to zero" in out[1].reason and "cold start" in out[3].reason
    # a request that came (and gave up waiting) still wakes it: it is not idle any more
    assert run(zero, [(0, Load(idle_for_s=2))], start=0)[0].desired == 1
    # busy (in flight) is never idle, whatever the clock says
    assert run(zero, [(0, Load(inflight=1, idle_for_s=999))])[0].desired == 1
    # min_replicas 1: never zero
    assert run(POLICY, [(0, Load(idle_for_s=10_000))])[0].desired == 1


def test_p99_latency_above_its_target_adds_one_replica():
    slow = Policy(min_replicas=1, max_replicas=3, idle_s=None, target_inflight=8,
                  target_p99_s=1.0)
    [s] = run(slow, [(0, Load(inflight=5, p99_s=2.5))], start=2)
    assert s.desired == 3 and "p99 latency 2.50 s" in s.reason
    assert run(slow, [(0, Load(inflight=0, p99_s=2.5))], start=2)[0].desired == 2  # no load


class D:  # the fields of a Deployment row the policy reads
    def __init__(self, replicas=1, min_replicas=None, max_replicas=None, idle_s=None,
                 max_batch=32):
        self.replicas, self.min_replicas, self.max_replicas = replicas, min_replicas, max_replicas
        self.idle_s, self.max_batch = idle_s, max_batch


def test_a_pools_policy_comes_from_its_deployments():
    assert policy_of([D(replicas=3)], Tuning()) is None  # fixed
    p = policy_of([D(min_replicas=0, max_replicas=4, idle_s=60, max_batch=8)], Tuning())
    assert (p.min_replicas, p.max_replicas, p.idle_s, p.target_inflight) == (0, 4, 60, 4)
    # a fixed deployment sharing the pool is a floor; the smallest batch sets the target
    p = policy_of([D(min_replicas=0, max_replicas=4, idle_s=60, max_batch=8),
                   D(replicas=2, max_batch=2)], Tuning(target_inflight=None))
    assert (p.min_replicas, p.idle_s, p.target_inflight) == (2, None, 1)
    assert policy_of([D(min_replicas=1, max_replicas=2)], Tuning(target_inflight=3)
                     ).target_inflight == 3
    assert initial([D(replicas=2, min_replicas=1, max_replicas=3)],
                   policy_of([D(replicas=2, min_replicas=1, max_replicas=3)], Tuning())
                   ).desired == 2


# -- which workers start and stop ------------------------------------------------------------


def test_a_worker_on_a_draining_node_is_replaced_before_it_stops():
    old = WorkerJob(1, on_draining_node=True, ready=True)
    plan = plan_workers([old], want=1)
    assert (plan.start, plan.stop, plan.replacing) == (1, [], [1])
    starting = WorkerJob(2, on_draining_node=False, ready=False)
    plan = plan_workers([old, starting], want=1)
    assert (plan.start, plan.stop, plan.replacing) == (0, [], [1])  # not ready: keep old
    plan = plan_workers([old, WorkerJob(2, False, True)], want=1)
    assert (plan.start, plan.stop) == (0, [1])  # the replacement serves: old stops
    # one on a draining node that does not serve yet stops at once
    plan = plan_workers([WorkerJob(3, True, False)], want=1)
    assert (plan.start, plan.stop) == (1, [3])
    # scaled to zero: everything stops
    assert plan_workers([old, WorkerJob(2, False, True)], want=0).stop == [2, 1]


def test_scaling_down_stops_workers_that_do_not_serve_yet_first():
    jobs = [WorkerJob(1, False, True), WorkerJob(2, False, True), WorkerJob(3, False, False)]
    assert plan_workers(jobs, want=2).stop == [3]
    assert plan_workers(jobs, want=1).stop == [3, 2]
    assert plan_workers(jobs, want=4).start == 1


# -- what a deployment may ask -----------------------------------------------------------------


def test_autoscaling_bounds_and_labels_are_checked_naming_the_field():
    ok = DeployRequest(model="m", min_replicas=0, max_replicas=3)
    assert (ok.replicas, ok.idle_s) == (1, 300.0)  # starts at one, idles to zero in 5 min
    assert DeployRequest(model="m", min_replicas=2, max_replicas=3).replicas == 2
    for bad, field in (({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
                       ({"replicas": 5, "min_replicas": 1, "max_replicas": 2}, "replicas"),
                       ({"max_replicas": 65}, "max_replicas"),
                       ({"min_replicas": 1}, "max_replicas"),
                       ({"idle_s": 5}, "idle_s"),
                       ({"node_labels": {"zone": "bad value"}}, "node_labels")):
        with pytest.raises(ValueError, match=field):
            DeployRequest(model="m", **bad)
    assert DeployRequest(model="m", node_labels="zone=edge").node_labels == {"zone": "edge"}


# -- live ----------------------------------------------------------------------------------------

MEMORY_MB = 1024  # a tiny Llama's worker needs little


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A daemon with short autoscaling periods and the tiny Llama registered."""
    root = tmp_path_factory.mktemp("autoscale")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home", cpus=2, env={
        "LLMOS_SERVE_SCALE_DOWN_S": "3", "LLMOS_SERVE_COLD_START_S": "20",
        "LLMOS_SERVE_TARGET_INFLIGHT": "1"}).start()
    tok = tiny_models.smollm2_tokenizer(root / "tok")
    job = live.client.models.import_("tiny-llama", tiny_models.llama(root / "llama", tok,
                                                                     hidden=64),
                                     memory_mb=3072)
    assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED"
    yield live
    live.stop()


def deploy(live: LiveDaemon, name: str, **kw) -> dict:
    with live.http() as http:
        r = http.post("/v1/deployments", json={"model": "tiny-llama", "name": name,
                                               "cpu": 0.25, "memory_mb": MEMORY_MB, **kw})
    assert r.status_code == 201, r.text
    return r.json()


def chat(live: LiveDaemon, name: str, max_tokens: int = 4, timeout: float = 120) -> httpx.Response:
    with live.http() as http:
        return http.post("/v1/chat/completions", timeout=timeout, json={
            "model": name, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "temperature": 0})


def state(live: LiveDaemon, name: str) -> dict:
    return live.client.deployments.get(name)


def test_load_starts_a_second_worker_and_its_end_stops_it(served):
    deploy(served, "auto", min_replicas=1, max_replicas=2, max_batch=4)
    wait_for(lambda: state(served, "auto")["ready_workers"] == 1, timeout=240,
             what="the first worker")
    stop = threading.Event()

    def load(_):
        while not stop.is_set():  # long answers: several in flight all the time
            assert chat(served, "auto", max_tokens=120).status_code == 200

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(load, i) for i in range(4)]
        try:
            up = wait_for(lambda: (d := state(served, "auto"))["desired_replicas"] == 2 and d,
                          timeout=60, interval=0.2, what="the load to want two replicas")
            assert "in flight" in up["scale_reason"]
            wait_for(lambda: state(served, "auto")["ready_workers"] == 2, timeout=240,
                     interval=0.5, what="the second worker to serve")
        finally:
            stop.set()
        for r in running:
            r.result()
    t0 = time.monotonic()
    down = wait_for(lambda: (d := state(served, "auto"))["desired_replicas"] == 1
                    and d["current_replicas"] == 1 and d, timeout=60, interval=0.2,
                    what="back to one replica once the load stopped")
    assert "one step down" in down["scale_reason"]
    assert time.monotonic() - t0 >= 2  # not at once: after the stable period (3 s)
    wait_for(lambda: state(served, "auto")["ready_workers"] == 1, timeout=60,
             what="the stopped worker to leave")
    assert chat(served, "auto").status_code == 200


def test_an_idle_deployment_scales_to_zero_and_a_request_wakes_it(served):
    deploy(served, "sleepy", min_replicas=0, max_replicas=1, idle_s=2)
    wait_for(lambda: state(served, "sleepy")["ready_workers"] == 1, timeout=240,
             what="its first worker")
    zero = wait_for(lambda: (d := state(served, "sleepy"))["desired_replicas"] == 0
                    and d["current_replicas"] == 0 and d["ready_workers"] == 0 and d,
                    timeout=60, interval=0.2, what="scaled to zero")
    assert "scaled to zero" in zero["scale_reason"]
    # cold start: the bound (20 s here) covers a tiny model's worker start, so the request
    # waits and gets its answer
    t0 = time.monotonic()
    r = chat(served, "sleepy")
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    assert time.monotonic() - t0 < 20
    d = state(served, "sleepy")
    assert d["ready_workers"] == 1 and d["desired_replicas"] == 1


def test_bounds_and_labels_are_refused_with_422(served):
    with served.http() as http:
        for body, field in (({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
                            ({"replicas": 3, "min_replicas": 1, "max_replicas": 2},
                             "replicas"),
                            ({"max_replicas": 100}, "max_replicas"),
                            ({"node_labels": {"zone": "no spaces"}}, "node_labels")):
            r = http.post("/v1/deployments", json={"model": "tiny-llama", "name": "bad",
                                                   **body})
            assert r.status_code == 422 and field in r.json()["error"]["message"], r.text
        assert http.get("/v1/deployments/bad").status_code == 404


def test_a_deployment_for_absent_nodes_answers_503_starting_with_retry_after(served):
    """Edge placement: its worker waits for a node labelled zone=edge; a request waits its
    bound and is told the deployment is starting — never a hang, never a 500."""
    deploy(served, "edge", node_labels={"zone": "edge"})
    d = wait_for(lambda: (d := state(served, "edge"))["problem"] and d, timeout=30,
                 what="the worker's reason to wait")
    assert "zone=edge" in d["problem"] and d["node_labels"] == {"zone": "edge"}
    assert d["ready_workers"] == 0
    with served.http() as http:  # the gateway's own bound is 20 s here
        r = http.post("/v1/chat/completions", timeout=120, json={
            "model": "edge", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    err = r.json()["error"]
    assert err["code"] == "deployment_starting" and "starting" in err["message"]


def test_a_worker_on_a_draining_node_is_replaced_first(served):
    deploy(served, "steady")
    first = wait_for(lambda: (d := state(served, "steady"))["ready_workers"] == 1 and d,
                     timeout=240, what="its worker")["workers"][0]["job_id"]
    node = socket.gethostname()
    with served.http() as http:
        assert http.post(f"/v1/nodes/{node}/drain").status_code == 200, "drain"
        try:
            d = wait_for(lambda: (d := state(served, "steady"))["desired_replicas"] == 1
                         and "replacing worker job" in (d["scale_reason"] or "") and d,
                         timeout=30, interval=0.2, what="a replacement to be asked for")
            assert str(first) in d["scale_reason"]
            # the replacement waits for a ready node (none here); the old one keeps serving
            assert chat(served, "steady").status_code == 200
            assert [w["job_id"] for w in state(served, "steady")["workers"]] == [first]
            job = served.client.jobs.get(first)
            assert job["state"] == "RUNNING"
        finally:
            assert http.post(f"/v1/nodes/{node}/undrain").status_code == 200
    # undrained: one worker again, the one that served all along
    wait_for(lambda: (d := state(served, "steady"))["current_replicas"] == 1
             and [w["job_id"] for w in d["workers"]] == [first], timeout=60,
             what="the pool to settle on its first worker")
    assert chat(served, "steady").status_code == 200


def test_a_request_to_a_dead_worker_fails_over_to_another_once(served):
    deploy(served, "twin", replicas=2)
    d = wait_for(lambda: (d := state(served, "twin"))["ready_workers"] == 2 and all(
        w["resident"] for w in d["workers"]) and d, timeout=240, what="two loaded workers")
    # at equal load the gateway picks the first registered worker: kill that one
    victim = d["workers"][0]["job_id"]
    tree = psutil.Process(served.client.jobs.get(victim)["pid"])
    for p in [tree, *tree.children(recursive=True)]:  # the worker dies, as on a lost node
        p.kill()
    psutil.wait_procs([tree], timeout=10)
    r = chat(served, "twin")  # sent at once: the gateway still lists the dead worker
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    log = (served.home / "daemon.log").read_text()
    # refused (ConnectError), or a kept-alive connection that dropped (ReadError, ...)
    assert re.search(rf"worker job {victim} is unreachable \((ConnectError|ReadError|"
                     r"RemoteProtocolError)\); retrying on another worker", log), log[-2000:]
    wait_for(lambda: state(served, "twin")["ready_workers"] == 2, timeout=120,
             what="the pool to get its second worker back")
