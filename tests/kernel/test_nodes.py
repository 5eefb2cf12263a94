"""Nodes as a user sees them on one machine: `llmos nodes` / GET /v1/nodes, labels that
jobs select, drain and undrain (administrators only), and bad placement input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from live import LiveDaemon, program, wait_for


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("nodes") / "home"
    home.mkdir()
    daemon = LiveDaemon(home, env={"LLMOS_NODE_LABELS": "zone=lab,disk=ssd"}).start()
    yield daemon
    daemon.stop()
    daemon.client.close()


def _node(live) -> dict:
    [node] = live.client.nodes()
    return node


def _cli(live, *args, token=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], capture_output=True,
                          text=True, env=live.cli_env(token), timeout=60)


def test_the_machine_is_one_ready_node_with_its_labels_and_a_heartbeat(live):
    node = _node(live)
    assert node["state"] == "ready" and node["labels"] == {"zone": "lab", "disk": "ssd"}
    assert node["capacity"]["cpu"] == 2 and node["heartbeat_at"] is not None
    shown = _cli(live, "nodes")
    assert shown.returncode == 0, shown.stderr
    assert node["name"] in shown.stdout and "disk=ssd,zone=lab" in shown.stdout


def test_a_job_runs_on_a_node_with_its_labels_and_waits_for_labels_no_node_has(live):
    ok = live.client.jobs.submit("noop", node_labels={"zone": "lab"})
    assert live.wait_job(ok["id"])["state"] == "SUCCEEDED"
    job = live.client.jobs.submit("noop", node_labels={"gpu": "h100"}, name="needs-h100")
    assert job["node_labels"] == {"gpu": "h100"}
    waiting = wait_for(lambda: (j := live.client.jobs.get(job["id"]))["reason"]
                       and "gpu=h100" in j["reason"] and j, what="the job's reason")
    assert waiting["state"] == "PENDING" and "no ready node" in waiting["reason"]
    live.client.jobs.cancel(job["id"])


@pytest.mark.parametrize("labels, field", [({"bad key": "x"}, "node_labels"),
                                           ({"zone": ""}, "node_labels"),
                                           ({"z": "a" * 70}, "node_labels")])
def test_malformed_labels_are_a_422_naming_the_field(live, labels, field):
    with live.http() as http:
        r = http.post("/v1/jobs", json={"program": "noop", "node_labels": labels})
    assert r.status_code == 422 and field in r.text


def test_the_cli_refuses_a_label_without_a_value_in_one_line(live):
    done = _cli(live, "job", "submit", "noop", "--node-label", "zone")
    assert done.returncode == 2 and "is not key=value" in done.stderr
    assert "Traceback" not in done.stderr


def test_drain_keeps_new_work_off_the_node_until_undrained(live):
    name = _node(live)["name"]
    drained = _cli(live, "nodes", "drain", name)
    assert drained.returncode == 0, drained.stderr
    assert _node(live)["state"] == "draining"
    job = live.client.jobs.submit("noop")
    wait_for(lambda: "draining" in (live.client.jobs.get(job["id"])["reason"] or ""),
             what="the job to say the node drains")
    assert live.client.jobs.get(job["id"])["state"] == "PENDING"
    assert _cli(live, "nodes", "undrain", name).returncode == 0
    assert live.wait_job(job["id"])["state"] == "SUCCEEDED"
    assert _node(live)["state"] == "ready"


def test_draining_a_node_makes_its_checkpointable_job_yield_and_resume(live):
    job = live.client.jobs.submit(program("resumable"), {"steps": 200, "step_s": 0.05},
                                  checkpointable=True)
    wait_for(lambda: live.client.jobs.get(job["id"])["state"] == "RUNNING", what="running")
    name = _node(live)["name"]
    live.client.drain(name)
    try:
        back = wait_for(lambda: (j := live.client.jobs.get(job["id"]))["state"] == "PENDING"
                        and j["attempt"] == 1 and j, timeout=60, what="the job to yield")
        assert "draining" in " ".join(t["reason"] or "" for t in back["transitions"])
    finally:
        live.client.drain(name, undo=True)
    done = live.wait_job(job["id"], timeout=120)
    assert done["state"] == "SUCCEEDED" and done["attempt"] == 2


def test_only_an_administrator_drains_and_an_unknown_node_is_a_404(live):
    dev = live.user("nodes-dev", team="nodes-team")
    name = _node(live)["name"]
    done = _cli(live, "nodes", "drain", name, token=dev.token)
    assert done.returncode == 1 and "admin" in done.stderr.lower()
    assert _node(live)["state"] == "ready"
    with live.http() as http:
        r = http.post("/v1/nodes/no-such-node/drain")
    assert r.status_code == 404 and "not found" in r.json()["error"]["message"]


def test_where_the_nodes_are_is_for_administrators_only(live):
    viewer = live.user("nodes-viewer", team="nodes-team", role="viewer")
    [seen] = viewer.nodes()
    assert seen["state"] == "ready" and seen["labels"] == {"zone": "lab", "disk": "ssd"}
    assert seen["address"] == "" and seen["node_id"] is None
    assert _node(live)["address"]  # the administrator sees it
