"""kill -9 of the daemon at each point of a job's launch path: every job runs exactly once.

A launch is: bind (SCHEDULED, attempt and allocation committed) -> write the attempt's
launch file -> start the runner, which claims the file -> record RUNNING. The daemon is
killed with ``kill -9`` while jobs are at each of these points (and while one runs to its
end), and a new daemon on the same store must run each job exactly once to SUCCEEDED.

The first daemon is killed for real; what it would have done up to each crash point is
then done with the kernel's own code (``transition`` in the store, the local executor's
``write_launch`` and ``launch``), so every point is reached deterministically.
"""

from __future__ import annotations

from pathlib import Path

from live import LiveDaemon, program, wait_for
from llmos.config import Settings
from llmos.kernel.executors import LaunchPlan
from llmos.kernel.executors.local import LocalExecutor
from llmos.kernel.jobs import JobState, transition
from llmos.kernel.resources import Allocation
from llmos.store.db import Database
from llmos.store.models import Job

POINTS = ("bound", "launch_file", "started", "started_and_ended")


def _bind(db: Database, jobs_dir: Path, job_id: int, node: str, core: int) -> LaunchPlan:
    """What the daemon commits before any process exists (its ``_bind``)."""
    with db.session() as s:
        job = s.get(Job, job_id)
        job.attempt += 1
        allocation = Allocation(node, {core: 500}, job.memory_mb)
        job.node, job.allocation = node, allocation.to_json()
        transition(s, job, JobState.SCHEDULED, f"bound to {node} (cores {core})")
        return LaunchPlan(job.id, job.attempt, job.program, dict(job.params), allocation,
                          jobs_dir / str(job.id), team=job.team,
                          read_roots=tuple(job.read_roots or ()))


def test_kill_9_at_each_point_of_the_launch_path_runs_every_job_exactly_once(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    jobs_dir = Settings(home=home).jobs_dir
    markers = tmp_path / "markers"
    markers.mkdir()
    gates = {name: tmp_path / f"gate-{name}" for name in ("ends", *POINTS)}

    def params(name):
        return {"marker_dir": str(markers), "gate": str(gates[name])}

    first = LiveDaemon(home).start()
    # A job that fills the 2-cpu node and will end while no daemon runs; behind it, one
    # pending job per crash point (the full node keeps them pending).
    ends = first.client.jobs.submit(program("gated"), params("ends"), cpu=2)
    node = first.wait_job(ends["id"], states=("RUNNING",))
    ids = {name: first.client.jobs.submit(program("gated"), params(name), cpu=0.5)["id"]
           for name in POINTS}
    first.kill9()

    db = Database(Settings(home=home).db_url)
    executor = LocalExecutor(Settings(home=home))
    try:
        cores = sorted(int(c) for c in node["allocation"]["cores"])
        plans = {name: _bind(db, jobs_dir, ids[name], node["node"], cores[i // 2])
                 for i, name in enumerate(POINTS)}
        # "bound": killed after SCHEDULED was committed, before the launch file.
        executor.write_launch(plans["launch_file"])  # killed before starting the runner
        gates["started_and_ended"].write_text("open")
        live = executor.launch(plans["started"])  # killed before recording RUNNING ...
        done = executor.launch(plans["started_and_ended"])  # ... and this one even ended
        for name in ("bound", "launch_file"):  # these two have not run yet: let them
            gates[name].write_text("open")
        gates["ends"].write_text("open")
        for name, job_id in (("started", ids["started"]),
                             ("started_and_ended", ids["started_and_ended"])):
            wait_for(lambda: any(m.name.startswith(f"{job_id}-") for m in markers.iterdir()),
                     what=f"the {name} job's process to run")
        workdirs = [jobs_dir / str(i) for i in (ends["id"], ids["started_and_ended"])]
        wait_for(lambda: all((w / "result.json").exists() for w in workdirs),
                 what="two jobs to end while no daemon runs")
        wait_for(lambda: executor.poll(done) is not None, what="its process to exit")
        assert executor.poll(live) is None
    finally:
        db.close()

    second = LiveDaemon(home)
    second.port, second.url, second.client = first.port, first.url, first.client
    second.start()
    try:
        adopted = second.wait_job(ids["started"], states=("RUNNING",))
        assert adopted["transitions"][-1]["reason"] == (
            f"started as process {live.pid} (adopted)")
        gates["started"].write_text("open")
        every = [ends["id"], *ids.values()]
        second.wait_all(every)
        done_jobs = {i: second.client.jobs.get(i) for i in every}
        assert {j["state"] for j in done_jobs.values()} == {"SUCCEEDED"}
        runs = [m.name for m in markers.iterdir()]
        for job_id in every:  # exactly one run each
            assert len([r for r in runs if r.startswith(f"{job_id}-")]) == 1, (job_id, runs)
        for job_id in every:
            reasons = [t["reason"] or "" for t in done_jobs[job_id]["transitions"]]
            assert not any("no daemon watched" in r for r in reasons), (job_id, reasons)
            assert done_jobs[job_id]["failures"] == 0
        for name in ("bound", "launch_file"):  # never started: requeued, then run
            job = done_jobs[ids[name]]
            assert "requeued: the daemon stopped before it started" in [
                t["reason"] for t in job["transitions"]]
            assert job["attempt"] == 2
        assert (jobs_dir / str(ids["launch_file"]) / "launch.revoked.json").exists()
        for job_id in (ends["id"], ids["started"], ids["started_and_ended"]):
            assert done_jobs[job_id]["attempt"] == 1
    finally:
        for gate in gates.values():
            gate.write_text("open")
        second.stop()
