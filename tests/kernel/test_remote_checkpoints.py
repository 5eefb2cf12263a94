"""Checkpoints stored as artifacts, for jobs whose next attempt may run on another node.

A real job context talks to a live daemon's API with a team member's token (as a job's
process does with its own): saving uploads the checkpoint, and a context in an empty
folder (another node's disk) restores it. Stored checkpoints that are not what ``save``
writes are refused before a byte is written. The daemon's side, taking a job's
checkpoint event into the store, is checked on a real store.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import tarfile

import pytest

from live import program, wait_for
from llmos.kernel import events
from llmos.kernel.context import EVENTS_FILE, CheckpointRefused, JobContext
from llmos.kernel.executors.base import LaunchPlan
from llmos.kernel.executors.local import LocalExecutor
from llmos.kernel.jobs import JobSpec, create_job
from llmos.kernel.resources import Allocation, Request
from llmos.store import open_database
from llmos.store.models import Artifact, Job

TEAM, OTHER = "ckpt-red", "ckpt-blue"


@pytest.fixture(scope="module")
def world(shared_daemon):
    """Two teams with a developer each; a job of the first team, run to its end (its
    artifacts name it as their producer); a viewer of that team (cannot upload)."""
    admin = shared_daemon.client
    tokens = {}
    for team, user in ((TEAM, "ckpt-dev"), (OTHER, "ckpt-other")):
        admin.teams.create(team)
        tokens[team] = admin.users.create(user, team=team, role="developer")["token"]
    viewer = admin.users.create("ckpt-viewer", team=TEAM, role="viewer")["token"]
    job = admin.jobs.submit("noop", team=TEAM)
    shared_daemon.wait_job(job["id"])
    return {"daemon": shared_daemon, "tokens": tokens, "viewer": viewer, "job": job["id"]}


def context(world, folder, token=None, **kwargs) -> JobContext:
    """The context a job's process gets (see executors/_runner.py), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return JobContext(world["job"], 1, folder, world["daemon"].url,
                      api_token=token or world["tokens"][TEAM], **kwargs)


def reported(folder) -> list[dict]:
    lines = (folder / EVENTS_FILE).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == "checkpoint"]


def metadata(world, artifact_id: int) -> dict:
    with world["daemon"].http() as http:
        return http.get(f"/v1/artifacts/{artifact_id}").raise_for_status().json()


WEIGHTS = bytes(range(256)) * 4000  # 1 MB


def test_saved_checkpoint_is_stored_and_restored_on_an_empty_folder(world, tmp_path, capfd):
    first = context(world, tmp_path / "node-a", remote_checkpoints=True)
    assert first.checkpoint.save({"epoch": 1}) == 1
    assert first.checkpoint.save({"epoch": 2, "lr": 0.5}, files={"weights.bin": WEIGHTS}) == 2
    stored = reported(tmp_path / "node-a")
    assert [e["step"] for e in stored] == [1, 2]
    artifact = stored[-1]["artifact"]
    assert isinstance(artifact, int) and artifact != stored[0]["artifact"]
    meta = metadata(world, artifact)
    assert (meta["kind"], meta["name"], meta["job_id"], meta["team"]) == (
        "checkpoint", f"checkpoint-job{world['job']}-step2", world["job"], TEAM)
    assert not list((tmp_path / "node-a" / "checkpoints").glob(".*")), "temporary files left"

    # Another node: an empty folder, and the stored checkpoint the daemon hands over.
    second = context(world, tmp_path / "node-b", checkpoint_artifact=artifact)
    restored = second.checkpoint.load()
    assert (restored.step, restored.state) == (2, {"epoch": 2, "lr": 0.5})
    assert restored.path("weights.bin").read_bytes() == WEIGHTS
    assert sorted(p.name for p in restored.dir.iterdir()) == ["state.json", "weights.bin"]
    assert second.checkpoint.load().step == 2
    assert capfd.readouterr().err.count(f"restored checkpoint 2 from artifact {artifact}") == 1
    # ... and its next checkpoint carries on from there.
    assert second.checkpoint.save({"epoch": 3}) == 3


def test_a_folder_left_behind_by_an_older_attempt_gives_way_to_the_newest_stored(
        world, tmp_path):
    a, b = tmp_path / "node-a", tmp_path / "node-b"
    old = context(world, a, remote_checkpoints=True)
    old.checkpoint.save({"epoch": 1})
    old.checkpoint.save({"epoch": 2})
    first_stored = reported(a)[-1]["artifact"]
    # The job moved to node b, resumed from epoch 2 and got further.
    moved = context(world, b, remote_checkpoints=True, checkpoint_artifact=first_stored)
    assert moved.checkpoint.load().state == {"epoch": 2}
    moved.checkpoint.save({"epoch": 3, "node": "b"})
    newest = reported(b)[-1]["artifact"]
    # Back on node a: its own folder still holds epoch 2; the stored epoch 3 wins.
    back = context(world, a, remote_checkpoints=True, checkpoint_artifact=newest)
    latest = back.checkpoint.load()
    assert (latest.step, latest.state) == (3, {"epoch": 3, "node": "b"})
    assert back.checkpoint.save({"epoch": 4}) == 4
    # A folder that holds the newest stored checkpoint is used as it is.
    again = context(world, a, checkpoint_artifact=reported(a)[-1]["artifact"])
    assert again.checkpoint.load().state == {"epoch": 4}


def test_a_checkpoint_that_cannot_be_stored_is_kept_here_and_the_program_told(
        world, tmp_path, capfd):
    viewer = context(world, tmp_path / "job", token=world["viewer"], remote_checkpoints=True)
    with pytest.raises(RuntimeError, match="checkpoint 1 was saved in the job's folder but "
                       "could not be stored as an artifact.*403"):
        viewer.checkpoint.save({"epoch": 1})
    assert "could not be stored as an artifact" in capfd.readouterr().err
    assert viewer.checkpoint.load().state == {"epoch": 1}
    # the daemon learns of the checkpoint, but of no stored copy
    assert [(e["step"], "artifact" in e) for e in reported(tmp_path / "job")] == [(1, False)]


def test_fetching_a_stored_checkpoint_that_is_not_readable_fails_clearly(world, tmp_path):
    theirs = _upload(world, _archive([("ckpt-1/state.json", b"{}")]), team=OTHER)
    ctx = context(world, tmp_path / "job", checkpoint_artifact=theirs)
    with pytest.raises(RuntimeError, match=f"could not fetch the job's stored checkpoint "
                       f"\\(artifact {theirs}\\).*404"):
        ctx.checkpoint.load()


STATE = ("ckpt-1/state.json", b'{"epoch": 1}')


def _member(name, data=b"", kind=tarfile.REGTYPE, link=""):
    return name, data, kind, link


HOSTILE = {
    "parent": ([STATE, ("ckpt-1/../escaped", b"x")], "'ckpt-1/../escaped' is not a file"),
    "dotdot": ([STATE, ("../escaped", b"x")], "'../escaped' is not a file"),
    "absolute": ([STATE, ("{outside}/escaped", b"x")], "is not a file inside ckpt-N/"),
    "symlink": ([STATE, _member("ckpt-1/weights.bin", kind=tarfile.SYMTYPE,
                                link="{outside}/escaped")], "is not a regular file"),
    "hardlink": ([STATE, _member("ckpt-1/weights.bin", kind=tarfile.LNKTYPE,
                                 link="ckpt-1/state.json")], "is not a regular file"),
    "folder": ([_member("ckpt-1", kind=tarfile.DIRTYPE), STATE], "is not a regular file"),
    "device": ([STATE, _member("ckpt-1/null", kind=tarfile.CHRTYPE)], "is not a regular"),
    "nested": ([STATE, ("ckpt-1/sub/w.bin", b"x")], "is not a file inside ckpt-N/"),
    "two steps": ([STATE, ("ckpt-2/state.json", b"{}")], "exactly one ckpt-N folder"),
    "no state": ([("ckpt-1/weights.bin", b"x")], "has no state.json"),
    "twice": ([STATE, STATE], "appears twice"),
    "state not json": ([("ckpt-1/state.json", b"not json")], "state.json is not JSON"),
    "state a list": ([("ckpt-1/state.json", b"[1]")], "not a JSON object"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_stored_checkpoints_are_refused_and_nothing_is_written(
        world, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    members, message = HOSTILE[case]
    members = [m if len(m) == 4 else _member(*m) for m in members]
    members = [(name.format(outside=outside), data, kind, link.format(outside=outside))
               for name, data, kind, link in members]
    artifact = _upload(world, _archive(members))
    folder = tmp_path / "job"
    ctx = context(world, folder, checkpoint_artifact=artifact)
    with pytest.raises(CheckpointRefused, match=f"stored checkpoint \\(artifact {artifact}\\) "
                       "refused: .*" + message.replace("(", "\\(")):
        ctx.checkpoint.load()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped").exists() and not (folder / "escaped").exists()
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == []


def test_an_archive_that_is_no_tar_is_refused(world, tmp_path):
    artifact = _upload(world, b"\x28\xb5\x2f\xfd" + b"zstd? no: garbage" * 100)
    ctx = context(world, tmp_path / "job", checkpoint_artifact=artifact)
    with pytest.raises(CheckpointRefused, match="not a checkpoint archive"):
        ctx.checkpoint.load()
    assert list((tmp_path / "job" / "checkpoints").iterdir()) == []


def _archive(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind, link in [m if len(m) == 4 else _member(*m) for m in members]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buf.getvalue()


def _upload(world, data: bytes, team: str = TEAM) -> int:
    """Stored as a checkpoint of the job would be (by a job of ``team``)."""
    params = {"name": "checkpoint-forged", "kind": "checkpoint"}
    if team == TEAM:
        params["job_id"] = world["job"]
    with world["daemon"].http(world["tokens"][team]) as http:
        return http.post("/v1/artifacts", params=params, content=data) \
            .raise_for_status().json()["id"]


# -- through the launch file and the runner, as a job's process starts ----------------------

def _run_attempt(world, folder, attempt, markers, **plan_fields) -> subprocess.Popen:
    plan = LaunchPlan(
        job_id=world["job"], attempt=attempt, program=program("resumable"),
        params={"steps": 150, "step_s": 0.02, "marker_dir": str(markers)},
        allocation=Allocation("local", {0: 1000}, 8192), workdir=folder,
        api_url=world["daemon"].url, api_token=world["tokens"][TEAM], **plan_fields)
    LocalExecutor.write_launch(plan)
    return subprocess.Popen([sys.executable, "-m", "llmos.kernel.executors._runner",
                             str(folder)], stderr=subprocess.PIPE, text=True)


def test_an_attempt_on_another_node_resumes_from_the_checkpoint_its_plan_names(
        world, tmp_path):
    """The launch plan's settings reach the program's context: the first attempt, asked
    to yield, stores its checkpoint; the next one, in an empty folder, resumes from it."""
    markers = tmp_path / "markers"
    markers.mkdir()
    first = _run_attempt(world, tmp_path / "node-a", 1, markers, remote_checkpoints=True)
    wait_for(lambda: (tmp_path / "node-a" / EVENTS_FILE).exists() and any(
        e["type"] == "progress" and e["done"] >= 3
        for e in map(json.loads, (tmp_path / "node-a" / EVENTS_FILE).read_text().splitlines())),
        what="the first attempt to make progress")
    first.send_signal(signal.SIGUSR1)  # what preemption does
    assert first.wait(timeout=30) == 0, first.stderr.read()
    result = json.loads((tmp_path / "node-a" / "result.json").read_text())
    assert result["status"] == "yielded"
    saved_at = result["return"]
    [stored] = reported(tmp_path / "node-a")
    assert stored["step"] == 1 and stored["artifact"]

    second = _run_attempt(world, tmp_path / "node-b", 2, markers,
                          checkpoint_artifact=stored["artifact"])
    assert second.wait(timeout=60) == 0, second.stderr.read()
    result = json.loads((tmp_path / "node-b" / "result.json").read_text())
    assert (result["status"], result["return"]) == ("succeeded", 150)
    assert sorted(m.name for m in markers.iterdir()) == [
        f"{world['job']}-1-from-0", f"{world['job']}-2-from-{saved_at}"]


# -- the daemon's side: a job's checkpoint events into the store ---------------------------

def test_a_checkpoint_event_records_only_a_checkpoint_of_the_job_itself(tmp_path, caplog):
    db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
    try:
        with db.session() as s:
            job = create_job(s, JobSpec(program="noop"), Request(), "local", team=TEAM)
            other_job = create_job(s, JobSpec(program="noop"), Request(), "local", team=TEAM)
            s.flush()

            def artifact(team=TEAM, kind="checkpoint", job_id=job.id) -> int:
                art = Artifact(sha256="0" * 64, name="c", kind=kind, size=1, team=team,
                               job_id=job_id)
                s.add(art)
                s.flush()
                return art.id

            own, newer = artifact(), artifact()
            refused = {"another team's": artifact(team=OTHER, job_id=None),
                       "another job's": artifact(job_id=other_job.id),
                       "no checkpoint": artifact(kind="file"),
                       "missing": newer + 1000}
            job_id = job.id
        with db.session() as s, caplog.at_level(logging.WARNING, "llmos.daemon"):
            job = s.get(Job, job_id)
            events.apply(s, job, [{"type": "checkpoint", "step": 1, "artifact": own}])
            assert job.checkpoint_artifact == own
            junk = [True, -3, 0, 1 << 40, "5", 2.0, [own]]
            for bad in [*refused.values(), *junk]:
                events.apply(s, job, [{"type": "checkpoint", "step": 2, "artifact": bad}])
                assert job.checkpoint_artifact == own, bad
            events.apply(s, job, [{"type": "checkpoint", "step": 2}])  # stored nowhere
            assert job.checkpoint_artifact == own
            assert len([r for r in caplog.records if "ignored" in r.getMessage()]) == \
                len(refused) + len(junk)
            events.apply(s, job, [{"type": "checkpoint", "step": 3, "artifact": newer}])
        with db.session() as s:
            assert s.get(Job, job_id).checkpoint_artifact == newer
    finally:
        db.close()
