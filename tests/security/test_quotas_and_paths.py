"""Team quotas enforced by the scheduler (a job over quota waits and says so), and the
host folders non-administrators may have llmos read for them."""

from __future__ import annotations

import os

import pytest

from live import PROGRAMS, LiveDaemon, program, wait_for
from llmos.sdk import APIError


@pytest.fixture
def daemon(tmp_path):
    """A live daemon whose developers may run the test programs: a program file is held to
    the ingest roots like any host file a non-administrator names; the test's folder is
    one too, so that their jobs see the gate it opens."""
    (tmp_path / "home").mkdir()
    live = LiveDaemon(tmp_path / "home",
                      env={"LLMOS_INGEST_ROOTS": f"{PROGRAMS.parent}:{tmp_path}"})
    yield live.start()
    live.stop()
    live.client.close()


def test_a_team_over_its_quota_waits_and_says_so_while_other_teams_run(daemon, tmp_path):
    admin = daemon.client
    admin.teams.create("small")
    admin.teams.set_quota("small", jobs=1, cpu=1.5)
    dev = daemon.user("sam", team="small")
    gate = tmp_path / "gate"
    args = {"marker_dir": "", "gate": str(gate)}  # markers in each job's own folder
    first = dev.jobs.submit(program("gated"), args, cpu=0.5)
    second = dev.jobs.submit(program("gated"), args, cpu=0.5)
    other = admin.jobs.submit(program("gated"), args, cpu=0.5)  # team default: no quota
    daemon.wait_job(first["id"], states=("RUNNING",))
    daemon.wait_job(other["id"], states=("RUNNING",))
    wait_for(lambda: daemon.client.jobs.get(second["id"])["reason"] ==
             "over team quota: team small may run 1 job(s) at once, 1 running",
             what="the quota reason")
    with pytest.raises(APIError) as e:
        dev.jobs.submit("noop", cpu=2)
    assert e.value.status == 422
    assert e.value.message == ("this job could never run in team small: needs 2 cpu but its "
                               "team's quota is 1.5 cpu")
    admin.teams.set_quota("small", cpu=1.5)  # jobs: no limit any more
    daemon.wait_job(second["id"], states=("RUNNING",))
    gate.write_text("open")
    for job in (first, second, other):
        assert daemon.wait_job(job["id"])["state"] == "SUCCEEDED"


@pytest.fixture(scope="module")
def rooted(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    (root / "ok.txt").write_text("a document inside the allowed folder\n")
    (outside / "secret.txt").write_text("a document outside it\n")
    os.symlink(outside / "secret.txt", root / "link.txt")
    home = tmp_path_factory.mktemp("rooted") / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": str(root)}).start()
    yield live, root, outside
    live.stop()


@pytest.mark.parametrize("source", [
    "/etc/passwd", "{outside}/secret.txt", "{outside}/*.txt", "{root}/../{outside_name}/secret.txt",
    "{root}/link.txt", "{root}",  # the folder holds a link that leads outside
])
def test_non_administrators_read_host_files_only_inside_the_allowed_folders(rooted, source):
    live, root, outside = rooted
    dev = live.user(f"dev{abs(hash(source)) % 10**6}")
    src = source.format(root=root, outside=outside, outside_name=outside.name)
    with pytest.raises(APIError) as e:
        dev.datasets.ingest("leak", [src])
    assert e.value.status == 403
    assert "outside the folders non-administrators may read" in e.value.message
    assert dev.jobs.list()["total"] == 0


def test_inside_the_allowed_folders_ingest_works_and_administrators_read_anywhere(rooted):
    live, root, outside = rooted
    dev = live.user("reader")
    job = dev.datasets.ingest("fine", [str(root / "ok.txt")], memory_mb=1024)
    assert live.wait_job(job["id"], timeout=120)["state"] == "SUCCEEDED"
    admin_job = live.client.datasets.ingest("admins", [str(outside)], memory_mb=1024)
    assert live.wait_job(admin_job["id"], timeout=120)["state"] == "SUCCEEDED"


def test_a_recipes_tokenizer_is_held_to_the_allowed_folders_too(rooted):
    """The job reads the tokenizer the recipe names, so it is checked like a source: a
    folder outside, or a tokenizer.json inside that links outside, is refused."""
    live, root, outside = rooted
    (outside / "tokenizer.json").write_text("{}")
    (root / "tok").mkdir(exist_ok=True)
    if not (root / "tok" / "tokenizer.json").is_symlink():
        os.symlink(outside / "tokenizer.json", root / "tok" / "tokenizer.json")
    dev = live.user("tokenizer-thief")
    before = dev.jobs.list()["total"]  # the team's jobs, earlier tests' among them
    for tokenizer in (outside, root / "tok"):
        with pytest.raises(APIError) as e:
            dev.datasets.ingest("leak", [str(root / "ok.txt")],
                                {"steps": [{"tokenize": {"tokenizer": str(tokenizer)}}]})
        assert e.value.status == 403, e.value.message
        assert (f"{tokenizer} is outside the folders non-administrators may read"
                in e.value.message)
    assert dev.jobs.list()["total"] == before
