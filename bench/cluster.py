"""Cluster benchmark: llmos on a three-node local Ray cluster against plain Ray.

    .venv/bin/python bench/cluster.py [--latency 50] [--jobs 1000]

Starts the test cluster of tests/cluster/conftest.py (three raylets on this machine:
head 2 cpu, edge 2 cpu, cpu 4 cpu) and a live `llmos up --ray` on a fresh PostgreSQL
database, then prints, measured in the same run:

1. submit-to-running latency p50/p99 over N jobs submitted one after another: through
   llmos (from the server's records: created_at -> the RUNNING transition, which is
   written once the job's sandboxed process has started on its node), against a plain
   ``ray.remote`` task (``.remote()`` -> the task's first line of code, in a warm worker)
   and against ``ray job submit`` (the Job Submission API; needs ``ray[default]`` and the
   dashboard, reported as not measured when absent);
2. throughput of M short jobs (llmos ``noop``, 0.25 cpu each) against M plain Ray tasks
   doing nothing, and against M Ray tasks that each start the same Python process llmos
   starts (``python -c pass``): jobs per second and the ratios;
3. recovery: a checkpointable job on a fourth node that is then killed; the time from Ray
   reporting the node dead to the job running again on another node.

Targets (issue 14): llmos adds at most 50 ms at p50 over a plain Ray task; recovery
within 10 s of Ray reporting the node dead. Never fails on timing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from cluster.conftest import RayTestCluster  # noqa: E402
from live import LiveDaemon, program, wait_for  # noqa: E402
from pg import fresh_database  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def llmos_latency(live: LiveDaemon, n: int) -> list[float]:
    out = []
    for _ in range(n):
        job = live.client.jobs.submit("noop", cpu=0.25)
        done = live.wait_job(job["id"], timeout=120)
        running = next(t["at"] for t in done["transitions"] if t["to_state"] == "RUNNING")
        out.append((_at(running) - _at(done["created_at"])) * 1000)
    return out


def ray_latency(n: int) -> list[float]:
    import ray

    @ray.remote(num_cpus=0.25)
    def started() -> float:
        return time.time()

    ray.get(started.remote())  # a warm worker, as llmos's agents are warm
    out = []
    for _ in range(n):
        t0 = time.time()
        out.append((ray.get(started.remote()) - t0) * 1000)
    return out


def ray_job_submit_latency(address: str, n: int) -> list[float] | str:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        return f"not measured: {e}"
    try:
        client = JobSubmissionClient(f"http://{address.split(':')[0]}:8265")
    except Exception as e:  # noqa: BLE001 - no dashboard in this cluster
        return f"not measured: the Job Submission API needs ray[default] and the dashboard ({type(e).__name__})"
    out = []
    for _ in range(n):
        t0 = time.time()
        job = client.submit_job(entrypoint="python -c pass")
        while client.get_job_status(job).value in ("PENDING",):
            time.sleep(0.005)
        out.append((time.time() - t0) * 1000)
    return out


def llmos_throughput(live: LiveDaemon, m: int) -> float:
    from llmos.sdk import job_spec

    start = time.time()
    ids = []
    for i in range(0, m, 200):
        specs = [job_spec("noop", cpu=0.25) for _ in range(min(200, m - i))]
        ids += [j["id"] for j in live.client.jobs.submit_many(specs)]
    jobs = live.wait_all(ids, timeout=3600)
    assert all(j["state"] == "SUCCEEDED" for j in jobs)
    return m / (time.time() - start)


def ray_throughput(m: int, process: bool) -> float:
    import ray

    @ray.remote(num_cpus=0.25)
    def nothing() -> None:
        if process:
            subprocess.run([sys.executable, "-c", "pass"], check=True)

    start = time.time()
    ray.get([nothing.remote() for _ in range(m)])
    return m / (time.time() - start)


def recovery(live: LiveDaemon, cluster: RayTestCluster) -> tuple[float, float]:
    """(s from Ray reporting the node dead to the job RUNNING elsewhere, s from the kill)."""
    import ray

    cluster.add("doomed", {"pool": "doomed"})
    wait_for(lambda: "doomed" in {n["name"] for n in live.client.nodes()}, what="new node")
    others = [n["name"] for n in live.client.nodes()
              if n["name"] != "doomed" and n["state"] == "ready"]
    for name in others:
        live.client.drain(name)
    job = live.client.jobs.submit(program("accumulate"), {"steps": 400, "step_s": 0.05},
                                  checkpointable=True, max_retries=2)
    wait_for(lambda: live.client.jobs.get(job["id"])["checkpoint_artifact"], timeout=120,
             what="a stored checkpoint")
    for name in others:
        live.client.drain(name, undo=True)
    node_id = next(n["node_id"] for n in live.client.nodes() if n["name"] == "doomed")
    killed = time.time()
    cluster.kill("doomed")

    def dead() -> bool:
        return any(n["NodeID"] == node_id and not n["Alive"] for n in ray.nodes())

    wait_for(dead, timeout=60, interval=0.02, what="Ray to report the node dead")
    reported = time.time()
    try:
        wait_for(lambda: (j := live.client.jobs.get(job["id"]))["state"] == "RUNNING"
                 and j["attempt"] >= 2, timeout=120, interval=0.02, what="the job to run again")
    except AssertionError:
        j = live.client.jobs.get(job["id"])
        raise AssertionError(f"job {job['id']} did not run again: {j['state']}, attempt "
                             f"{j['attempt']}, {j.get('reason')}; transitions "
                             f"{[(t['to_state'], t['reason']) for t in j['transitions']]}; "
                             f"nodes {[(n['name'], n['state']) for n in live.client.nodes()]}"
                             ) from None
    again = time.time()
    live.client.jobs.cancel(job["id"])
    return again - reported, again - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=int, default=50, help="jobs for the latency")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs for the throughput")
    args = parser.parse_args()
    import ray

    before = set(Path(tempfile.gettempdir()).glob("llmos-node-*"))
    cluster = RayTestCluster()
    try:
        with fresh_database("llmos_bench") as url, tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            live = LiveDaemon(home, env={"LLMOS_DATABASE_URL": url,
                                         "LLMOS_RAY_ADDRESS": cluster.address}).start()
            try:
                ray.init(address=cluster.address, namespace="bench", log_to_driver=False)
                llmos_lat = llmos_latency(live, args.latency)
                ray_lat = ray_latency(args.latency)
                submit_lat = ray_job_submit_latency(cluster.address, args.latency)
                print(f"submit-to-running over {args.latency} jobs, one after another:")
                print(f"  llmos on Ray      p50 {pct(llmos_lat, 50):7.1f} ms  "
                      f"p99 {pct(llmos_lat, 99):7.1f} ms")
                print(f"  plain ray.remote  p50 {pct(ray_lat, 50):7.1f} ms  "
                      f"p99 {pct(ray_lat, 99):7.1f} ms")
                if isinstance(submit_lat, str):
                    print(f"  ray job submit    {submit_lat}")
                else:
                    print(f"  ray job submit    p50 {pct(submit_lat, 50):7.1f} ms  "
                          f"p99 {pct(submit_lat, 99):7.1f} ms")
                print(f"  llmos adds {pct(llmos_lat, 50) - pct(ray_lat, 50):.1f} ms at p50 "
                      "over a plain Ray task (target: at most 50 ms)")
                ours = llmos_throughput(live, args.jobs)
                plain = ray_throughput(args.jobs, process=False)
                spawning = ray_throughput(args.jobs, process=True)
                print(f"throughput of {args.jobs} short jobs:")
                print(f"  llmos noop jobs           {ours:8.1f} jobs/s")
                print(f"  plain Ray tasks           {plain:8.1f} tasks/s   llmos/plain "
                      f"{ours / plain:.3f}")
                print(f"  Ray tasks starting python {spawning:8.1f} tasks/s   llmos/these "
                      f"{ours / spawning:.3f}")
                after_report, after_kill = recovery(live, cluster)
                print(f"recovery: running again {after_report:.2f} s after Ray reported the "
                      f"node dead ({after_kill:.2f} s after the kill; target: within 10 s)")
            finally:
                live.stop()
                live.client.close()
    finally:
        cluster.shutdown()
        for home in set(Path(tempfile.gettempdir()).glob("llmos-node-*")) - before:
            shutil.rmtree(home, ignore_errors=True)  # the agents' node homes


if __name__ == "__main__":
    main()
