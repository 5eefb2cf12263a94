"""Tenancy: nothing of one team shows through to another, not even its names.

Through a live daemon with teams "alpha" and "beta" (a developer in each, and "both", a
developer in the two):

- ``/metrics`` shows a caller only the series of its teams (jobs, deployments, pools,
  serving requests); the administrator sees every series;
- names of datasets, models, deployments and pools are unique per team: each team has its
  own ``news``, ``shared`` and ``chat``, and no name is "taken" by another team;
- every answer about another team's name is exactly the answer about a missing name;
- a caller of several teams names one as ``team/name`` (routes, SDK, the OpenAI ``model``
  field), and a bare name found in two of its teams is a 409 listing the qualified names.

And the migration to per-team names keeps every row of a populated store, children
included (dataset and model versions, aliases, deployments), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.config import Config
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from live import LiveDaemon, wait_for
from llmos.sdk import APIError, Client
from llmos.store import open_database
from llmos.store.db import MIGRATIONS_DIR
from llmos.store.models import (Dataset, DatasetVersion, Deployment, Model, ModelAlias,
                                ModelVersion, ServingPool)
from pg import fresh_database

TEAMS = ("alpha", "beta")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("tenancy") / "home"
    home.mkdir()
    live = LiveDaemon(home).start()
    admin = live.client
    clients = {team: live.user(f"{team}-dev", team=team, role="maintainer") for team in TEAMS}
    clients["both"] = live.user("both-dev", team="alpha")
    admin.teams.set_member("beta", "both-dev", "developer")
    for team in TEAMS:
        c = clients[team]
        add_dataset_version(live, c, "news")
        register(live, c, "shared")
        register(live, c, f"{team}-only")
        add_dataset_version(live, c, f"{team}-data")
        c.models.set_alias("shared", "prod", 1)
        c.deployments.create("shared", name="chat", pool="pool", cpu=0.1, memory_mb=1536)
    yield live, clients
    for c in clients.values():
        c.close()
    live.stop()


def add_dataset_version(live: LiveDaemon, c: Client, name: str) -> dict:
    with live.http(c.token) as http:
        resp = http.post(f"/v1/datasets/{name}/versions", json={
            "content_hash": "0" * 64, "schema": {"text": "string"}, "stats": {},
            "lineage": {}, "shards": []})
    assert resp.status_code == 201, resp.text
    return resp.json()


def register(live: LiveDaemon, c: Client, name: str) -> dict:
    """A version of model ``name``: an encoder made of one small file (enough to deploy:
    requests to it are refused before a worker sees them)."""
    data = b'{"model_type": "bert"}'
    art = c.artifacts.put(data, name="config.json")
    info = {"architecture": "BertModel", "model_type": "bert", "task": "encoder",
            "parameters": 0, "dtypes": [], "size_bytes": len(data), "weight_files": [],
            "tokenizer_files": ["tokenizer.json"], "vocab_size": None,
            "chat_template": False, "context_length": None,
            "files": [{"path": "config.json", "size": len(data), "sha256": art["sha256"]}]}
    with live.http(c.token) as http:
        resp = http.post(f"/v1/registry/models/{name}/versions", json={
            "files": [{"path": "config.json", "artifact_id": art["id"]}], "info": info})
    assert resp.status_code == 201, resp.text
    return resp.json()


def chat(live: LiveDaemon, token: str, model: str):
    with live.http(token) as http:
        return http.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}]})


def scrape(live: LiveDaemon, token: str | None = None) -> str:
    with live.http(token) as http:
        resp = http.get("/metrics")
    assert resp.status_code == 200, resp.text
    return resp.text


def samples(text: str) -> list[tuple[str, dict]]:
    """Every series of a scrape: (sample name, labels)."""
    return [(sample.name, sample.labels) for family in text_string_to_metric_families(text)
            for sample in family.samples]


def has(text: str, name: str, **labels) -> bool:
    return any(n == name and labels.items() <= got.items() for n, got in samples(text))


# -- /metrics -------------------------------------------------------------------------------


NODE_SERIES = ("llmos_node_", "llmos_gpu_")


def test_metrics_show_a_caller_only_its_teams_series(world):
    live, c = world
    for team in TEAMS:  # a running job, and a serving request to its deployment, per team
        job = c[team].jobs.submit("sleep", {"seconds": 600}, cpu=0.05, memory_mb=256)
        live.wait_job(job["id"], states=("RUNNING",))
        resp = chat(live, c[team].token, "chat")  # an encoder: refused, and counted
        assert resp.json()["error"]["code"] == "wrong_model_type", resp.text
    assert chat(live, c["both"].token, "no-such-model").status_code == 404  # no one team

    everything = wait_for(lambda: (t := scrape(live)) and all(
        has(t, "llmos_serving_resident_models", team=team, pool="pool") for team in TEAMS)
        and t, timeout=180, what="both teams' serving workers in the metrics")
    for team in TEAMS:
        assert has(everything, "llmos_jobs", team=team, state="running")
        assert has(everything, "llmos_serving_requests_total", team=team, deployment="chat",
                   route="chat", status="400")
        assert has(everything, "llmos_serving_rejected_total", team=team, deployment="chat",
                   reason="wrong_model_type")
    assert has(everything, "llmos_serving_rejected_total", team="",
               deployment="no-such-model")  # unattributed: the administrator's alone

    for team, other in (("alpha", "beta"), ("beta", "alpha")):
        text = scrape(live, c[team].token)
        # the node and GPU series carry no team: every member sees them (as /v1/nodes)
        public = [(n, labels) for n, labels in samples(text) if n.startswith(NODE_SERIES)]
        shown = [(n, labels) for n, labels in samples(text) if not n.startswith(NODE_SERIES)]
        assert public and all("team" not in labels for _, labels in public), public
        assert shown and all(labels.get("team") == team for _, labels in shown), shown
        assert f'team="{other}"' not in text and "no-such-model" not in text
        assert has(text, "llmos_jobs", team=team, state="running")
        assert has(text, "llmos_serving_resident_models", team=team, pool="pool")
        assert has(text, "llmos_serving_requests_total", team=team, deployment="chat")
        assert "# HELP llmos_serving_requests" in text  # every family, even when empty
    both = scrape(live, c["both"].token)  # a member of both sees both, not the unattributed
    assert {labels["team"] for n, labels in samples(both)
            if not n.startswith(NODE_SERIES)} == set(TEAMS)
    with Client(live.url, token=c["beta"].tokens.create("calls-only", scopes=["inference"])[
            "token"]) as no_read:  # no "read" scope: no series at all
        assert samples(scrape(live, no_read.token)) == []


# -- names per team -------------------------------------------------------------------------


def test_each_team_has_its_own_dataset_model_deployment_and_pool_of_one_name(world):
    live, c = world
    for team in TEAMS:
        assert (c[team].datasets.get("news")["team"], c[team].models.get("shared")["team"],
                c[team].deployments.get("chat")["team"]) == (team, team, team)
        assert c[team].deployments.get("chat")["pool"] == "pool"
        assert [d["name"] for d in c[team].datasets.list()].count("news") == 1
    with live.http() as http:  # the administrator sees both, each with its team
        listed = http.get("/v1/datasets").json()["datasets"]
    assert sorted(d["team"] for d in listed if d["name"] == "news") == ["alpha", "beta"]
    # a new version goes to the caller's own dataset, never to the other team's
    assert add_dataset_version(live, c["beta"], "news")["version"] == 2
    assert [v["version"] for v in c["alpha"].datasets.get("news")["versions"]] == [1]


def test_another_teams_name_is_answered_exactly_as_a_missing_name(world):
    live, c = world
    beta = c["beta"].token
    cases = [  # (method, path with NAME, body)
        ("GET", "/v1/datasets/NAME", None),
        ("GET", "/v1/datasets/NAME/versions/1", None),
        ("GET", "/v1/datasets/NAME/versions/latest/head", None),
        ("GET", "/v1/datasets/NAME/diff?from=1&to=1", None),
        ("GET", "/v1/registry/models/NAME", None),
        ("GET", "/v1/registry/models/NAME/versions/1", None),
        ("DELETE", "/v1/registry/models/NAME", None),
        ("DELETE", "/v1/registry/models/NAME/versions/1", None),
        ("PUT", "/v1/registry/models/NAME/aliases/staging", {"version": 1}),
        ("DELETE", "/v1/registry/models/NAME/aliases/prod", None),
        ("POST", "/v1/registry/models/NAME/versions/1/metrics",
         {"key": "eval", "metrics": {"accuracy": 1}}),
        ("GET", "/v1/deployments/NAME", None),
        ("POST", "/v1/deployments/NAME/scale", {"replicas": 2}),
        ("DELETE", "/v1/deployments/NAME", None),
    ]

    def answer(method: str, path: str, name: str, body) -> tuple[int, str]:
        with live.http(beta) as http:
            resp = http.request(method, path.replace("NAME", name), json=body)
        return resp.status_code, resp.text.replace(name, "NAME")

    for method, path, body in cases:
        dataset = "/datasets/" in path
        theirs = "alpha-data" if dataset else ("alpha-only" if "/models/" in path else "chat")
        for taken, missing in ((theirs, "nothing-here"),
                               (f"alpha/{theirs}", "alpha/nothing-here"),
                               (f"alpha/{theirs}", f"nosuchteam/{theirs}")):
            if "/deployments/" in path and "/" not in taken:
                continue  # beta has its own "chat": the qualified forms cover alpha's
            got = answer(method, path, taken, body)
            assert got == answer(method, path, missing, body), (method, path, taken)
            assert got[0] == 404 and json.loads(got[1])["error"]["type"] == "not_found_error"
    # nothing of alpha's changed
    assert c["alpha"].deployments.get("chat")["replicas"] == 1
    assert c["alpha"].models.get("alpha-only")["versions"][0]["version"] == 1
    assert c["alpha"].models.get("shared")["aliases"] == {"prod": 1}
    # the OpenAI routes: alpha's deployment is as unknown to beta as a missing one
    mine, missing = chat(live, beta, "alpha/chat"), chat(live, beta, "alpha/nothing")
    assert (mine.status_code, mine.json()["error"]["code"]) == (
        missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")


def test_a_member_of_two_teams_names_one_as_team_slash_name(world):
    live, c = world
    both = c["both"]
    for kind, get in (("dataset", both.datasets.get), ("model", both.models.get),
                      ("deployment", both.deployments.get)):
        name = {"dataset": "news", "model": "shared", "deployment": "chat"}[kind]
        with pytest.raises(APIError) as e:
            get(name)
        assert e.value.status == 409
        assert f"alpha/{name}, beta/{name}" in e.value.message, e.value.message
        for team in TEAMS:
            assert get(f"{team}/{name}")["team"] == team  # the SDK sends team/name as is
    assert both.datasets.get("alpha-data")["team"] == "alpha"  # a bare name of one team
    with live.http(both.token) as http:
        # raw paths too, and a version of the named team's dataset
        assert http.get("/v1/datasets/beta/news/versions/1").json()["dataset"] == "news"
        assert http.get("/v1/registry/models/alpha/shared/versions/prod").json()[
            "version"] == 1
        ambiguous = http.post("/v1/datasets/news/versions", json={
            "content_hash": "1" * 64, "schema": {}, "stats": {}, "lineage": {},
            "shards": []})
        assert ambiguous.status_code == 409 and "alpha/news" in ambiguous.text
        made = http.post("/v1/datasets/alpha/news/versions", json={
            "content_hash": "1" * 64, "schema": {}, "stats": {}, "lineage": {},
            "shards": []})
        assert made.status_code == 201, made.text
        # a team it is not in is refused (for want of membership, whatever the name)
        outside = http.post("/v1/datasets/gamma/news/versions", json={
            "content_hash": "1" * 64, "schema": {}, "stats": {}, "lineage": {},
            "shards": []})
        assert outside.status_code == 403 and "not a member of team gamma" in outside.text
        models = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert {"alpha/chat", "beta/chat"} <= models and "chat" not in models
    assert [v["version"] for v in c["alpha"].datasets.get("news")["versions"]] == [1, 2]
    # the OpenAI surface: a bare ambiguous model is a 409 naming both, team/name reaches it
    resp = chat(live, both.token, "chat")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "model_ambiguous"
    assert "alpha/chat, beta/chat" in resp.json()["error"]["message"]
    resp = chat(live, both.token, "beta/chat")
    assert (resp.status_code, resp.json()["error"]["code"]) == (400, "wrong_model_type")
    assert "`chat` serves embeddings" in resp.json()["error"]["message"]


def test_a_deployment_of_one_name_in_each_team_serves_its_own_teams_model(world):
    live, c = world
    both = c["both"]
    made = both.deployments.create("beta/shared", name="beta/second", pool="beta/pool",
                                   cpu=0.1, memory_mb=1536)
    assert (made["team"], made["model"], made["pool"]) == ("beta", "shared", "pool")
    with pytest.raises(APIError) as e:  # a pool of another team than the deployment's
        both.deployments.create("alpha/shared", name="alpha/third", pool="beta/pool", cpu=0.1,
                                memory_mb=1536, team="alpha")
    assert e.value.status == 422 and "pool of team alpha" in e.value.message
    assert c["beta"].deployments.delete("beta/second")["name"] == "second"
    assert c["beta"].deployments.get("chat")["pool"] == "pool"  # the shared pool stays


# -- the migration ----------------------------------------------------------------------------


AT = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgres"])
def before_team_names(request, tmp_path):
    """A store at revision 0008 (global names) holding a dataset and a model with their
    versions, an alias, a pool and a deployment."""
    if request.param == "sqlite":
        yield from _populated(f"sqlite:///{tmp_path / 'llmos.db'}")
        return
    with fresh_database("llmos_names") as url:
        yield from _populated(url)


def _populated(url: str):
    db = open_database(url, migrate=False)
    _migrate(db, "0008")
    at = AT.strftime("%Y-%m-%d %H:%M:%S") if db.engine.dialect.name == "sqlite" \
        else AT.isoformat()
    with db.engine.begin() as conn:
        def insert(table: str, **values) -> int:
            values = {k: json.dumps(v) if isinstance(v, (dict, list)) else v
                      for k, v in values.items()}
            sql = (f"INSERT INTO {table} ({', '.join(values)}) "
                   f"VALUES ({', '.join(':' + k for k in values)})")
            if table == "model_aliases":
                conn.execute(text(sql), values)
                return 0
            return conn.execute(text(sql + " RETURNING id"), values).scalar_one()

        ds = insert("datasets", name="news", owner="alice", team="lab", created_at=at)
        insert("dataset_versions", dataset_id=ds, version=1, content_hash="c" * 64, shards=[],
               schema={}, stats={}, lineage={}, created_at=at)
        model = insert("models", name="bert", team="lab", owner="alice", created_at=at)
        version = insert("model_versions", model_id=model, version=1, task="encoder",
                         parameters=1, size_bytes=1, dtype="float32", info={}, files=[],
                         lineage={}, metrics={}, card="# bert", owner="alice", created_at=at)
        insert("model_aliases", model_id=model, alias="prod", version_id=version,
               updated_at=at)
        insert("serving_pools", name="pool", team="lab", owner="alice", cpu=1.0,
               memory_mb=1024, gpu=0, budget_mb=512, created_at=at)
        insert("deployments", name="search", team="lab", owner="alice", model="bert",
               ref="prod", version_id=version, engine="encoder", replicas=1, max_batch=8,
               max_queue=64, priority="normal", pool="pool", created_at=at, updated_at=at)
    yield db
    db.close()


def _migrate(db, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_the_migration_to_team_names_keeps_every_row_and_lets_two_teams_share_a_name(
        before_team_names):
    db = before_team_names
    _migrate(db, "head")
    with db.session() as s:
        ds = s.scalars(select(Dataset).where(Dataset.name == "news")).one()
        assert [v.version for v in ds.versions] == [1] and ds.team == "lab"
        model = s.scalars(select(Model).where(Model.name == "bert")).one()
        assert [v.version for v in model.versions] == [1]
        assert [(a.alias, a.version.version) for a in model.aliases] == [("prod", 1)]
        assert s.scalars(select(Deployment.name)).all() == ["search"]
        assert s.scalars(select(ServingPool.name)).all() == ["pool"]
        assert len(s.scalars(select(DatasetVersion)).all()) == 1
        assert len(s.scalars(select(ModelVersion)).all()) == 1
        assert len(s.scalars(select(ModelAlias)).all()) == 1
    if db.engine.dialect.name == "sqlite":  # foreign keys are enforced again afterwards
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with db.session() as s:  # another team may use every name
        s.add(Dataset(name="news", owner="bob", team="other"))
        s.add(Model(name="bert", owner="bob", team="other"))
        s.add(ServingPool(name="pool", team="other", owner="bob", cpu=1.0, memory_mb=1024,
                          gpu=0, budget_mb=512))
    with pytest.raises(IntegrityError):  # but not the same team twice
        with db.session() as s:
            s.add(Dataset(name="news", owner="bob", team="lab"))
    with db.session() as s:
        assert sorted(s.scalars(select(Dataset.team).where(Dataset.name == "news"))) == [
            "lab", "other"]


def test_qualified_names_reach_their_routes_and_route_words_are_not_names():
    """``{name:qname}`` takes ``team/name`` but leaves ``news/diff`` to the diff route."""
    from llmos.api.names import QualifiedName

    whole = re.compile(f"^(?P<name>{QualifiedName.regex})$")
    diff = re.compile(f"^(?P<name>{QualifiedName.regex})/diff$")
    assert whole.match("news")["name"] == "news"
    assert whole.match("alpha/news")["name"] == "alpha/news"
    assert whole.match("news/diff") is None and whole.match("a/b/c") is None
    assert diff.match("news/diff")["name"] == "news"
    assert diff.match("alpha/news/diff")["name"] == "alpha/news"
