"""One llmos over a real three-node Ray cluster, as its users see it: a live `llmos up
--ray` on PostgreSQL, jobs of two teams with quotas and priorities placed on nodes by
llmos, labels, spreading, preemption where the waiting job fits, a node killed under a
checkpointable job and a plain one, and drain.

The cluster (tests/cluster/conftest.py) has nodes ``head`` (zone=core, 2 cpu), ``edge``
(zone=edge, 2 cpu) and ``cpu`` (gpu=none, 4 cpu); a fourth, ``doomed``, joins to be
killed.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import psutil
import pytest

from cluster.ray_live import live_on_ray
from live import program, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


@pytest.fixture(scope="module")
def live(ray_cluster, tmp_path_factory):
    yield from live_on_ray(ray_cluster, tmp_path_factory, "cluster",
                           LLMOS_PREEMPT_GRACE_S="20")


def _nodes(live) -> dict[str, dict]:
    return {n["name"]: n for n in live.client.nodes()}


def _running_on(live, job_id: int, timeout: float = 60) -> dict:
    return wait_for(lambda: (j := live.client.jobs.get(job_id))["state"] == "RUNNING" and j,
                    timeout=timeout, what=f"job {job_id} to run")


def _intervals(job: dict) -> list[tuple[datetime, datetime, str]]:
    """(start, end, node) of each attempt, from the job's transitions."""
    out, start = [], None
    for t in job["transitions"]:
        at = datetime.fromisoformat(t["at"])
        if t["to_state"] == "RUNNING":
            start = at
        elif start is not None and t["from_state"] == "RUNNING":
            out.append((start, at, job["node"]))
            start = None
    return out


def test_llmos_sees_the_clusters_nodes_with_their_labels(live):
    nodes = wait_for(lambda: len(n := _nodes(live)) >= 3 and n, what="three nodes")
    assert {"head", "edge", "cpu"} <= set(nodes)
    assert nodes["edge"]["labels"]["zone"] == "edge" and nodes["cpu"]["capacity"]["cpu"] == 4
    assert all(nodes[n]["state"] == "ready" and nodes[n]["node_id"] for n in ("head", "edge"))


def test_labels_pick_the_node_and_spread_uses_every_node(live):
    edge = live.client.jobs.submit("echo", {"message": "at the edge"},
                                   node_labels={"zone": "edge"})
    done = live.wait_job(edge["id"], timeout=120)
    assert done["state"] == "SUCCEEDED" and done["node"] == "edge"
    assert "at the edge" in live.client.jobs.logs(edge["id"], stream="stdout")
    spread = [live.client.jobs.submit("sleep", {"seconds": 3}, cpu=0.5, group="trio",
                                      spread=True) for _ in range(3)]
    ended = live.wait_all([j["id"] for j in spread], timeout=120)
    assert len({j["node"] for j in ended}) == 3, [j["node"] for j in ended]


def test_sixty_jobs_of_two_teams_respect_node_capacity_and_quotas(live):
    admin = live.client
    for team, cpu in (("alpha", 2), ("beta", 3)):
        admin.teams.create(team)
        admin.teams.set_quota(team, cpu=cpu)
    users = {t: live.user(f"{t}-dev", team=t) for t in ("alpha", "beta")}
    ids = []
    for i in range(60):
        team = "alpha" if i % 2 else "beta"
        job = users[team].jobs.submit("sleep", {"seconds": 0.5 + (i % 3) * 0.3, "steps": 2},
                                      priority=("low", "normal", "high")[i % 3])
        ids.append(job["id"])
    jobs = live.wait_all(ids, timeout=600)
    assert all(j["state"] == "SUCCEEDED" for j in jobs), [j["reason"] for j in jobs]
    capacity = {name: n["capacity"]["cpu"] for name, n in _nodes(live).items()}
    quota = {"alpha": 2, "beta": 3}
    spans = [(s, e, node, j["team"], j["resources"]["cpu"])
             for j in jobs for s, e, node in _intervals(live.client.jobs.get(j["id"]))]
    assert len({node for _, _, node, _, _ in spans}) >= 2  # the work really spread out
    for start, _, _, _, _ in spans:  # at each start, what ran at once
        on_node, of_team = defaultdict(float), defaultdict(float)
        for s, e, node, team, cpu in spans:
            if s <= start < e:
                on_node[node] += cpu
                of_team[team] += cpu
        assert all(on_node[n] <= capacity[n] for n in on_node), on_node
        assert all(of_team[t] <= quota[t] for t in of_team), of_team


def test_a_high_priority_job_preempts_a_checkpointable_one_on_the_node_it_needs(live):
    low = live.client.jobs.submit(program("accumulate"), {"steps": 400, "step_s": 0.05},
                                  cpu=2, priority="low", checkpointable=True,
                                  node_labels={"zone": "edge"})
    _running_on(live, low["id"])
    high = live.client.jobs.submit("echo", cpu=2, priority="high", node_labels={"zone": "edge"})
    assert live.wait_job(high["id"], timeout=120)["node"] == "edge"
    resumed = live.wait_job(low["id"], timeout=180)
    assert resumed["state"] == "SUCCEEDED" and resumed["attempt"] >= 2
    assert any("preempted by higher-priority job" in (t["reason"] or "")
               for t in resumed["transitions"])


def _drain_all_but(live, keep: str) -> list[str]:
    others = [n for n, info in _nodes(live).items() if n != keep and info["state"] == "ready"]
    for name in others:
        live.client.drain(name)
    return others


def _node_processes(node_id: str) -> list[psutil.Process]:
    """Job processes still alive from a node's agent (its node home in their command)."""
    tag = f"llmos-node-{node_id[:16]}"
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(tag in part for part in p.info["cmdline"] or ()):
            found.append(p)
    return found


def test_a_dead_nodes_jobs_resume_elsewhere_and_none_runs_twice(live, ray_cluster):
    ray_cluster.add("doomed", {"pool": "doomed"})
    nodes = wait_for(lambda: "doomed" in (n := _nodes(live)) and n, what="the new node")
    doomed_id = nodes["doomed"]["node_id"]
    others = _drain_all_but(live, "doomed")
    try:
        steady = live.client.jobs.submit(program("accumulate"),
                                         {"steps": 60, "step_s": 0.1, "every": 5},
                                         cpu=1, checkpointable=True, max_retries=1)
        plain = live.client.jobs.submit("sleep", {"seconds": 30}, cpu=1, max_retries=1)
        for job in (steady, plain):
            assert _running_on(live, job["id"])["node"] == "doomed"
        wait_for(lambda: (live.client.jobs.get(steady["id"])["checkpoint_artifact"]),
                 timeout=60, what="a checkpoint stored as an artifact")
    finally:
        for name in others:
            live.client.drain(name, undo=True)
    ray_cluster.kill("doomed")
    wait_for(lambda: _nodes(live)["doomed"]["state"] == "lost", timeout=30,
             what="the node to be lost")
    assert not _node_processes(doomed_id)  # nothing of the dead node runs on
    done = live.wait_job(steady["id"], timeout=180)
    assert done["state"] == "SUCCEEDED" and done["node"] != "doomed", [(t["to_state"], t["attempt"], t["reason"]) for t in done["transitions"]]
    assert any("node doomed was lost" in (t["reason"] or "") for t in done["transitions"])
    metrics = live.client.jobs.metrics(steady["id"])
    starts = [m["value"] for m in metrics if m["name"] == "started_at_step"]
    assert starts[0] == 0 and starts[-1] > 0  # the retry resumed from its checkpoint
    [total] = [m["value"] for m in metrics if m["name"] == "total"]
    assert total == sum(s * s for s in range(60))  # the same result as one run
    retried = live.wait_job(plain["id"], timeout=180)
    assert retried["state"] == "SUCCEEDED" and retried["attempt"] == 2
    running = [t for t in retried["transitions"] if t["to_state"] == "RUNNING"]
    left = [t for t in retried["transitions"] if t["from_state"] == "RUNNING"]
    assert datetime.fromisoformat(left[0]["at"]) <= datetime.fromisoformat(running[1]["at"])


def test_drain_moves_a_checkpointable_job_off_its_node(live):
    job = live.client.jobs.submit(program("accumulate"), {"steps": 200, "step_s": 0.05},
                                  cpu=1, checkpointable=True)
    first = _running_on(live, job["id"])["node"]
    live.client.drain(first)
    try:
        done = live.wait_job(job["id"], timeout=180)
        assert done["state"] == "SUCCEEDED" and done["node"] != first
        assert _nodes(live)[first]["running_jobs"] == 0
        after = live.client.jobs.submit("noop")
        assert live.wait_job(after["id"], timeout=120)["node"] != first
    finally:
        live.client.drain(first, undo=True)


def test_a_deployment_spread_over_two_nodes_keeps_answering_while_one_dies(
        live, ray_cluster, tmp_path_factory):
    """Two replicas on the two nodes labelled tier=serve; one node is killed while a client
    keeps asking: every request is answered (the gateway retries once on the other
    replica), and the lost replica is replaced."""
    import threading

    import tiny_models

    for name in ("serve-a", "serve-b"):
        ray_cluster.add(name, {"tier": "serve"})
    wait_for(lambda: {"serve-a", "serve-b"} <= set(_nodes(live)), what="the serving nodes")
    root = tmp_path_factory.mktemp("served")
    tok = tiny_models.smollm2_tokenizer(root / "tok")
    job = live.client.models.import_("tiny-llama", tiny_models.llama(root / "llama", tok,
                                                                     hidden=64),
                                     memory_mb=3072)
    assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED"
    with live.http() as http:
        r = http.post("/v1/deployments", json={
            "model": "tiny-llama", "name": "twin", "replicas": 2, "cpu": 0.25,
            "memory_mb": 1024, "node_labels": {"tier": "serve"}})
        assert r.status_code == 201, r.text

        def workers() -> list[dict]:
            jobs = live.client.jobs.list(state="RUNNING", limit=1000)["jobs"]
            return [j for j in jobs if j["program"] == "serve.worker"]

        def ask() -> int:
            return http.post("/v1/chat/completions", timeout=120, json={
                "model": "twin", "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 2, "temperature": 0}).status_code

        placed = wait_for(lambda: len(w := workers()) == 2 and w, timeout=180,
                          what="two workers")
        assert {w["node"] for w in placed} == {"serve-a", "serve-b"}  # spread
        assert ask() == 200
        codes: list[int] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                codes.append(ask())

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_for(lambda: len(codes) >= 3, timeout=60, what="requests under way")
            ray_cluster.kill("serve-a")
            wait_for(lambda: _nodes(live)["serve-a"]["state"] == "lost", timeout=30,
                     what="the node to be lost")
            seen = len(codes)
            wait_for(lambda: len(codes) >= seen + 5, timeout=120, what="requests after")
        finally:
            stop.set()
            thread.join(timeout=180)
        assert codes and set(codes) == {200}, codes
        replaced = wait_for(lambda: len(w := workers()) == 2 and w, timeout=180,
                            what="the replica to be replaced")
        assert {w["node"] for w in replaced} == {"serve-b"}
