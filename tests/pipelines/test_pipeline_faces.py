"""The three faces of pipelines — REST API, CLI, SDK (and its Python builder) — as a user
meets them: the builder writes what the YAML file says, the CLI reads files and --param
values or says in one line why not, and runs go through /v1/pipelines on a live daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from live import PROGRAMS, LiveDaemon, program, wait_for
from llmos.cli.errors import UsageError
from llmos.cli.pipeline import follow, parse_params
from llmos.pipelines.spec import load as load_spec
from llmos.sdk import APIError
from llmos.sdk.pipeline import ITEM, Pipeline, param, ref, spec_body

GOOD = ["SUCCEEDED", "CACHED"]
CLASSIFIER = """
name: fortune-classifier
params:
  corpus: {type: str, default: /data/fortunes}
  learning_rate: {type: float, default: 5.0e-5}
steps:
  ingest:
    program: data.ingest
    params: {dataset: fortunes, sources: ["${params.corpus}"], recipe: {steps: []}}
  train:
    program: train.finetune
    inputs: {dataset: "${steps.ingest.dataset}", model: "minilm"}
    params: {output: fortune-clf, recipe: {task: sequence_classification,
             learning_rate: "${params.learning_rate}"}}
    resources: {cpu: 2, memory_mb: 4096}
  evaluate:
    program: train.evaluate
    inputs: {model: "${steps.train.model}", dataset: "${steps.ingest.dataset}"}
  promote:
    program: promote
    inputs: {model: "${steps.train.model}", dataset: "${steps.ingest.dataset}"}
    params: {alias: champion, metric: accuracy, margin: 0.0}
  rollout:
    program: rollout
    when: "steps.promote.promoted"
    inputs: {model: "${steps.train.model}"}
    params: {deployment: fortunes, weight: 50, window_s: 30, min_requests: 10}
triggers:
  - {dataset: fortunes-raw}
  - {cron: "0 3 * * *"}
overlap: skip
"""


def classifier() -> Pipeline:
    p = Pipeline("fortune-classifier", params={"corpus": param(str, "/data/fortunes"),
                                               "learning_rate": param(float, 5e-5)},
                 overlap="skip")
    ingest = p.step("ingest", "data.ingest", params={
        "dataset": "fortunes", "sources": [p.params.corpus], "recipe": {"steps": []}})
    train = p.step("train", "train.finetune",
                   inputs={"dataset": ingest.out("dataset"), "model": "minilm"},
                   params={"output": "fortune-clf",
                           "recipe": {"task": "sequence_classification",
                                      "learning_rate": p.params.learning_rate}},
                   resources={"cpu": 2, "memory_mb": 4096})
    p.step("evaluate", "train.evaluate",
           inputs={"model": train.out("model"), "dataset": ingest.out("dataset")})
    promote = p.step("promote", "promote",
                     inputs={"model": train.out("model"), "dataset": ingest.out("dataset")},
                     params={"alias": "champion", "metric": "accuracy", "margin": 0.0})
    p.step("rollout", "rollout", when=promote.out("promoted"),
           inputs={"model": train.out("model")},
           params={"deployment": "fortunes", "weight": 50, "window_s": 30,
                   "min_requests": 10})
    p.trigger(dataset="fortunes-raw")
    p.trigger(cron="0 3 * * *")
    return p


# -- the builder ------------------------------------------------------------------------------


def test_the_builder_writes_what_the_yaml_file_says():
    built = classifier().to_dict()
    assert built == yaml.safe_load(CLASSIFIER)
    assert load_spec(built) == load_spec(CLASSIFIER)  # the daemon reads both alike
    assert yaml.safe_load(classifier().to_yaml()) == built


def test_the_builder_writes_map_steps_and_item_references():
    p = Pipeline("sweep", params={"rates": param(list, [0.1, 0.2])})
    p.step("train", "echo", map=p.params.rates, params={"message": ITEM}, cache=False)
    p.step("report", "noop", after=["train"])
    assert p.to_dict() == yaml.safe_load(textwrap.dedent("""
        name: sweep
        params: {rates: {type: list, default: [0.1, 0.2]}}
        steps:
          train: {program: echo, map: "${params.rates}", params: {message: "${item}"},
                  cache: false}
          report: {program: noop, after: [train]}
    """))
    assert ref("steps.train.result") == "${steps.train.result}"


def test_the_builder_refuses_what_it_can_see_is_wrong():
    p = Pipeline("x", params={"lr": param(float, 0.1)})
    with pytest.raises(AttributeError, match="no parameter 'nope'"):
        p.params.nope  # noqa: B018
    p.step("a", "noop")
    with pytest.raises(ValueError, match="already has a step 'a'"):
        p.step("a", "noop")
    with pytest.raises(ValueError, match="exactly one of"):
        p.trigger(dataset="d", cron="* * * * *")
    with pytest.raises(ValueError, match="a parameter's type"):
        param(complex)


def test_a_spec_may_be_a_file_and_its_relative_programs_are_made_absolute(tmp_path):
    (tmp_path / "steps.py").write_text("def hello(ctx):\n    return 1\n")
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsteps:\n  a: {program: steps.py:hello}\n  b: {program: noop}\n")
    for given in (path, str(path)):
        body = spec_body(given)
        assert body["steps"] == {"a": {"program": f"{tmp_path / 'steps.py'}:hello"},
                                 "b": {"program": "noop"}}
    assert spec_body("name: p\nsteps: {}\n") == "name: p\nsteps: {}\n"  # YAML text as is
    assert spec_body(classifier()) == classifier().to_dict()


# -- the CLI without a daemon ---------------------------------------------------------------


@pytest.mark.parametrize("given,expected", [
    (["lr=3e-5"], {"lr": 3e-5}),
    (["lr=0.1", "epochs=3"], {"lr": 0.1, "epochs": 3}),
    (["big=1_000"], {"big": 1000}),
    (["on=true", "name=fortunes"], {"on": True, "name": "fortunes"}),
    (["tags=[a, b]"], {"tags": ["a", "b"]}),
    (["note="], {"note": ""}),
    (["expr=a=b"], {"expr": "a=b"}),
])
def test_param_values_are_read_as_yaml(given, expected):
    assert parse_params(given) == expected


@pytest.mark.parametrize("given,message", [
    (["lr"], "--param takes NAME=VALUE"),
    (["=3"], "--param takes NAME=VALUE"),
    (["lr=1", "lr=2"], "--param lr is given twice"),
    (["x=[1, 2"], "--param x: not a YAML value"),
])
def test_bad_params_are_usage_errors(given, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        parse_params(given)


def llmos(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """The `llmos` command as a user runs it, the pipeline verbs registered."""
    code = ("from llmos.cli import main as m\n"
            "from llmos.cli.pipeline import pipeline_app\n"
            "if not any(g.name == 'pipeline' for g in m.app.registered_groups):\n"
            "    m.app.add_typer(pipeline_app, name='pipeline')\n"
            "m.main()\n")
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
        env.update(LLMOS_URL="http://127.0.0.1:9", COLUMNS="200")
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "broken.yaml").write_text("name: x\nsteps: [\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (d / "folder.yaml").mkdir()
    return d


@pytest.mark.parametrize("args,message", [
    (["run", "{d}/missing.yaml"], "no such file"),
    (["validate", "{d}/broken.yaml"], "is not valid YAML"),
    (["apply", "{d}/list.yaml"], "must be a YAML mapping"),
    (["run", "{d}/binary.yaml"], "is not a text file"),
    (["run", "{d}/folder.yaml"], "is a folder"),
    (["run", "{d}/list.yaml", "--param", "oops"], "must be a YAML mapping"),
])
def test_a_bad_pipeline_file_is_one_line_and_exit_2(bad_files, args, message):
    result = llmos("pipeline", *[a.format(d=bad_files) for a in args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_param_on_the_command_line_is_exit_2(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsteps:\n  a: {program: noop}\n")
    result = llmos("pipeline", "run", str(path), "--param", "lr")
    assert result.returncode == 2 and "--param takes NAME=VALUE" in result.stderr
    assert "Traceback" not in result.stderr


class FakeRuns:
    """A client's ``pipelines`` whose run advances one step per look."""

    def __init__(self, frames: list[dict]):
        self.frames = frames
        self.pipelines = self

    def get_run(self, run_id: int) -> dict:
        return self.frames.pop(0) if len(self.frames) > 1 else self.frames[0]


def _frame(state: str, *steps: tuple) -> dict:
    return {"id": 7, "pipeline": "demo", "state": state, "trigger": "manual",
            "no_cache": False, "reason": None, "steps": [
                {"name": n, "state": st, "job_id": job, "cached_from_run": came_from,
                 "started_at": "2026-01-01T00:00:00+00:00" if st != "WAITING" else None,
                 "ended_at": "2026-01-01T00:00:02+00:00" if st not in ("WAITING", "RUNNING")
                 else None, "reason": why} for n, st, job, came_from, why in steps]}


def test_the_live_view_on_a_terminal_ends_with_every_steps_state():
    frames = [_frame("RUNNING", ("ingest", "CACHED", None, 3, "cached from run 3"),
                     ("train", "RUNNING", 12, None, None)),
              _frame("FAILED", ("ingest", "CACHED", None, 3, "cached from run 3"),
                     ("train", "FAILED", 12, None, "job 12 failed: boom"))]
    console = Console(force_terminal=True, width=120, record=True)
    ended = follow(console, FakeRuns(frames[1:]), frames[0], every_s=0)
    assert ended["state"] == "FAILED"
    text = console.export_text()
    last = text[text.rindex("run 7 of demo"):]
    assert "FAILED" in last.splitlines()[0]
    assert [line.split()[:5] for line in last.splitlines() if line.strip().startswith(
        ("ingest", "train"))] == [["ingest", "CACHED", "-", "run", "3"],
                                  ["train", "FAILED", "12", "-", "2.0"]]
    assert "job 12 failed: boom" in last and "cached from run 3" not in last


# -- through the API, the SDK and the CLI on a live daemon ----------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One live daemon for the module. Its users may read the ``gates`` folder: a run's
    jobs act as its owner in its team, and see only the read roots."""
    home = tmp_path_factory.mktemp("faces") / "home"
    home.mkdir()
    gates = tmp_path_factory.mktemp("gates")
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": f"{gates}:{PROGRAMS.parent}"}).start()
    live.gates = gates
    yield live
    live.stop()
    live.client.close()


def three_steps(name: str, gate: str | None = None) -> dict:
    """greet (echo) → shout (echo of greet's result) → done (noop after shout); with a
    ``gate``, shout waits for that file to exist."""
    p = Pipeline(name, params={"greeting": param(str, "hello")})
    greet = p.step("greet", "echo", params={"message": p.params.greeting})
    if gate:
        p.step("shout", program("gated"), params={"marker_dir": "", "gate": gate},
               after=[greet])
    else:
        p.step("shout", "echo", inputs={"message": greet.out("result")})
    p.step("done", "noop", after=["shout"])
    return p.to_dict()


def test_a_three_step_run_and_a_cached_rerun(shared):
    c = shared.client
    plan = c.pipelines.validate(three_steps("faces-demo"), {"greeting": "hi"})
    assert plan["params"] == {"greeting": "hi"}
    assert {s["name"]: s["needs"] for s in plan["steps"]} == {
        "greet": [], "shout": ["greet"], "done": ["shout"]}
    run = c.pipelines.run(three_steps("faces-demo"), {"greeting": "hi"})
    assert (run["pipeline"], run["trigger"]) == ("faces-demo", "manual")
    assert [s["name"] for s in run["steps"]] == ["greet", "shout", "done"]
    ended = c.pipelines.wait(run["id"], timeout=120)
    assert ended["state"] == "SUCCEEDED", _states(ended)
    steps = {s["name"]: s for s in ended["steps"]}
    assert [steps[n]["state"] for n in ("greet", "shout")] == ["SUCCEEDED"] * 2
    assert steps["done"]["state"] in GOOD  # a noop of this team may have run before
    assert steps["shout"]["outputs"]["result"] == "hi"
    assert c.jobs.get(steps["shout"]["job_id"])["params"]["message"] == "hi"

    jobs_before = c.jobs.list(limit=10_000)["total"]
    again = c.pipelines.wait(c.pipelines.run(three_steps("faces-demo"),
                                             {"greeting": "hi"})["id"], timeout=120)
    assert again["state"] == "SUCCEEDED"
    assert [(s["state"], s["job_id"]) for s in again["steps"]] == [("CACHED", None)] * 3
    assert [s["cached_from_run"] for s in again["steps"]][:2] == [run["id"]] * 2
    assert c.jobs.list(limit=10_000)["total"] == jobs_before  # no job started

    listed = c.pipelines.runs(pipeline="faces-demo")
    assert [r["id"] for r in listed[:2]] == [again["id"], run["id"]]
    assert listed[0]["step_states"] == {"CACHED": 3} and listed[0]["steps"] is None
    assert [r["id"] for r in c.pipelines.runs(pipeline="faces-demo", state="FAILED")] == []
    pipeline = c.pipelines.get("faces-demo")
    assert pipeline["spec"]["steps"]["greet"]["program"] == "echo"
    assert "faces-demo" in {p["name"] for p in c.pipelines.list()}


def test_cancel_then_resume_reuses_what_succeeded(shared):
    c = shared.client
    gate = shared.gates / "open"
    run = c.pipelines.run(three_steps("faces-gated", str(gate)))
    # a step is RUNNING from its job's submission (a job may wait in the kernel for the
    # one before): greet done and shout's job running is the moment to cancel
    wait_for(lambda: (r := c.pipelines.get_run(run["id"])) and _step(r, "greet")["state"]
             == "SUCCEEDED" and _step(r, "shout")["state"] == "RUNNING"
             and c.jobs.get(_step(r, "shout")["job_id"])["state"] == "RUNNING",
             timeout=120, what="the gated step to run")
    cancelled = c.pipelines.cancel(run["id"])
    assert cancelled["state"] in ("RUNNING", "CANCELLED")
    cancelled = c.pipelines.wait(run["id"], timeout=120)
    assert cancelled["state"] == "CANCELLED"
    assert _step(cancelled, "greet")["state"] == "SUCCEEDED"
    assert _step(cancelled, "shout")["state"] == "CANCELLED"
    greeted_by = _step(cancelled, "greet")["job_id"]

    gate.write_text("open")
    resumed = c.pipelines.resume(run["id"])
    assert resumed["id"] == run["id"]
    ended = c.pipelines.wait(run["id"], timeout=120)
    assert ended["state"] == "SUCCEEDED", _states(ended)
    assert _step(ended, "greet")["job_id"] == greeted_by  # not run again
    assert _step(ended, "shout")["state"] == "SUCCEEDED"
    assert _step(ended, "done")["state"] in GOOD


# A few hundred bytes of YAML that would expand to 10**9 values once read.
BOMB = "name: p\nsteps:\n  s:\n    program: noop\n    params:\n" + "".join(
    f"      a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else 'x'}]\n" for i in range(10))


def _states(run: dict) -> list[tuple]:
    return [(s["name"], s["state"], s["reason"]) for s in run["steps"]]


def _step(run: dict, name: str) -> dict:
    return next(s for s in run["steps"] if s["name"] == name)


def test_apply_registers_triggers_and_delete_removes_the_pipeline(shared):
    c = shared.client
    spec = three_steps("faces-applied")
    spec["triggers"] = [{"dataset": "faces-raw"}, {"cron": "0 3 * * *"}]
    applied = c.pipelines.apply(spec)
    assert [(t["kind"], t["target"]) for t in applied["triggers"]] == [
        ("dataset", "faces-raw"), ("cron", "0 3 * * *")]
    assert c.pipelines.runs(pipeline="faces-applied") == []
    assert c.pipelines.get("faces-applied")["triggers"] == applied["triggers"]
    assert c.pipelines.delete("faces-applied")["name"] == "faces-applied"
    with shared.http() as http:
        resp = http.get("/v1/pipelines/faces-applied")
        assert resp.status_code == 404 and resp.json()["error"]["message"]


def test_bad_requests_are_4xx_json_naming_what_is_wrong(shared):
    c = shared.client
    outsider = shared.user("faces-other", team="faces-other")
    mine = c.pipelines.run(three_steps("faces-private"))
    cycle = three_steps("faces-bad")
    cycle["steps"]["greet"]["after"] = ["done"]
    with shared.http() as http, shared.http(outsider.token) as other:
        for resp, status, words in [
            (http.get("/v1/pipelines/runs/999999"), 404, "999999"),
            (http.post("/v1/pipelines/runs/999999/cancel"), 404, "999999"),
            (http.get("/v1/pipelines/runs/0"), 422, "run_id"),
            (http.get("/v1/pipelines/runs/abc"), 404, "no such route"),
            (http.get("/v1/pipelines/nope"), 404, "nope"),
            (other.get(f"/v1/pipelines/runs/{mine['id']}"), 404, str(mine["id"])),
            (other.post(f"/v1/pipelines/runs/{mine['id']}/cancel"), 404, str(mine["id"])),
            (other.post(f"/v1/pipelines/runs/{mine['id']}/resume"), 404, str(mine["id"])),
            (http.post("/v1/pipelines/runs", json={"spec": cycle}), 422, "cycle"),
            (http.post("/v1/pipelines/runs", json={"spec": "name: x\nsteps: ["}), 422,
             "not valid YAML"),
            (http.post("/v1/pipelines/validate", json={"spec": three_steps("faces-x"),
                                                       "params": {"nope": 1}}), 422, "nope"),
            (http.post("/v1/pipelines/runs", json={"spec": three_steps("faces-x"),
                                                   "no_cache": "yes"}), 422, "no_cache"),
            (http.post("/v1/pipelines/runs", json={"spec": 3}), 422, "spec"),
            (http.post("/v1/pipelines/validate", json={"spec": BOMB}), 422, "aliases"),
            (http.delete("/v1/pipelines/runs"), 405, "allowed"),
        ]:
            assert resp.status_code == status, (resp.request.url, resp.text)
            assert words in resp.json()["error"]["message"], (resp.request.url, resp.text)
        assert [r["id"] for r in other.get("/v1/pipelines/runs").json()["runs"]] == []
        assert other.get("/v1/pipelines").json()["pipelines"] == []
    with pytest.raises(APIError, match="pipeline 'faces-bad' not found"):
        c.pipelines.get("faces-bad")  # nothing was registered, nothing ran


def test_the_cli_runs_a_pipeline_live_then_shows_lists_and_reruns_it(shared,
                                                                    tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(three_steps("faces-cli"), sort_keys=False))
    env = shared.cli_env()
    first = llmos("pipeline", "run", str(path), "--param", "greeting=hey", env=env)
    assert first.returncode == 0, (first.stdout, first.stderr)
    lines = first.stdout.splitlines()
    for name, states in (("greet", ["SUCCEEDED"]), ("shout", ["SUCCEEDED"]), ("done", GOOD)):
        assert any(line.split()[:1] == [name] and line.split()[1] in states
                   for line in lines), first.stdout
    run_id = int(lines[0].split()[1])
    run = shared.client.pipelines.get_run(run_id)
    assert run["params"] == {"greeting": "hey"}

    second = llmos("pipeline", "run", str(path), "--param", "greeting=hey", env=env)
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert f"cached from run {run_id}" in second.stdout

    for args, words in [(["show", str(run_id)], "SUCCEEDED"),
                        (["runs", "--pipeline", "faces-cli"], str(run_id)),
                        (["ls"], "faces-cli"),
                        (["validate", str(path)], "is valid: 3 step(s)")]:
        result = llmos("pipeline", *args, env=env)
        assert result.returncode == 0 and words in result.stdout, (args, result.stdout,
                                                                  result.stderr)
    missing = llmos("pipeline", "show", "999999", env=env)
    assert missing.returncode == 1 and "999999" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_cli_exits_1_when_a_step_fails_and_says_why(shared, tmp_path):
    p = Pipeline("faces-failing")
    p.step("boom", program("fail"), params={"message": "kaput"})
    p.step("after", "noop", after=["boom"])
    path = tmp_path / "failing.yaml"
    path.write_text(p.to_yaml())
    result = llmos("pipeline", "run", str(path), env=shared.cli_env())
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert any(line.split()[:2] == ["boom", "FAILED"] for line in result.stdout.splitlines())
    assert any(line.split()[:2] == ["after", "STOPPED"] for line in result.stdout.splitlines())
    assert "FAILED" in result.stdout.splitlines()[-1]
