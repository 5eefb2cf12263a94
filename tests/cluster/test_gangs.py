"""A gang larger than every node, run by a live `llmos up --ray` over two GPU nodes of a
real Ray cluster: one rank per node, meeting through ``torch.distributed``; refused at
submit when it did not ask to span nodes, or when no set of nodes could hold it; failed
when one rank fails, cancelled, found again after a daemon restart, and failed when a node
of the gang dies — the other rank stopped each time.

The nodes ``g1`` and ``g2`` declare 2 GPUs each to Ray (this machine has none: the ranks
see them as ``CUDA_VISIBLE_DEVICES`` and meet over Gloo); the head has none. Metadata on PostgreSQL, as a
multi-node llmos needs. Jobs share the host's network (``LLMOS_JOB_NETWORK=host``): a gang's ranks must reach each other.
"""

from __future__ import annotations

import psutil
import pytest
from cluster.ray_live import live_on_ray
from live import program, wait_for
from llmos.sdk import APIError

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]
# 2 gpu, 0.5 cpu, 2 GB on each node
GANG = {"gpu": 4, "cpu": 1, "memory_mb": 4096, "multi_node": True}


@pytest.fixture(scope="module")
def live(gpu_cluster, tmp_path_factory):
    for daemon in live_on_ray(gpu_cluster, tmp_path_factory, "gangs",
                              LLMOS_JOB_NETWORK="host"):
        wait_for(lambda: {"g1", "g2"} <= {n["name"] for n in daemon.client.nodes()},
                 what="the GPU nodes")
        yield daemon


def _reasons(job: dict) -> list[str]:
    return [t["reason"] or "" for t in job["transitions"]]


def _running(live, job_id: int) -> dict:
    return wait_for(lambda: (j := live.client.jobs.get(job_id))["state"] == "RUNNING" and j,
                    timeout=120, what=f"job {job_id} to run")


def test_a_gang_larger_than_every_node_runs_one_rank_on_each_and_they_meet(live):
    job = live.client.jobs.submit("allreduce", {"size": 4096, "rounds": 3, "backend": "gloo"},
                                  **GANG)
    done = live.wait_job(job["id"], timeout=240)
    assert done["state"] == "SUCCEEDED", _reasons(done)
    result = done["result"]
    assert result["world_size"] == 2 and result["rank"] == 0 and result["sum"] == 3
    assert result["backend"] == "gloo" and len(result["hosts"]) == 2
    assert any("a gang of 4 gpu over 2 nodes" in r for r in _reasons(done))
    assert done["node"] in ("g1", "g2")  # the leader's node
    assert "rank 0 of 2" in live.client.jobs.logs(job["id"], stream="stdout")
    # the other rank's log is mirrored beside the job's
    other = live.home / "jobs" / str(job["id"]) / "rank-1" / "stdout.log"
    assert "rank 1 of 2" in other.read_text()
    # both nodes are free again
    nodes = {n["name"]: n for n in live.client.nodes()}
    assert nodes["g1"]["free"]["gpu"] == nodes["g2"]["free"]["gpu"] == 2


def test_a_gang_is_refused_at_submit_unless_it_asks_and_some_nodes_could_hold_it(live):
    with pytest.raises(APIError) as e:  # a program that never asked to run over nodes
        live.client.jobs.submit("allreduce", {}, gpu=4, cpu=1, memory_mb=1024)
    assert e.value.status == 422 and "needs 4 gpu" in e.value.message
    assert "if the job asks for it (multi_node)" in e.value.message
    with pytest.raises(APIError) as e:
        live.client.jobs.submit("allreduce", {}, gpu=6, cpu=1, memory_mb=1024,
                                multi_node=True)
    assert e.value.status == 422 and "needs 6 gpu" in e.value.message
    assert "nor could a gang over several nodes hold it (they have 4 gpu" in e.value.message


def test_one_rank_failing_stops_the_other_and_fails_the_job(live):
    job = live.client.jobs.submit(program("ranked"), {"fail_rank": 1}, **GANG)
    done = live.wait_job(job["id"], timeout=120)
    assert done["state"] == "FAILED"
    assert "rank 1 of 2" in done["reason"] and "rank 1 gives up" in done["reason"]
    # it ended once rank 0 had stopped too (its sandbox's processes go a moment later)
    wait_for(lambda: not _ranks(job["id"]), what="every rank to stop")
    log = live.client.jobs.logs(job["id"], stream="stdout")
    assert "rank 0 of 2, gpus 2,2" in log


def test_cancelling_a_gang_stops_every_rank(live):
    job = live.client.jobs.submit("sleep", {"seconds": 300}, **GANG)
    running = _running(live, job["id"])
    assert running["node"] in ("g1", "g2")
    wait_for(lambda: len(_ranks(job["id"])) == 2, what="both ranks' processes")
    live.client.jobs.cancel(job["id"])
    done = live.wait_job(job["id"], timeout=60)
    assert done["state"] == "CANCELLED"
    wait_for(lambda: not _ranks(job["id"]), what="every rank to stop")
    wait_for(lambda: all(n["free"]["gpu"] == 2 for n in live.client.nodes()
                         if n["name"] in ("g1", "g2")), what="the gang's GPUs to be free")


def test_a_restarted_daemon_finds_every_rank_again(live):
    job = live.client.jobs.submit("sleep", {"seconds": 600, "steps": 600}, **GANG)
    _running(live, job["id"])
    live.kill9()  # a daemon that dies (a graceful stop requeues its jobs)
    live.start()
    adopted = live.client.jobs.get(job["id"])
    assert adopted["state"] == "RUNNING" and adopted["attempt"] == 1  # not requeued
    nodes = {n["name"]: n for n in live.client.nodes()}
    assert nodes["g1"]["free"]["gpu"] == nodes["g2"]["free"]["gpu"] == 0
    assert len(_ranks(job["id"])) == 2
    live.client.jobs.cancel(job["id"])  # the adopted gang is watched and stopped as one
    assert live.wait_job(job["id"], timeout=60)["state"] == "CANCELLED"
    wait_for(lambda: not _ranks(job["id"]), what="every rank to stop")


def test_a_gang_whose_node_dies_ends_lost_and_its_other_rank_is_stopped(live, gpu_cluster):
    job = live.client.jobs.submit("sleep", {"seconds": 300}, max_retries=0, **GANG)
    _running(live, job["id"])
    gpu_cluster.kill("g2")
    done = live.wait_job(job["id"], timeout=120)
    assert done["state"] == "FAILED"
    assert "node g2 was lost" in done["reason"] and "of 2" in done["reason"], done["reason"]
    # it ended once the rank on g1 had stopped; g2's died with its agent
    wait_for(lambda: not _ranks(job["id"]), what="every rank to stop")
    nodes = {n["name"]: n for n in live.client.nodes()}
    assert nodes["g1"]["free"]["gpu"] == 2


def _ranks(job_id: int) -> set[str]:
    """The nodes where a process of the job runs on this machine: each rank's runner (and
    its sandbox) names its node's folder, ``.../llmos-node-<id>/jobs/<job>``."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "llmos.kernel.executors._runner" in cmd and cmd[-1].endswith(f"/jobs/{job_id}"):
            found.add(cmd[-1])
    return found
