"""The `llmos` command as a user runs it: real processes against a live daemon."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from live import free_port
from llmos.cli.main import command

@pytest.fixture
def daemon(shared_daemon):
    return shared_daemon


def llmos(*args: str, at=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the CLI against the live daemon ``at`` (as its administrator), or against a
    port where nothing listens."""
    if at is not None:
        env = at.cli_env()
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
        env.update(LLMOS_URL=f"http://127.0.0.1:{free_port()}", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def verbs(group, path: tuple[str, ...] = ()):
    """Every verb of the command tree, groups included, with its click command."""
    yield path, group
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group
            yield from verbs(cmd, (*path, name))
        else:
            yield (*path, name), cmd


TREE = command()
VERBS = [(path, cmd) for path, cmd in verbs(TREE) if not cmd.hidden]


def help_of(path, monkeypatch) -> tuple[int, str]:
    """`llmos PATH --help` in this process, on the tree :func:`main` runs, at 100 columns."""
    monkeypatch.setenv("COLUMNS", "100")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = TREE.main([*path, "--help"], prog_name="llmos", standalone_mode=False)
    return code, buffer.getvalue()


def words(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_the_verbs_the_readme_names_are_in_the_tree():
    names = {" ".join(path) for path, _ in VERBS}
    assert {"deploy", "deployments ls", "deployments show", "deployments scale",
            "deployments rm", "train", "evaluate", "models ls", "models import", "audit ls",
            "data ingest", "job submit", "tokens create"} <= names
    assert len(VERBS) >= 59  # the tree as of issue 12; a verb removed must be meant


@pytest.mark.parametrize("path,cmd", VERBS, ids=[" ".join(p) or "llmos" for p, _ in VERBS])
def test_every_verb_has_help_showing_its_docstring(path, cmd, monkeypatch):
    code, output = help_of(path, monkeypatch)
    assert code == 0, output
    assert "Usage: llmos" in output
    summary = words(cmd.help.split("\n\n")[0])
    assert summary and summary[0].isalpha(), f"{' '.join(path) or 'llmos'} has no docstring"
    assert summary in words(output)


def test_audit_ls_help_names_its_since_option(monkeypatch):
    code, output = help_of(["audit", "ls"], monkeypatch)
    assert code == 0 and "--since" in output and "ISO 8601" in output


def test_every_listing_verb_answers_to_ls_and_list_one_of_them_hidden(monkeypatch):
    groups = [(path, cmd) for path, cmd in verbs(TREE) if hasattr(cmd, "commands")]
    listing = [(path, g) for path, g in groups if {"ls", "list"} & set(g.commands)]
    assert {" ".join(p) for p, _ in listing} >= {"job", "artifacts", "data", "models",
                                                   "deployments", "users", "teams", "tokens",
                                                   "audit"}
    for path, group in listing:
        ls, list_ = group.commands["ls"], group.commands["list"]
        assert ls.callback is list_.callback, path
        assert ls.hidden != list_.hidden, path
        shown = help_of(path, monkeypatch)[1]
        hidden = "list" if list_.hidden else "ls"
        assert not any(line.split()[1:2] == [hidden] for line in shown.splitlines()
                       if line.split()), (path, shown)


def test_the_entry_point_prints_help():
    result = llmos("--help")
    assert result.returncode == 0 and "Usage: llmos" in result.stdout
    assert "deployments" in result.stdout and "Traceback" not in result.stderr


def test_unreachable_daemon_is_one_line_and_exit_1():
    result = llmos("job", "list")
    assert result.returncode == 1
    assert "cannot reach the llmos daemon" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("args,code,message", [
    (["job", "submit", "noop", "--params", "{bad"], 2, "--params is not valid JSON"),
    (["job", "submit", "noop", "--params", "[1]"], 2, "--params must be a JSON object"),
    (["job", "submit", "noop", "--priority", "urgent"], 2, "--priority must be"),
    (["job", "submit", "nope:main"], 1, "no module named 'nope'"),
    (["job", "submit", "noop", "--cpu", "64"], 1, "larger than any node"),
    (["job", "show", "999999"], 1, "job 999999 not found"),
    (["job", "show", "abc"], 2, "Invalid value for 'job_id'"),
    (["job", "frob"], 2, "No such command"),
    (["artifacts", "put", "/no/such/file"], 2, "no such file"),
])
def test_bad_input_is_one_line_and_non_zero(daemon, args, code, message):
    result = llmos(*args, at=daemon)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr + result.stdout


def test_submit_wait_show_list_logs_as_json(daemon, tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("def main(ctx, who='world'):\n    print(f'hello {who}')\n"
                      "    ctx.metric('answer', 42)\n")
    result = llmos("job", "submit", "hello.py:main", "-p", '{"who": "llmos"}', "--wait",
                   "--json", at=daemon, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["state"] == "SUCCEEDED" and job["program"] == f"{script}:main"

    shown = json.loads(llmos("job", "show", str(job["id"]), "--json", at=daemon).stdout)
    assert shown["metrics"][0]["name"] == "answer" and shown["metrics"][0]["value"] == 42
    listed = json.loads(llmos("job", "list", "--json", at=daemon).stdout)
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    logs = llmos("job", "logs", str(job["id"]), "--stream", "stdout", at=daemon)
    assert "hello llmos" in logs.stdout
    table = llmos("job", "list", at=daemon)
    assert "SUCCEEDED" in table.stdout and str(job["id"]) in table.stdout


def test_a_failed_job_makes_wait_exit_1(daemon):
    result = llmos("job", "submit", "sleep", "-p", '{"seconds": "x"}', "--wait", at=daemon)
    assert result.returncode == 1
    assert "FAILED" in result.stdout


def test_artifacts_put_ls_get(daemon, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("remember")
    put = json.loads(llmos("artifacts", "put", str(src), "--kind", "text", "--json",
                           at=daemon).stdout)
    listed = json.loads(llmos("artifacts", "ls", "--json", at=daemon).stdout)
    assert put["id"] in [a["id"] for a in listed["artifacts"]]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    got = llmos("artifacts", "get", str(put["id"]), "-o", str(out_dir), at=daemon)
    assert got.returncode == 0, got.stderr
    assert (out_dir / "notes.txt").read_text() == "remember"


def test_resources_shows_the_node(daemon):
    data = json.loads(llmos("resources", "--json", at=daemon).stdout)
    assert data["nodes"][0]["capacity"]["cpu"] == 2
    assert "cpu free/total" in llmos("resources", at=daemon).stdout


def test_up_on_a_busy_port_is_a_clear_error(daemon):
    port = daemon.url.rsplit(":", 1)[1]
    result = llmos("up", "--port", port, at=daemon)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_quiet_prints_only_the_id_for_scripts(daemon, tmp_path):
    job = llmos("job", "submit", "echo", "-p", '{"message": "hi"}', "-q", "--wait", at=daemon)
    assert job.returncode == 0, job.stderr
    job_id = int(job.stdout)  # nothing but the id
    assert daemon.client.jobs.get(job_id)["state"] == "SUCCEEDED"
    (tmp_path / "data.txt").write_text("notes")
    art = llmos("artifacts", "put", str(tmp_path / "data.txt"), "-q", at=daemon)
    assert daemon.client.artifacts.get(int(art.stdout))["name"] == "data.txt"
    token = llmos("tokens", "create", "--name", "script", "--scope", "read", "-q", at=daemon)
    assert token.stdout.strip().startswith("llmos_") and len(token.stdout.split()) == 1


def test_listing_verbs_take_both_spellings(daemon):
    for group in ("job", "artifacts", "models", "deployments", "tokens"):
        for verb in ("ls", "list"):
            result = llmos(group, verb, "--json", at=daemon)
            assert result.returncode == 0, (group, verb, result.stderr)
            json.loads(result.stdout)


def test_a_job_list_at_80_columns_keeps_states_and_dates_whole(daemon, tmp_path):
    job = daemon.client.jobs.submit("noop", name="a-rather-long-job-name-for-the-table")
    daemon.wait_job(job["id"])
    env = {**daemon.cli_env(), "COLUMNS": "80"}
    result = subprocess.run([sys.executable, "-m", "llmos.cli.main", "job", "list"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    row = next(line for line in lines if line.split()[:1] == [str(job["id"])])
    created = daemon.client.jobs.get(job["id"])["created_at"].replace("T", " ")[:16]
    assert "SUCCEEDED" in row and created in row


PROGRESS = """import sys, time
def main(ctx):
    for step in range(1, 4):
        ctx.metric("loss", 1.0 / step, step=step)
    sys.stderr.write("\\r  0%|          |\\r 50%|#####     |\\r100%|##########|\\n")
    print("params", ctx.job_id)
"""


def test_show_has_a_sparkline_and_one_metric_series_and_logs_read_well(daemon, tmp_path):
    (tmp_path / "progress.py").write_text(PROGRESS)
    job = llmos("job", "submit", "progress.py:main", "-p", '{}', "-q", "--wait", at=daemon,
                cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip()
    shown = llmos("job", "show", job_id, at=daemon).stdout
    assert "Metrics (3 points)" in shown and "█▃▁" in shown
    series = llmos("job", "show", job_id, "--metric", "loss", at=daemon).stdout
    assert [line.split()[:2] for line in series.splitlines() if line[:2].strip().isdigit()] \
        == [["1", "1"], ["2", "0.5"], ["3", "0.333333"]]
    points = json.loads(llmos("job", "show", job_id, "--metric", "loss", "--json",
                              at=daemon).stdout)
    assert [p["step"] for p in points] == [1, 2, 3]
    missing = llmos("job", "show", job_id, "--metric", "nope", at=daemon)
    assert missing.returncode == 2 and "its metrics: loss" in missing.stderr
    empty = llmos("job", "show", job_id, "--metric", "", at=daemon)
    assert empty.returncode == 2 and "--metric needs a metric's name" in empty.stderr
    for follow in ([], ["-f"]):
        logs = llmos("job", "logs", job_id, *follow, at=daemon)
        text = logs.stdout + logs.stderr
        assert text.count(f"--- llmos: attempt 1 of job {job_id}") == 1, text
        assert "100%|##########|" in text and "\r" not in text and " 50%" not in text


def test_params_and_progress_show_as_yaml_and_lines_off_a_terminal(daemon):
    result = llmos("job", "submit", "sleep", "-p", '{"seconds": 3}', "--wait", at=daemon)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split()[-2]
    assert f"job {job_id} RUNNING" in result.stdout  # progress lines, not silence
    shown = llmos("job", "show", job_id, at=daemon).stdout
    assert "    seconds: 3" in shown and "{'seconds'" not in shown


def test_what_a_job_or_its_submitter_wrote_is_shown_as_text_not_markup(daemon):
    job = daemon.client.jobs.submit("noop", name="[/red] not [bold]markup")
    daemon.wait_job(job["id"])
    shown = llmos("job", "show", str(job["id"]), at=daemon)
    assert shown.returncode == 0, shown.stderr
    assert "[/red] not [bold]markup" in shown.stdout
