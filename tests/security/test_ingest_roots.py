"""Host folders are checked where the reading happens: ``data.ingest`` and ``models.import``
submitted straight through ``POST /v1/jobs`` are held to LLMOS_INGEST_ROOTS by the program
itself (with the roots the kernel gave the job, not its parameters), and no refusal tells a
caller whether a path outside the roots exists — for data sources, globs, links, a recipe's
tokenizer, a model to import and a program file alike."""

from __future__ import annotations

import hashlib

import os
from pathlib import Path

import pytest

from live import LiveDaemon
from llmos.sdk import APIError

PROJECT = Path(__file__).resolve().parents[2]
OUTSIDE_SENTENCE = "is outside the folders non-administrators may read from"


@pytest.fixture(scope="module")
def rooted(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_text("a document inside the allowed folder\n")
    (root / "broken.py").write_text("def main(ctx:\n")
    (outside / "secret.txt").write_text("a document outside it\n")
    (outside / "tok").mkdir()
    (outside / "tok" / "tokenizer.json").write_text("{}")
    (outside / "exists.py").write_text("def main(ctx:\n")
    (outside / "folder.py").mkdir()
    os.symlink(outside, root / "to-outside")  # a folder link with files behind it
    os.symlink(outside / "nothing-here", root / "to-nowhere")  # and one to nothing
    os.symlink(outside / "secret.txt", root / "secret-link.txt")
    os.symlink(outside / "no-such.txt", root / "dangling-link.txt")
    home = tmp_path_factory.mktemp("roots") / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": str(root)}).start()
    yield live, root, outside
    live.stop()


def _refusal(call, *shown: str) -> tuple[int, str]:
    """Status and message of a refused call, with the paths it echoes blanked out."""
    with pytest.raises(APIError) as e:
        call()
    message = e.value.message
    for s in shown:
        message = message.replace(s, "<path>")
    return e.value.status, message


def _failure(live, job: dict, *shown: str) -> str:
    done = live.wait_job(job["id"], timeout=120)
    assert done["state"] == "FAILED", done
    reason = done["reason"]
    for s in shown:
        reason = reason.replace(s, "<path>")
    return reason


def test_ingest_and_import_through_post_jobs_are_held_to_the_roots(rooted):
    """The reproduction: a developer's data.ingest of the project's README (outside the
    roots) through the generic job route fails in the job and stores nothing; so does a
    models.import of a folder outside; an administrator's jobs read anywhere."""
    live, root, outside = rooted
    dev = live.user("jobs-route", team="jobs-route")
    readme = str(PROJECT / "README.md")
    ingest = dev.jobs.submit("data.ingest", {"sources": [readme], "dataset": "leak"},
                             memory_mb=1024)
    reason = _failure(live, ingest, readme)
    assert f"<path> {OUTSIDE_SENTENCE}" in reason
    imported = dev.jobs.submit("models.import", {"source": str(PROJECT), "name": "leak",
                                                 "format": "hf"}, memory_mb=1024)
    assert f"<path> {OUTSIDE_SENTENCE}" in _failure(live, imported, str(PROJECT))
    glob = f"{root}/docs/../../{outside.name}/*.txt"  # a glob may not climb out
    assert OUTSIDE_SENTENCE in _failure(live, dev.jobs.submit(
        "data.ingest", {"sources": [glob], "dataset": "leak"}, memory_mb=1024))
    for client in (dev, live.client):
        with pytest.raises(APIError) as e:
            client.datasets.get("leak")
        assert e.value.status == 404
    assert dev.artifacts.list() == []  # not a shard, not a report
    # Inside the roots the same route works; an administrator's job reads anywhere.
    ok = dev.jobs.submit("data.ingest", {"sources": [str(root / "docs")], "dataset": "fine"},
                         memory_mb=1024)
    assert live.wait_job(ok["id"], timeout=120)["state"] == "SUCCEEDED"
    admins = live.client.jobs.submit("data.ingest", {"sources": [str(outside / "secret.txt")],
                                                     "dataset": "admins"}, memory_mb=1024)
    assert live.wait_job(admins["id"], timeout=120)["state"] == "SUCCEEDED"


@pytest.mark.parametrize("existing, missing", [
    ("/etc/shadow", "/nonexistent/x"),
    ("{outside}/secret.txt", "{outside}/no-such.txt"),
    ("{outside}/*.txt", "{outside}/*.none"),
    ("{root}/to-outside/*.txt", "{root}/to-nowhere/*.txt"),  # globs through a link
    ("{root}/secret-link.txt", "{root}/dangling-link.txt"),
    ("{root}/docs/../../{outside_name}/*.txt", "{root}/docs/../../{outside_name}/*.none"),
])
def test_a_refused_source_says_the_same_whether_it_exists(rooted, existing, missing):
    live, root, outside = rooted
    # a stable name (each team gets a system user for its jobs: a new name per run would
    # leave a new user per run on the machine)
    name = f"oracle{hashlib.sha256(existing.encode()).hexdigest()[:6]}"
    dev = live.user(name, team=name)
    answers = []
    for source in (existing, missing):
        src = source.format(root=root, outside=outside, outside_name=outside.name)
        answers.append(_refusal(lambda: dev.datasets.ingest("leak", [src]), src))
        # ... and the job that reads it, started through the generic route, says so too
        job = dev.jobs.submit("data.ingest", {"sources": [src], "dataset": "leak"},
                              memory_mb=1024)
        answers.append(_failure(live, job, src))
    assert answers[0] == answers[2] and answers[1] == answers[3], answers
    assert answers[0] == (403, f"<path> {OUTSIDE_SENTENCE} ({root}; LLMOS_INGEST_ROOTS)")
    assert dev.artifacts.list() == []


def test_a_folder_holding_a_link_outside_is_refused_whether_its_target_exists(rooted):
    live, root, _ = rooted
    dev = live.user("folder-links")
    status, message = _refusal(lambda: dev.datasets.ingest("leak", [str(root)]), str(root))
    assert status == 403 and OUTSIDE_SENTENCE in message


def test_tokenizer_model_and_program_paths_outside_have_one_answer(rooted):
    live, root, outside = rooted
    dev = live.user("paths", team="paths")
    doc = str(root / "docs" / "a.txt")

    def tokenizer(path):
        return _refusal(lambda: dev.datasets.ingest(
            "leak", [doc], {"steps": [{"tokenize": {"tokenizer": path}}]}), path)

    def model(path):
        return _refusal(lambda: dev.models.import_("leak", path), path)

    def program(path):
        return _refusal(lambda: dev.jobs.submit(f"{path}:main"), path)

    for check, existing, missing in (
            (tokenizer, outside / "tok", outside / "no-tok"),
            (model, outside, outside / "no-model"),
            (program, outside / "exists.py", outside / "missing.py"),
            (program, outside / "folder.py", Path("/nonexistent/x.py"))):
        first, second = check(str(existing)), check(str(missing))
        assert first == second, (check.__name__, first, second)
        assert first[0] == 403 and OUTSIDE_SENTENCE in first[1]
    assert dev.jobs.list()["total"] == 0


def test_inside_the_roots_answers_stay_precise(rooted):
    """What lies inside the roots a developer may read, so there the answers say what is
    wrong: no match, no such file, a syntax error."""
    live, root, _ = rooted
    dev = live.user("precise")
    with pytest.raises(APIError) as e:
        dev.datasets.ingest("nothing", [f"{root}/docs/*.none"])
    assert (e.value.status, e.value.message) == (422, f"no file matches '{root}/docs/*.none'")
    with pytest.raises(APIError) as e:
        dev.jobs.submit(f"{root}/broken.py:main")
    assert e.value.status == 422 and "syntax error on line 1" in e.value.message
    job = dev.datasets.ingest("globbed", [f"{root}/docs/**/*.txt"], memory_mb=1024)
    assert live.wait_job(job["id"], timeout=120)["state"] == "SUCCEEDED"
    assert dev.datasets.version("globbed")["stats"]["documents"] == 1
