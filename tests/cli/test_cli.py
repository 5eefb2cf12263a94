"""The `llmos` command as a user runs it: real processes against a live daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from live import free_port

@pytest.fixture
def daemon(shared_daemon):
    return shared_daemon


VERBS = [
    [], ["up"], ["resources"], ["job"], ["job", "submit"], ["job", "list"], ["job", "show"],
    ["job", "wait"], ["job", "logs"], ["job", "cancel"], ["artifacts"], ["artifacts", "ls"],
    ["artifacts", "show"], ["artifacts", "put"], ["artifacts", "get"], ["data"],
    ["data", "ingest"], ["data", "ls"], ["data", "show"], ["data", "head"], ["data", "stats"],
    ["data", "diff"], ["keys"], ["keys", "rotate"], ["audit"], ["audit", "ls"],
    ["audit", "verify"], ["login"], ["logout"], ["whoami"], ["users"], ["users", "create"],
    ["users", "ls"], ["users", "disable"], ["users", "enable"], ["teams"], ["teams", "create"],
    ["teams", "ls"], ["teams", "add"], ["teams", "remove"], ["teams", "quota"], ["tokens"],
    ["tokens", "create"], ["tokens", "ls"], ["tokens", "revoke"],
]


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


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "llmos")
def test_every_verb_has_help(verb):
    result = llmos(*verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    usage = next(i for i, line in enumerate(lines) if line.startswith("Usage"))
    description = lines[usage + 1]
    assert description[0].isalpha(), f"{' '.join(verb) or 'llmos'} has no description"


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
