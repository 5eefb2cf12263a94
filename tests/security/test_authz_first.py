"""Authorization before any side effect: every route that changes something checks every
scope and role it needs before it writes a byte. A write-only token used to create a job,
an artifact or an ingest and *then* answer 403 (the answer, the created object, needs
``read``). Now such a token is refused up front — the created object is the answer, so a
route that creates needs ``write`` and ``read`` — and a token whose role falls short is
refused before anything is written too. After every refusal an administrator lists
everything (jobs, artifacts, datasets, models, deployments, tokens, users, teams): nothing
is new, nothing changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import httpx
import pytest

from live import LiveDaemon, program
from test_access import labeled_dataset, register

TEAM = "af"


@dataclass
class World:
    live: LiveDaemon
    tokens: dict[str, str]  # write-only, viewer, ... -> token
    inbox: str
    waiting: int  # a PENDING job (behind a long one): a cancel would end it at once
    version_body: Callable[[], dict]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    home = tmp_path_factory.mktemp("authz") / "home"
    home.mkdir()
    inbox = tmp_path_factory.mktemp("inbox")
    (inbox / "a.txt").write_text("one short document\n")
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": str(inbox)}).start()
    maker = live.user("af-maintainer", team=TEAM, role="maintainer")
    viewer = live.user("af-viewer", team=TEAM, role="viewer")
    register(live, maker, "enc")
    register(live, maker, "cls", task="sequence_classification")
    maker.models.set_alias("enc", "prod", 1)
    labeled_dataset(live, maker, "labeled")
    # (a program file outside the ingest roots: the administrator submits it, for team af)
    anchor = live.client.jobs.submit(program("sleep_long"), {"seconds": 600}, cpu=0.05,
                                     memory_mb=512, team=TEAM)
    waiting = maker.jobs.submit("noop", depends_on=[anchor["id"]], cpu=0.05, memory_mb=64)
    tokens = {
        "write-only": maker.tokens.create("write only", scopes=["write"])["token"],
        "read-write": maker.tokens.create("read write", scopes=["read", "write"])["token"],
        "inference-only": maker.tokens.create("calls", scopes=["inference"])["token"],
        "viewer": viewer.token,
        "admin-without-admin-scope": live.client.tokens.create(
            "no admin scope", scopes=["read", "write"])["token"],
        "admin-scope-only": live.client.tokens.create("admin only", scopes=["admin"])["token"],
    }

    def version_body() -> dict:
        data = b'{"model_type": "bert"}'
        art = maker.artifacts.put(data, name="config.json")
        return {"files": [{"path": "config.json", "artifact_id": art["id"]}], "info": {
            "architecture": "BertModel", "model_type": "bert", "task": "encoder",
            "parameters": 0, "dtypes": [], "size_bytes": len(data), "weight_files": [],
            "tokenizer_files": [], "vocab_size": None, "chat_template": False,
            "context_length": None,
            "files": [{"path": "config.json", "size": len(data), "sha256": art["sha256"]}]}}

    yield World(live, tokens, str(inbox), waiting["id"], version_body)
    with live.http() as h:
        h.post(f"/v1/jobs/{anchor['id']}/cancel")  # (409 if it has ended already)
    live.stop()
    live.client.close()


def snapshot(w: World) -> dict:
    """Everything an administrator can list, reduced to what a write would change."""
    with w.live.http() as h:
        def get(path: str, key: str, **params) -> list[dict]:
            resp = h.get(path, params=params)
            assert resp.status_code == 200, resp.text
            return resp.json()[key]

        return {
            "jobs": sorted(j["id"] for j in get("/v1/jobs", "jobs", limit=10_000)),
            "cancelled": h.get(f"/v1/jobs/{w.waiting}").json()["state"] == "CANCELLED",
            "artifacts": sorted(a["id"] for a in get("/v1/artifacts", "artifacts",
                                                     limit=10_000)),
            "datasets": {d["name"]: [v["version"] for v in d["versions"]]
                         for d in get("/v1/datasets", "datasets")},
            "models": {m["name"]: ([v["version"] for v in m["versions"]], m["aliases"])
                       for m in get("/v1/registry/models", "models")},
            "metrics": h.get("/v1/registry/models/enc/versions/1").json()["metrics"],
            "deployments": sorted(d["name"] for d in get("/v1/deployments", "deployments")),
            "tokens": sorted(t["id"] for t in get("/v1/tokens", "tokens", all=True)),
            "users": sorted((u["name"], u["disabled"]) for u in get("/v1/users", "users")),
            "teams": {t["name"]: (t["members"], t["quotas"]) for t in get("/v1/teams", "teams")},
        }


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    request: Callable[[World], dict]  # the httpx request's keyword arguments


def _job(w: World) -> dict:
    return {"program": "noop", "team": TEAM, "resources": {"cpu": 0.05, "memory_mb": 64}}


CASES = {c.method + " " + c.path: c for c in [
    Case("POST", "/v1/jobs", lambda w: {"json": _job(w)}),
    Case("POST", "/v1/jobs/batch", lambda w: {"json": {"jobs": [_job(w), _job(w)]}}),
    Case("POST", "/v1/jobs/{waiting}/cancel", lambda w: {}),
    Case("POST", "/v1/artifacts", lambda w: {"params": {"name": "x.txt", "team": TEAM},
                                             "content": b"uploaded bytes"}),
    Case("POST", "/v1/datasets/ingest", lambda w: {"json": {
        "dataset": "fresh-ingest", "team": TEAM, "sources": [w.inbox],
        "resources": {"cpu": 0.1, "memory_mb": 512}}}),
    Case("POST", "/v1/datasets/fresh-data/versions", lambda w: {"json": {
        "content_hash": "1" * 64, "schema": {}, "stats": {}, "lineage": {}, "shards": []}}),
    Case("POST", "/v1/registry/models/import", lambda w: {"json": {
        "name": "imported", "team": TEAM, "source": w.inbox + "/a.txt",
        "resources": {"cpu": 0.2, "memory_mb": 1024}}}),
    Case("POST", "/v1/registry/models/enc/versions", lambda w: {"json": w.version_body()}),
    Case("POST", "/v1/registry/models/enc/versions/1/metrics", lambda w: {"json": {
        "key": "eval", "metrics": {"accuracy": 0.5}}}),
    Case("PUT", "/v1/registry/models/enc/aliases/staging", lambda w: {"json": {"version": 1}}),
    Case("DELETE", "/v1/registry/models/enc/aliases/prod", lambda w: {}),
    Case("DELETE", "/v1/registry/models/enc/versions/1", lambda w: {}),
    Case("DELETE", "/v1/registry/models/enc", lambda w: {}),
    Case("POST", "/v1/train", lambda w: {"json": {
        "recipe": {"task": "sequence_classification", "text_field": "text",
                   "label_field": "label", "max_steps": 1},
        "model": "enc", "dataset": "labeled", "output": "trained",
        "resources": {"cpu": 0.1, "memory_mb": 1024}}}),
    Case("POST", "/v1/evaluate", lambda w: {"json": {
        "model": "cls", "dataset": "labeled", "resources": {"cpu": 0.1, "memory_mb": 1024}}}),
    Case("POST", "/v1/deployments", lambda w: {"json": {"model": "enc", "name": "dep",
                                                        "pool": "af-pool"}}),
    Case("POST", "/v1/deployments/dep/scale", lambda w: {"json": {"replicas": 2}}),
    Case("DELETE", "/v1/deployments/dep", lambda w: {}),
]}
# Routes a team role governs (a viewer has read and write scopes but not the role). Not
# deploying: this registry's fake model has no tokenizer, which is refused (422) first.
ROLE_ROUTES = [k for k in CASES if "/cancel" not in k and "/deployments" not in k]


def prepared(w: World, route: str) -> Callable[[str], httpx.Response]:
    """The route's request, made ready (what it refers to exists now, before the
    snapshot), to send with a token."""
    case = CASES[route]
    kwargs = case.request(w)

    def send(token: str) -> httpx.Response:
        with w.live.http(token) as http:
            return http.request(case.method, case.path.format(waiting=w.waiting), **kwargs)

    return send


def refused(resp: httpx.Response) -> str:
    """The message of a 403 in llmos's JSON error shape."""
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["code"] == 403 and error["type"]
    return error["message"]


@pytest.mark.parametrize("route", list(CASES))
def test_a_write_only_token_is_refused_before_anything_is_written(world, route):
    send = prepared(world, route)
    before = snapshot(world)
    message = refused(send(world.tokens["write-only"]))
    assert "lacks the 'read' scope" in message and "'write' and 'read'" in message
    assert snapshot(world) == before


@pytest.mark.parametrize("route", ROLE_ROUTES)
def test_a_role_too_low_is_refused_before_anything_is_written(world, route):
    send = prepared(world, route)
    before = snapshot(world)
    message = refused(send(world.tokens["viewer"]))
    assert "af-viewer is viewer in team af" in message
    assert snapshot(world) == before


@pytest.mark.parametrize("route", ["POST /v1/jobs", "POST /v1/jobs/batch",
                                   "POST /v1/artifacts", "POST /v1/datasets/ingest",
                                   "POST /v1/datasets/fresh-data/versions",
                                   "POST /v1/registry/models/enc/versions"])
def test_the_same_request_with_read_and_write_creates_it(world, route):
    """The control: the refused requests above were valid, only the scope was missing."""
    send = prepared(world, route)
    before = snapshot(world)
    resp = send(world.tokens["read-write"])
    assert resp.status_code == 201, resp.text
    assert snapshot(world) != before


def test_identity_routes_check_first_too(world):
    w = world

    def identities() -> dict:  # (jobs started by the controls above may still be writing)
        return {k: v for k, v in snapshot(w).items() if k in ("tokens", "users", "teams")}

    before = identities()
    with w.live.http(w.tokens["inference-only"]) as http:
        assert "'write' (or 'admin') scope needed to create tokens" in refused(
            http.post("/v1/tokens", json={"name": "more"}))
    with w.live.http(w.tokens["admin-without-admin-scope"]) as http:
        for method, path, body in [
                ("POST", "/v1/users", {"name": "eve", "admin": True}),
                ("POST", "/v1/users/af-viewer/disable", None),
                ("POST", "/v1/teams", {"name": "newteam"}),
                ("PUT", f"/v1/teams/{TEAM}/members/af-viewer", {"role": "admin"}),
                ("DELETE", f"/v1/teams/{TEAM}/members/af-viewer", None),
                ("PUT", f"/v1/teams/{TEAM}/quota", {"jobs": 1}),
                ("POST", "/v1/keys/rotate", None)]:
            assert "scope" in refused(http.request(method, path, json=body)), path
    with w.live.http(w.tokens["write-only"]) as http:
        assert "lacks the 'admin' scope" in refused(http.post("/v1/keys/rotate"))
    assert identities() == before
    # An administrator's admin-only token changes teams and is shown what it changed
    # (it used to create the team and then be refused the answer, which needs 'read').
    with w.live.http(w.tokens["admin-scope-only"]) as http:
        made = http.post("/v1/teams", json={"name": "admin-made"})
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "admin-made"
        member = http.put("/v1/teams/admin-made/members/af-viewer", json={"role": "viewer"})
        assert member.status_code == 200 and member.json()["members"] == {"af-viewer": "viewer"}
