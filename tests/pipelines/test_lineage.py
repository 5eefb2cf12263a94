"""Lineage end to end (``pipelines/lineage.py``, ``/v1/lineage``, ``llmos lineage``): from a
raw file's sha256 through the dataset version, the pipeline run and step, the model version
(its base, recursively) to the deployment serving it, stable or canary — and never a name
of another team's model to a caller who cannot read it.

The rows come from the real services (a real ingest over a small text file in process,
real registrations, real jobs, real teams and tokens) on an in-process system whose daemon
is not started; pipeline runs, steps and deployments are written as the engine and the
serving layer write them. The API is the real app with the lineage router mounted."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

import pytest
import typer
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from llmos.api import lineage as lineage_api
from llmos.api.app import create_app
from llmos.cli import lineage as lineage_cli
from llmos.cli.errors import UsageError
from llmos.config import Settings
from llmos.data.datasets import VersionIn
from llmos.data.ingest import run as run_ingest
from llmos.data.recipe import parse_recipe
from llmos.errors import NotFound
from llmos.kernel.jobs import JobSpec
from llmos.models.registry import ModelVersionIn
from llmos.pipelines.lineage import LineageService
from llmos.sdk.client import Client
from llmos.security.rbac import Principal
from llmos.store.models import Deployment, Job, Pipeline, PipelineRun, PipelineStep
from llmos.system import System

TEXT = "The quick brown fox.\nA second line of the corpus.\nAnd a third one here.\n"


@dataclass
class World:
    system: System
    tokens: dict[str, str]
    who: dict[str, Principal]
    file_sha256: str
    content_hash: str
    jobs: dict[str, int]
    runs: dict[str, int]
    steps: dict[str, int]

    @property
    def lineage(self) -> LineageService:
        return self.system.lineage


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    boots = []
    system = System(Settings(home=root / "home", cpus=2), on_bootstrap=boots.append)
    system.lineage = LineageService(system.db, system.registry, system.datasets,
                                    system.deployments)
    admin = system.tokens.authenticate(boots[0].token)
    for team in ("red", "blue"):
        system.identity.create_team(admin, team)
    tokens = {"admin": boots[0].token}
    for user, team, role in (("red-dev", "red", "developer"), ("red-viewer", "red", "viewer"),
                             ("blue-dev", "blue", "developer")):
        tokens[user] = system.identity.create_user(admin, user, team=team, role=role)[1]
    who = {user: system.tokens.authenticate(token) for user, token in tokens.items()}
    red, blue = who["red-dev"], who["blue-dev"]

    train = {"recipe": {}, "base": {"model": "tiny", "version": 1}, "splits": {},
             "dataset": {"name": "corpus", "version": 1}, "output": "clf"}
    jobs = {name: _job(system, red, program, params) for name, program, params in (
        ("ingest", "data.ingest", {"dataset": "corpus"}),
        ("train", "train.finetune", train), ("train2", "train.finetune", train),
        ("import", "models.import", {"source": "/in/tiny.gguf", "name": "tiny",
                                     "format": "gguf"}))}
    jobs["blue-import"] = _job(system, blue, "models.import", {
        "source": "/models/secret-base", "name": "base", "format": "hf"})

    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    recipe = parse_recipe({"readers": {"txt": "line"}})
    result = run_ingest([str(corpus)], recipe, root / "work", workers=1)
    system.datasets.create_version(red, "corpus", VersionIn.model_validate({
        "content_hash": result.content_hash, "shards": [], "schema": result.schema,
        "stats": result.stats, "job_id": jobs["ingest"],
        "lineage": {"inputs": result.inputs, "recipe": recipe.to_dict(),
                    "job_id": jobs["ingest"], "sources": [str(corpus)]}}))
    dataset = {"name": "corpus", "version": 1, "content_hash": result.content_hash}

    _register(system, blue, "base", {"source": {"kind": "huggingface",
                                                "path": "/models/secret-base"}},
              job=jobs["blue-import"])
    _register(system, red, "tiny", {"source": {"kind": "gguf", "file": "/in/tiny.gguf",
                                               "sha256": "ab" * 32}}, job=jobs["import"])
    _register(system, red, "clf", {"base": {"model": "tiny", "version": 1}, "dataset": dataset,
                                   "job": jobs["train"], "method": "full"},
              job=jobs["train"], metrics={"eval:corpus:1:test": {"accuracy": 0.9}})
    _register(system, red, "clf", {"base": {"model": "blue/base", "version": 1},
                                   "dataset": dataset, "job": jobs["train2"], "method": "lora"},
              job=jobs["train2"])
    _register(system, red, "loop", {"base": {"model": "loop", "version": 1}})
    system.registry.set_alias(admin, "red/clf", "champion", 1)

    runs, steps = _runs(system, jobs)
    clf = {v.version: v.id for v in system.registry.get(red, "clf").versions}
    with system.db.session() as s:
        s.add(_deployment("fortunes", "red", clf[1], canary=clf[2], weight=25))
        s.add(_deployment("copycat", "blue", clf[1]))  # blue serves red's model
    yield World(system, tokens, who, hashlib.sha256(TEXT.encode()).hexdigest(),
                result.content_hash, jobs, runs, steps)
    asyncio.run(system.close())


def _job(system: System, who: Principal, program: str, params: dict) -> int:
    """A job as the daemon leaves it once it succeeded (this daemon is not started)."""
    job = system.jobs.submit(who, JobSpec(program=program, name=program, params=params))
    with system.db.session() as s:
        s.get(Job, job.id).state = "SUCCEEDED"
    return job.id


def _register(system: System, who: Principal, name: str, lineage: dict, job: int | None = None,
              metrics: dict | None = None) -> None:
    """A version made of one small file, as an import or training job registers it."""
    data = json.dumps({"model_type": "bert", "name": name, "lineage": lineage}).encode()
    art = system.artifacts.put(who, [data], "config.json")
    system.registry.register(who, name, ModelVersionIn.model_validate({
        "files": [{"path": "config.json", "artifact_id": art.id}], "info": {
            "architecture": "BertForSequenceClassification", "model_type": "bert",
            "task": "sequence_classification", "parameters": 0, "dtypes": [],
            "size_bytes": len(data), "weight_files": [], "tokenizer_files": [],
            "vocab_size": None, "chat_template": False, "context_length": None,
            "files": [{"path": "config.json", "size": len(data), "sha256": art.sha256}]},
        "lineage": lineage, "metrics": metrics or {}, "job_id": job}))


def _runs(system: System, jobs: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Run 1 ran ingest and train; run 2 (a new learning rate) reused ingest from the cache
    and trained again."""
    with system.db.session() as s:
        pipe = Pipeline(name="fortunes-clf", team="red", owner="red-dev", spec={})
        s.add(pipe)
        s.flush()
        first = PipelineRun(pipeline_id=pipe.id, team="red", owner="red-dev", spec={},
                            params={"learning_rate": 5e-5}, trigger="manual",
                            state="SUCCEEDED")
        second = PipelineRun(pipeline_id=pipe.id, team="red", owner="red-dev", spec={},
                             params={"learning_rate": 1e-4}, trigger="dataset corpus",
                             state="SUCCEEDED")
        s.add_all([first, second])
        s.flush()
        ingest = PipelineStep(run_id=first.id, name="ingest", step="ingest", state="SUCCEEDED",
                              job_id=jobs["ingest"], cache_key="a" * 64)
        train = PipelineStep(run_id=first.id, name="train", step="train", state="SUCCEEDED",
                             job_id=jobs["train"], cache_key="b" * 64)
        s.add_all([ingest, train])
        s.flush()
        cached = PipelineStep(run_id=second.id, name="ingest", step="ingest", state="CACHED",
                              cache_key="a" * 64, cached_from=ingest.id)
        train2 = PipelineStep(run_id=second.id, name="train", step="train", state="SUCCEEDED",
                              job_id=jobs["train2"], cache_key="c" * 64)
        s.add_all([cached, train2])
        s.flush()
        return ({"first": first.id, "second": second.id},
                {"ingest": ingest.id, "train": train.id})


def _deployment(name: str, team: str, version_id: int, canary: int | None = None,
                weight: int = 0) -> Deployment:
    return Deployment(name=name, team=team, owner=f"{team}-dev", model="clf", ref="champion",
                      version_id=version_id, canary_version_id=canary, canary_weight=weight,
                      engine="encoder", replicas=1, max_batch=8, max_queue=64,
                      priority="normal", pool=name)


def _by(nodes: list[dict], kind: str) -> list[dict]:
    return [n for n in nodes if n["kind"] == kind]


def _step(run: int, name: str, job: int) -> dict:
    return {"kind": "step", "name": name, "run": run, "pipeline": "fortunes-clf",
            "state": "SUCCEEDED", "job": {"kind": "job", "id": job, "program": (
                "data.ingest" if name == "ingest" else "train.finetune"),
                "state": "SUCCEEDED", "owner": "red-dev"}}


# -- the service ------------------------------------------------------------------------------


def test_a_deployment_shows_the_chain_from_raw_file_to_the_versions_it_serves(world):
    tree = world.lineage.of_deployment(world.who["red-viewer"], "fortunes")
    assert (tree["kind"], tree["name"], tree["team"], tree["ref"]) == (
        "deployment", "fortunes", "red", "champion")
    stable, canary = tree["inputs"]
    assert (stable["name"], stable["version"], stable["serves"], stable["weight"]) == (
        "clf", 1, "stable", 75)
    assert (canary["name"], canary["version"], canary["serves"], canary["weight"]) == (
        "clf", 2, "canary", 25)
    assert stable["aliases"] == ["champion"] and stable["method"] == "full"
    assert stable["metrics"] == ["eval:corpus:1:test"]
    made_by, dataset, base = stable["inputs"]
    assert made_by == _step(world.runs["first"], "train", world.jobs["train"])
    assert (dataset["kind"], dataset["name"], dataset["version"], dataset["content_hash"]) == (
        "dataset", "corpus", 1, world.content_hash)
    ingested_by, raw = dataset["inputs"]
    assert ingested_by == _step(world.runs["first"], "ingest", world.jobs["ingest"])
    assert (raw["kind"], raw["path"].endswith("corpus.txt"), raw["sha256"], raw["bytes"]) == (
        "file", True, world.file_sha256, len(TEXT))
    assert (base["kind"], base["name"], base["version"], base["as"]) == ("model", "tiny", 1,
                                                                        "base")
    assert base["inputs"][1] == {"kind": "file", "path": "/in/tiny.gguf", "sha256": "ab" * 32,
                                 "format": "gguf"}
    # the deployment itself appears once; blue's deployment of the same version not at all
    assert stable["served_by"] == [{"kind": "deployment", "name": "fortunes", "team": "red",
                                    "serves": "stable", "weight": 75, "repeat": True}]


def test_another_teams_base_model_is_a_hidden_node_with_no_name(world):
    tree = world.lineage.of_deployment(world.who["red-viewer"], "fortunes")
    canary = tree["inputs"][1]
    assert _by(canary["inputs"], "model") == [{"kind": "model", "hidden": True, "as": "base"}]
    # the dataset it shares with version 1 is shown once, then as a reference
    assert _by(canary["inputs"], "dataset") == [{
        "kind": "dataset", "name": "corpus", "team": "red", "version": 1,
        "content_hash": world.content_hash, "repeat": True}]
    text = json.dumps(tree)
    assert "blue" not in text and "secret-base" not in text and "copycat" not in text
    # an administrator reads both teams: the base and blue's deployment are there
    seen = world.lineage.of_deployment(world.who["admin"], "red/fortunes")
    base = _by(seen["inputs"][1]["inputs"], "model")[0]
    assert (base["name"], base["team"], base["version"]) == ("base", "blue", 1)
    assert base["inputs"][1]["path"] == "/models/secret-base"
    served = seen["inputs"][0]["served_by"]
    assert [(d["team"], d["name"]) for d in served] == [("blue", "copycat"), ("red", "fortunes")]


def test_a_model_by_alias_and_a_cycle_in_recorded_lineage(world):
    viewer = world.who["red-viewer"]
    tree = world.lineage.of_model(viewer, "clf", "champion")
    assert (tree["name"], tree["version"], tree["aliases"]) == ("clf", 1, ["champion"])
    assert [(d["name"], d["serves"], d["weight"]) for d in tree["served_by"]] == [
        ("fortunes", "stable", 75)]
    loop = world.lineage.of_model(viewer, "loop", "1")
    assert loop["inputs"] == [{"kind": "model", "name": "loop", "team": "red", "version": 1,
                               "repeat": True, "as": "base"}]


def test_a_dataset_shows_its_files_and_the_models_trained_on_it(world):
    tree = world.lineage.of_dataset(world.who["red-viewer"], "corpus", "1")
    assert tree["content_hash"] == world.content_hash and tree["documents"] == 3
    assert [f["sha256"] for f in _by(tree["inputs"], "file")] == [world.file_sha256]
    assert [(m["name"], m["version"]) for m in tree["used_by"]] == [("clf", 1), ("clf", 2)]
    assert [(d["name"], d["serves"]) for m in tree["used_by"] for d in m["served_by"]] == [
        ("fortunes", "stable"), ("fortunes", "canary")]


def test_a_run_shows_its_steps_what_they_made_and_where_a_cached_step_came_from(world):
    tree = world.lineage.of_run(world.who["red-viewer"], world.runs["second"])
    assert (tree["kind"], tree["id"], tree["pipeline"], tree["trigger"], tree["params"]) == (
        "run", world.runs["second"], "fortunes-clf", "dataset corpus", {"learning_rate": 1e-4})
    ingest, train = tree["steps"]
    assert (ingest["name"], ingest["state"], ingest["cached_from"]) == (
        "ingest", "CACHED", {"run": world.runs["first"], "step": "ingest",
                             "job": world.jobs["ingest"]})
    assert ingest["job"]["id"] == world.jobs["ingest"]
    (dataset,) = ingest["outputs"]
    assert (dataset["name"], dataset["version"]) == ("corpus", 1)
    assert _by(dataset["inputs"], "file")[0]["sha256"] == world.file_sha256
    assert dataset["inputs"][0]["run"] == world.runs["first"]  # the run that ran it
    (model,) = train["outputs"]
    assert (model["name"], model["version"], model["method"]) == ("clf", 2, "lora")
    assert model["inputs"][0] == {"kind": "step", "name": "train", "run": world.runs["second"],
                                  "pipeline": "fortunes-clf", "repeat": True}
    assert [(d["name"], d["serves"], d["weight"]) for d in model["served_by"]] == [
        ("fortunes", "canary", 25)]


def test_what_another_team_cannot_read_is_not_found(world):
    blue = world.who["blue-dev"]
    for call in (lambda: world.lineage.of_deployment(blue, "red/fortunes"),
                 lambda: world.lineage.of_model(blue, "red/clf", "1"),
                 lambda: world.lineage.of_dataset(blue, "red/corpus", "1"),
                 lambda: world.lineage.of_run(blue, world.runs["first"]),
                 lambda: world.lineage.of_run(blue, 10_000)):
        with pytest.raises(NotFound):
            call()
    # blue's own deployment of red's model: the model is hidden, the deployment shown
    tree = world.lineage.of_deployment(blue, "copycat")
    assert tree["inputs"] == [{"kind": "model", "hidden": True, "serves": "stable",
                               "weight": 100}]


# -- the API, the SDK and the CLI -------------------------------------------------------------


@pytest.fixture(scope="module")
def app(world):
    app = create_app(world.system)  # not started: the daemon is not needed to read
    app.include_router(lineage_api.router)
    app.state.lineage = world.system.lineage
    return app


def _http(app, token: str) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def test_the_api_answers_each_kind_as_json(world, app):
    http = _http(app, world.tokens["red-viewer"])
    dep = http.get("/v1/lineage/deployments/fortunes")
    assert dep.status_code == 200
    assert dep.json() == world.lineage.of_deployment(world.who["red-viewer"], "fortunes")
    for path, want in (("/v1/lineage/models/clf@champion", ("clf", 1)),
                       ("/v1/lineage/models/red/clf:2", ("clf", 2)),
                       ("/v1/lineage/models/clf", ("clf", 2)),
                       ("/v1/lineage/datasets/corpus:1", ("corpus", 1)),
                       ("/v1/lineage/datasets/red/corpus", ("corpus", 1))):
        resp = http.get(path)
        assert resp.status_code == 200, resp.text
        assert (resp.json()["name"], resp.json()["version"]) == want
    run = http.get(f"/v1/lineage/runs/{world.runs['first']}").json()
    assert [(s["name"], s["outputs"][0]["kind"]) for s in run["steps"]] == [
        ("ingest", "dataset"), ("train", "model")]


def test_the_api_answers_404_for_unknown_and_other_teams_things(world, app):
    http = _http(app, world.tokens["red-viewer"])
    for path, says in (("/v1/lineage/deployments/nope", "deployment 'nope' not found"),
                       ("/v1/lineage/deployments/blue/copycat", "not found"),
                       ("/v1/lineage/models/nope:1", "model 'nope' not found"),
                       ("/v1/lineage/models/clf:9", "has no version 9"),
                       ("/v1/lineage/models/clf@nope", "has no alias 'nope'"),
                       ("/v1/lineage/datasets/corpus:7", "has no version 7"),
                       ("/v1/lineage/runs/999999", "pipeline run 999999 not found")):
        resp = http.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert says in resp.json()["error"]["message"]
    blue = _http(app, world.tokens["blue-dev"])
    resp = blue.get(f"/v1/lineage/runs/{world.runs['first']}")
    assert resp.status_code == 404 and "not found" in resp.json()["error"]["message"]
    for path in ("/v1/lineage/runs/abc", "/v1/lineage/runs/0",
                 "/v1/lineage/datasets/corpus:abc"):
        resp = http.get(path)
        assert resp.status_code == 422, (path, resp.text)
        assert resp.json()["error"]["message"]
    assert TestClient(app).get("/v1/lineage/deployments/fortunes").status_code == 401


@pytest.fixture
def cli(world, app, monkeypatch):
    """``llmos lineage`` over the SDK, whose HTTP goes to the in-process app."""
    def client():
        c = Client("http://testserver", token=world.tokens["red-viewer"])
        c._http = _http(app, world.tokens["red-viewer"])
        return c

    monkeypatch.setattr(lineage_cli, "Client", client)
    monkeypatch.setattr(lineage_cli, "out", Console(width=250, color_system=None))
    cmd = typer.Typer()
    cmd.command()(lineage_cli.lineage)
    return lambda *args: CliRunner().invoke(cmd, list(args))


def test_the_cli_prints_the_chain_as_a_tree_and_as_json(world, cli):
    shown = cli("deployment", "fortunes")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "deployment red/fortunes · follows champion" in lines[0]
    text = shown.output
    for part in ("model red/clf:1 · stable 75%", "model red/clf:2 · canary 25%",
                 f"step train of run {world.runs['first']} (fortunes-clf) · SUCCEEDED",
                 f"dataset red/corpus:1 · content {world.content_hash[:16]}",
                 f"sha256 {world.file_sha256} · {len(TEXT)} bytes",
                 "model (hidden: of a team you cannot read)", "evaluated: eval:corpus:1:test",
                 "(shown above)"):
        assert part in text, part
    assert "blue" not in text
    as_json = cli("run", str(world.runs["second"]), "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.output) == world.lineage.of_run(world.who["red-viewer"],
                                                              world.runs["second"])
    cached = cli("run", str(world.runs["second"]))
    assert f"cached from run {world.runs['first']} step ingest" in cached.output


def test_the_cli_refuses_bad_usage_and_reports_unknown_names(cli):
    for args, says in ((("pipeline", "x"), "KIND is one of deployment, model, dataset, run"),
                       (("run", "abc"), "a pipeline run is named by its id")):
        result = cli(*args)
        assert isinstance(result.exception, UsageError) and says in str(result.exception)
    missing = cli("model", "nope")
    assert missing.exception is not None and missing.exception.status == 404
