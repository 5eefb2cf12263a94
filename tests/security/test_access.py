"""Every route × every role × own team / other team, through a live daemon.

Team "red" has one user per role (viewer, developer, maintainer, admin) and "outsider"
belongs to no team; team "blue" has its own jobs, artifacts and datasets. For each route
the table says what it needs; each principal then calls it on a red resource (its own
team) and on a blue one (another team). Allowed calls answer their exact status and show
what they read or did; refusals are 403 or 404 with a message, never a 500; nothing of
blue is ever read or changed from red, and lists show only what the caller may see. A
route missing from the table fails the test, so every new route must say who may call it
and what it answers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import pytest

import tiny_models
from live import PROGRAMS, LiveDaemon, program, wait_for
from llmos.sdk import Client
from llmos.serve.openai import PATHS as OPENAI_PATHS
from offline_models import minilm_dir

TUNE_PROGRAMS = Path(__file__).parents[1] / "optimize" / "tune_programs.py"

ROLES = ["viewer", "developer", "maintainer", "admin"]
PRINCIPALS = ROLES + ["outsider"]
RANK = {"viewer": 1, "developer": 2, "maintainer": 3, "admin": 4, "outsider": 0}
# What a route needs: a least team role; "any" authenticated principal; "sysadmin" (a
# system administrator); "self" (only about oneself).
NEEDS = ("any", "viewer", "developer", "maintainer", "admin", "sysadmin", "self")


@dataclass
class World:
    live: LiveDaemon
    tokens: dict[str, str]  # principal -> token
    res: dict[str, dict]  # team -> its resources
    fresh: Callable[[str], int]  # team -> a new cancellable job id of that team
    counter: itertools.count
    makers: dict[str, Client]  # team -> its developer's client


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    home = tmp_path_factory.mktemp("access") / "home"
    inbox = tmp_path_factory.mktemp("inbox")
    home.mkdir()
    (inbox / "a.txt").write_text("one short document for the ingest cases\n")
    tiny_models.bert(inbox / "tiny-bert", minilm_dir(), hidden=16, layers=1)
    tiny_models.bert(inbox / "tiny-cls", minilm_dir(), hidden=16, layers=1, head="sequence",
                     labels=["no", "yes"])
    tiny_models.llama(inbox / "tiny-llama", tiny_models.smollm2_tokenizer(inbox / "smol"),
                      hidden=16, layers=1)
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": f"{inbox}:{PROGRAMS.parent}"}).start()
    admin = live.client
    for team in ("red", "blue"):
        admin.teams.create(team)
    tokens = {role: admin.users.create(f"red-{role}", team="red", role=role)["token"]
              for role in ROLES}
    tokens["outsider"] = admin.users.create("outsider")["token"]
    admin.users.create("newcomer")  # whom team admins add and remove
    makers = {"red": Client(live.url, token=tokens["developer"]),
              "blue": Client(live.url, token=admin.users.create(
                  "blue-developer", team="blue", role="developer")["token"])}
    res: dict[str, dict] = {"inbox": {"path": str(inbox)}}
    for team, c in makers.items():
        job = c.jobs.submit("noop")
        live.wait_job(job["id"])
        anchor = c.jobs.submit(program("sleep_long"), {"seconds": 600}, cpu=0.05,
                               memory_mb=64)
        art = c.artifacts.put(b"bytes of " + team.encode(), name=f"{team}.txt")
        report = c.artifacts.put(b"{}", name=f"{team}-report.json")
        with live.http(c.token) as http:
            for _ in range(2):
                assert http.post(f"/v1/datasets/{team}-data/versions", json={
                    "content_hash": "0" * 64, "schema": {"text": "string"}, "stats": {},
                    "lineage": {}, "shards": [], "report_artifact_id": report["id"],
                }).status_code == 201
        token = c.tokens.create(f"{team}-spare")
        res[team] = {"job": job["id"], "anchor": anchor["id"], "artifact": art["id"],
                     "dataset": f"{team}-data", "token": token["id"]}
        for _ in range(2):
            register(live, c, f"{team}-model")
        register(live, c, f"{team}-cls", task="sequence_classification")
        labeled_dataset(live, c, f"{team}-labeled")
    served_models(live, makers, inbox)

    def fresh(team: str) -> int:
        return makers[team].jobs.submit("noop", depends_on=[res[team]["anchor"]],
                                        cpu=0.05, memory_mb=64)["id"]

    yield World(live, tokens, res, fresh, itertools.count(), makers)
    for c in makers.values():
        c.close()
    live.stop()


@dataclass(frozen=True)
class Case:
    method: str
    route: str
    need: str
    # (world, team, principal) -> (path, request kwargs); team is "red" (own) or "blue".
    call: Callable[[World, str, str], tuple[str, dict]]
    other_status: int = 404  # what a red principal gets for blue's resource
    lists: str | None = None  # a list route: the JSON key holding the items
    ok: int = 200  # the status of an allowed call
    # What an allowed call must show (every case that some principal may call has one).
    shows: Callable[[Seen], bool] | None = None


@dataclass
class Seen:
    """An allowed call and its answer, for its case's ``shows``."""

    world: World
    principal: str
    path: str
    kwargs: dict
    resp: httpx.Response

    @property
    def body(self):
        return self.resp.json()

    @property
    def user(self) -> str:
        """The user name of the principal that called."""
        return self.principal if self.principal == "outsider" else f"red-{self.principal}"

    @property
    def last(self) -> str:
        """The last segment of the path called."""
        return self.path.rsplit("/", 1)[1]

    def red(self, key: str):
        return self.world.res["red"][key]

    def listed(self, key: str, field: str = "id") -> set:
        return {item[field] for item in self.body[key]}


def _r(w: World, team: str, key: str):
    return w.res[team][key]


def _new(w: World, prefix: str) -> str:
    return f"{prefix}-{next(w.counter)}"


def _node(w: World) -> str:
    return w.live.client.nodes()[0]["name"]


def _version(s: Seen, model: str) -> bool:
    """An answer names the exact version of ``model`` that gave it (in its body and its
    header; the deployments follow "latest", which other cases move)."""
    named = s.body["model"]
    return (named == s.resp.headers["x-llmos-model-version"]
            and named.startswith(f"{model}:") and named.split(":")[1].isdigit())


def _outsider_or(s: Seen, visible: bool) -> bool:
    """Lists: the outsider sees nothing of red (checked apart); a member sees red's."""
    return s.principal == "outsider" or visible


CASES = [
    Case("GET", "/v1/resources", "any", lambda w, t, p: ("/v1/resources", {}),
         shows=lambda s: len(s.body["nodes"]) == 1 and "pending" in s.body["scheduler"]),
    Case("GET", "/v1/nodes", "any", lambda w, t, p: ("/v1/nodes", {}),
         shows=lambda s: [n["state"] for n in s.body] == ["ready"]),
    # drain, then undrain at once (the next case), so the node takes work again
    Case("POST", "/v1/nodes/{name}/drain", "sysadmin",
         lambda w, t, p: (f"/v1/nodes/{_node(w)}/drain", {}), 403,
         shows=lambda s: s.body["state"] == "draining"),
    Case("POST", "/v1/nodes/{name}/undrain", "sysadmin",
         lambda w, t, p: (f"/v1/nodes/{_node(w)}/undrain", {}), 403,
         shows=lambda s: s.body["state"] == "ready"),
    Case("GET", "/v1/auth/whoami", "any", lambda w, t, p: ("/v1/auth/whoami", {}),
         shows=lambda s: (s.body["name"], s.body["roles"]) == (
             s.user, {} if s.principal == "outsider" else {"red": s.principal})),
    # -- users, teams, tokens
    Case("POST", "/v1/users", "sysadmin",
         lambda w, t, p: ("/v1/users", {"json": {"name": _new(w, "u"), "team": t}}), 403),
    Case("GET", "/v1/users", "sysadmin", lambda w, t, p: ("/v1/users", {}), 403),
    Case("GET", "/v1/users/{name}", "self", lambda w, t, p: (
        f"/v1/users/{'red-' + p if p != 'outsider' else p}" if t == "red"
        else "/v1/users/blue-developer", {}), 403,
        shows=lambda s: (s.body["name"], s.body["is_admin"]) == (s.user, False)),
    Case("POST", "/v1/users/{name}/disable", "sysadmin",
         lambda w, t, p: (f"/v1/users/{t}-developer/disable", {}), 403),
    Case("POST", "/v1/users/{name}/enable", "sysadmin",
         lambda w, t, p: (f"/v1/users/{t}-developer/enable", {}), 403),
    Case("POST", "/v1/teams", "sysadmin",
         lambda w, t, p: ("/v1/teams", {"json": {"name": _new(w, "team")}}), 403),
    Case("GET", "/v1/teams", "any", lambda w, t, p: ("/v1/teams", {}), lists="teams",
         shows=lambda s: _outsider_or(s, s.listed("teams", "name") == {"red"})),
    Case("GET", "/v1/teams/{name}", "viewer", lambda w, t, p: (f"/v1/teams/{t}", {}),
         shows=lambda s: s.body["name"] == "red" and s.body["members"]["red-admin"] == "admin"),
    Case("PUT", "/v1/teams/{name}/members/{user}", "admin",
         lambda w, t, p: (f"/v1/teams/{t}/members/newcomer", {"json": {"role": "viewer"}}),
         shows=lambda s: s.body["members"]["newcomer"] == "viewer"),
    Case("DELETE", "/v1/teams/{name}/members/{user}", "admin",
         lambda w, t, p: (_newcomer_in(w, t), {}),
         shows=lambda s: s.body["name"] == "red" and "newcomer" not in s.body["members"]),
    Case("PUT", "/v1/teams/{name}/quota", "sysadmin",
         lambda w, t, p: (f"/v1/teams/{t}/quota", {"json": {"cpu": 2}}), 403),
    Case("POST", "/v1/tokens", "self", lambda w, t, p: (
        "/v1/tokens", {"json": {"name": "x"} if t == "red" else
                       {"name": "x", "user": "blue-developer"}}), 403, ok=201,
        shows=lambda s: (s.body["user"], s.body["name"]) == (s.user, "x")
        and s.body["token"].startswith("llmos_")),
    Case("GET", "/v1/tokens", "self", lambda w, t, p: (
        "/v1/tokens", {} if t == "red" else {"params": {"user": "blue-developer"}}), 403,
        lists="tokens", shows=lambda s: "first token" in s.listed("tokens", "name")),
    Case("DELETE", "/v1/tokens/{token_id}", "self", lambda w, t, p: (
        f"/v1/tokens/{_own_token(w, p) if t == 'red' else _r(w, 'blue', 'token')}", {}),
        shows=lambda s: (s.body["id"], s.body["user"]) == (int(s.last), s.user)
        and s.body["revoked_at"] is not None),
    # -- jobs
    Case("POST", "/v1/jobs", "developer",
         lambda w, t, p: ("/v1/jobs", {"json": {"program": "noop", "team": t}}), 403, ok=201,
         shows=lambda s: (s.body["program"], s.body["team"], s.body["owner"]) == (
             "noop", "red", s.user)),
    Case("POST", "/v1/jobs/batch", "developer", lambda w, t, p: (
        "/v1/jobs/batch", {"json": {"jobs": [{"program": "noop", "team": t}]}}), 403, ok=201,
        shows=lambda s: [(j["program"], j["team"], j["owner"]) for j in s.body["jobs"]] == [
            ("noop", "red", s.user)]),
    Case("GET", "/v1/jobs", "any", lambda w, t, p: ("/v1/jobs", {"params": {"limit": 1000}}),
         lists="jobs", shows=lambda s: _outsider_or(s, s.red("job") in s.listed("jobs"))),
    Case("GET", "/v1/jobs/{job_id}", "viewer",
         lambda w, t, p: (f"/v1/jobs/{_r(w, t, 'job')}", {}),
         shows=lambda s: (s.body["id"], s.body["state"]) == (s.red("job"), "SUCCEEDED")),
    Case("POST", "/v1/jobs/{job_id}/cancel", "developer",
         lambda w, t, p: (f"/v1/jobs/{w.fresh(t)}/cancel", {}),
         shows=lambda s: (s.body["id"], s.body["state"]) == (
             int(s.path.split("/")[3]), "CANCELLED")),
    Case("GET", "/v1/jobs/{job_id}/metrics", "viewer",
         lambda w, t, p: (f"/v1/jobs/{_r(w, t, 'job')}/metrics", {}),
         shows=lambda s: s.body == {"metrics": []}),
    Case("GET", "/v1/jobs/{job_id}/logs", "viewer",
         lambda w, t, p: (f"/v1/jobs/{_r(w, t, 'job')}/logs", {}),
         shows=lambda s: f"attempt 1 of job {s.red('job')}" in s.resp.text),
    # -- artifacts and keys
    Case("POST", "/v1/artifacts", "developer", lambda w, t, p: (
        "/v1/artifacts", {"params": {"name": "up.txt", "team": t}, "content": b"x"}), 403,
        ok=201, shows=lambda s: (s.body["name"], s.body["team"], s.body["owner"],
                                 s.body["size"]) == ("up.txt", "red", s.user, 1)),
    Case("GET", "/v1/artifacts", "any",
         lambda w, t, p: ("/v1/artifacts", {"params": {"limit": 1000}}), lists="artifacts",
         shows=lambda s: _outsider_or(s, s.red("artifact") in s.listed("artifacts"))),
    Case("GET", "/v1/artifacts/{artifact_id}", "viewer",
         lambda w, t, p: (f"/v1/artifacts/{_r(w, t, 'artifact')}", {}),
         shows=lambda s: (s.body["id"], s.body["name"]) == (s.red("artifact"), "red.txt")),
    Case("GET", "/v1/artifacts/{artifact_id}/content", "viewer",
         lambda w, t, p: (f"/v1/artifacts/{_r(w, t, 'artifact')}/content", {}),
         shows=lambda s: s.resp.content == b"bytes of red"),
    Case("POST", "/v1/keys/rotate", "sysadmin", lambda w, t, p: ("/v1/keys/rotate", {}), 403),
    # -- datasets
    Case("POST", "/v1/datasets/ingest", "developer", lambda w, t, p: (
        "/v1/datasets/ingest", {"json": {"dataset": _new(w, f"{t}-ingest"), "team": t,
                                         "sources": [_r(w, "inbox", "path")],
                                         "resources": {"cpu": 0.1, "memory_mb": 512}}}), 403,
        ok=201, shows=lambda s: (s.body["team"], s.body["owner"]) == ("red", s.user)
        and s.body["params"]["dataset"] == s.kwargs["json"]["dataset"]),
    Case("GET", "/v1/datasets", "any", lambda w, t, p: ("/v1/datasets", {}), lists="datasets",
         shows=lambda s: _outsider_or(s, "red-data" in s.listed("datasets", "name"))),
    Case("GET", "/v1/datasets/{name}", "viewer",
         lambda w, t, p: (f"/v1/datasets/{t}-data", {}),
         shows=lambda s: (s.body["name"], s.body["team"]) == ("red-data", "red")
         and [v["version"] for v in s.body["versions"]][:2] == [1, 2]),
    # (names are per team: "blue-data" alone would be a new dataset of red's; the
    # qualified name of blue's is refused for want of a role in blue)
    Case("POST", "/v1/datasets/{name}/versions", "developer", lambda w, t, p: (
        f"/v1/datasets/{t}/{t}-data/versions", {"json": {
            "content_hash": "1" * 64, "schema": {}, "stats": {}, "lineage": {}, "shards": []}}),
        403, ok=201, shows=lambda s: (s.body["dataset"], s.body["content_hash"]) == (
            "red-data", "1" * 64) and s.body["version"] > 2),
    Case("GET", "/v1/datasets/{name}/versions/{version}", "viewer",
         lambda w, t, p: (f"/v1/datasets/{t}-data/versions/1", {}),
         shows=lambda s: (s.body["dataset"], s.body["version"]) == ("red-data", 1)),
    Case("GET", "/v1/datasets/{name}/versions/{version}/head", "viewer",
         lambda w, t, p: (f"/v1/datasets/{t}-data/versions/latest/head", {}),
         shows=lambda s: s.body == {"rows": []}),
    Case("GET", "/v1/datasets/{name}/versions/{version}/report", "viewer",
         lambda w, t, p: (f"/v1/datasets/{t}-data/versions/1/report", {}),
         shows=lambda s: s.body == {}),
    Case("GET", "/v1/datasets/{name}/diff", "viewer", lambda w, t, p: (
        f"/v1/datasets/{t}-data/diff", {"params": {"from": 1, "to": 2}}),
        shows=lambda s: (s.body["from"]["version"], s.body["to"]["version"]) == (1, 2)),
    # -- the model registry
    Case("POST", "/v1/registry/models/import", "developer", lambda w, t, p: (
        "/v1/registry/models/import", {"json": {
            "name": _new(w, f"{t}-imported"), "team": t, "source": _r(w, "inbox", "path") +
            "/tiny-bert", "resources": {"cpu": 0.2, "memory_mb": 2048}}}), 403, ok=201,
        shows=lambda s: (s.body["team"], s.body["owner"]) == ("red", s.user)),
    Case("GET", "/v1/registry/models", "any", lambda w, t, p: ("/v1/registry/models", {}),
         lists="models",
         shows=lambda s: _outsider_or(s, "red-model" in s.listed("models", "name"))),
    Case("GET", "/v1/registry/models/{name}", "viewer",
         lambda w, t, p: (f"/v1/registry/models/{t}-model", {}),
         shows=lambda s: (s.body["name"], s.body["team"]) == ("red-model", "red")
         and s.body["versions"][0]["version"] == 1),
    Case("DELETE", "/v1/registry/models/{name}", "maintainer",
         lambda w, t, p: (f"/v1/registry/models/{_model_target(w, t, 'model')}", {}),
         shows=lambda s: (s.body["name"], s.body["team"]) == (s.last, "red")),
    Case("POST", "/v1/registry/models/{name}/versions", "developer", lambda w, t, p: (
        f"/v1/registry/models/{t}/{t}-model/versions", {"json": _version_body(w)}), 403, ok=201,
        shows=lambda s: (s.body["model"], s.body["owner"]) == ("red-model", s.user)
        and s.body["version"] > 2),
    Case("GET", "/v1/registry/models/{name}/versions/{ref}", "viewer",
         lambda w, t, p: (f"/v1/registry/models/{t}-model/versions/latest", {}),
         shows=lambda s: (s.body["model"], s.body["task"]) == ("red-model", "encoder")),
    Case("DELETE", "/v1/registry/models/{name}/versions/{ref}", "maintainer",
         lambda w, t, p: (f"/v1/registry/models/{_model_target(w, t, 'version')}", {}),
         shows=lambda s: (s.body["model"], s.body["version"]) == ("red-model", int(s.last))),
    Case("GET", "/v1/registry/models/{name}/versions/{ref}/card", "viewer",
         lambda w, t, p: (f"/v1/registry/models/{t}-model/versions/1/card", {}),
         shows=lambda s: "# red-model (version 1)" in s.resp.text),
    Case("POST", "/v1/registry/models/{name}/versions/{ref}/metrics", "developer",
         lambda w, t, p: (f"/v1/registry/models/{t}-model/versions/1/metrics",
                          {"json": {"key": "eval", "metrics": {"accuracy": 0.5}}}),
         shows=lambda s: (s.body["model"], s.body["version"]) == ("red-model", 1)
         and s.body["metrics"]["eval"] == {"accuracy": 0.5}),
    Case("PUT", "/v1/registry/models/{name}/aliases/{alias}", "maintainer",
         lambda w, t, p: (f"/v1/registry/models/{t}-model/aliases/staging",
                          {"json": {"version": 1}}),
         shows=lambda s: s.body["name"] == "red-model" and s.body["aliases"]["staging"] == 1),
    Case("DELETE", "/v1/registry/models/{name}/aliases/{alias}", "maintainer",
         lambda w, t, p: (f"/v1/registry/models/{_model_target(w, t, 'alias')}", {}),
         shows=lambda s: s.body["name"] == "red-model" and "prod" not in s.body["aliases"]),
    # -- training and evaluation jobs
    Case("POST", "/v1/train", "developer", lambda w, t, p: ("/v1/train", {"json": {
        "recipe": {"task": "sequence_classification", "text_field": "text",
                   "label_field": "label", "max_steps": 1},
        "model": f"{t}-model", "dataset": f"{t}-labeled", "output": _new(w, f"{t}-trained"),
        "resources": {"cpu": 0.1, "memory_mb": 1024}}}), ok=201,
        shows=lambda s: (s.body["team"], s.body["owner"]) == ("red", s.user)),
    Case("POST", "/v1/evaluate", "developer", lambda w, t, p: ("/v1/evaluate", {"json": {
        "model": f"{t}-cls", "dataset": f"{t}-labeled",
        "resources": {"cpu": 0.1, "memory_mb": 1024}}}), ok=201,
        shows=lambda s: (s.body["team"], s.body["owner"]) == ("red", s.user)),
    # -- compression and comparison jobs (TEAM-cls:1 is registered, :2 imported)
    Case("POST", "/v1/optimize/compress", "developer", lambda w, t, p: (
        "/v1/optimize/compress", {"json": {
            "recipe": {"method": "quantize"}, "model": f"{t}-cls:1",
            "output": _new(w, f"{t}-int8"), "resources": {"cpu": 0.1, "memory_mb": 1024}}}),
        ok=201, shows=lambda s: (s.body["program"], s.body["team"], s.body["owner"]) == (
            "optimize.compress", "red", s.user)),
    Case("POST", "/v1/optimize/compare", "developer", lambda w, t, p: (
        "/v1/optimize/compare", {"json": {
            "models": [f"{t}-cls:1", f"{t}-cls:2"], "dataset": f"{t}-labeled",
            "budget_s": 0.1, "resources": {"cpu": 0.1, "memory_mb": 1024}}}),
        ok=201, shows=lambda s: (
            [(j["program"], j["team"], j["owner"]) for j in s.body["jobs"]]
            == [("optimize.measure", "red", s.user)] * 2
            and s.body["jobs"][1]["depends_on"] == [s.body["jobs"][0]["id"]])),
    # -- serving
    Case("POST", "/v1/deployments", "developer", lambda w, t, p: ("/v1/deployments", {
        "json": {"model": f"{t}-bert", "name": _new(w, f"{t}-dep"), "pool": f"{t}-pool"}}),
        ok=201, shows=lambda s: (s.body["name"], s.body["team"], s.body["model"]) == (
            s.kwargs["json"]["name"], "red", "red-bert")),
    Case("GET", "/v1/deployments", "any", lambda w, t, p: ("/v1/deployments", {}),
         lists="deployments",
         shows=lambda s: _outsider_or(s, "red-chat" in s.listed("deployments", "name"))),
    Case("GET", "/v1/deployments/{name}", "viewer",
         lambda w, t, p: (f"/v1/deployments/{t}-chat", {}),
         shows=lambda s: (s.body["name"], s.body["team"], s.body["model"]) == (
             "red-chat", "red", "red-llama")),
    Case("POST", "/v1/deployments/{name}/scale", "maintainer",
         lambda w, t, p: (f"/v1/deployments/{t}-embed/scale", {"json": {"replicas": 1}}),
         shows=lambda s: (s.body["name"], s.body["replicas"]) == ("red-embed", 1)),
    Case("POST", "/v1/deployments/{name}/canary", "maintainer",
         lambda w, t, p: (f"/v1/deployments/{_canary_deployment(w, t, False)}/canary",
                          {"json": {"version": 2, "weight": 50}}),
         shows=lambda s: (s.body["version"], s.body["canary"]["version"],
                          s.body["canary"]["weight"]) == (1, 2, 50)),
    Case("DELETE", "/v1/deployments/{name}/canary", "maintainer",
         lambda w, t, p: (f"/v1/deployments/{_canary_deployment(w, t, True)}/canary", {}),
         shows=lambda s: (s.body["version"], s.body["canary"]) == (1, None)),
    Case("POST", "/v1/deployments/{name}/canary/complete", "maintainer",
         lambda w, t, p: (f"/v1/deployments/{_canary_deployment(w, t, True)}/canary/complete",
                          {}),
         shows=lambda s: (s.body["version"], s.body["ref"], s.body["canary"]) == (2, "2", None)),
    Case("DELETE", "/v1/deployments/{name}", "maintainer",
         lambda w, t, p: (f"/v1/deployments/{_doomed_deployment(w, t)}", {}),
         shows=lambda s: (s.body["name"], s.body["team"]) == (s.last, "red")),
    Case("PUT", "/v1/serving/workers/{job_id}", "sysadmin", lambda w, t, p: (
        f"/v1/serving/workers/{_r(w, t, 'job')}", {"json": {
            "pool": f"{t}-pool", "url": "http://127.0.0.1:9", "secret": "s" * 20}}), 403),
    Case("POST", "/v1/chat/completions", "viewer", lambda w, t, p: ("/v1/chat/completions", {
        "json": {"model": f"{t}-chat", "max_tokens": 2,
                 "messages": [{"role": "user", "content": "hi"}]}}),
        shows=lambda s: s.body["object"] == "chat.completion" and _version(s, "red-llama")
        and s.body["choices"][0]["message"]["role"] == "assistant"),
    Case("POST", "/v1/completions", "viewer", lambda w, t, p: ("/v1/completions", {
        "json": {"model": f"{t}-chat", "prompt": "hi", "max_tokens": 2}}),
        shows=lambda s: s.body["object"] == "text_completion" and _version(s, "red-llama")
        and len(s.body["choices"]) == 1),
    Case("POST", "/v1/embeddings", "viewer", lambda w, t, p: ("/v1/embeddings", {
        "json": {"model": f"{t}-embed", "input": "hi"}}),
        shows=lambda s: _version(s, "red-bert")
        and [len(d["embedding"]) for d in s.body["data"]] == [16]),
    Case("POST", "/v1/classify", "viewer", lambda w, t, p: ("/v1/classify", {
        "json": {"model": f"{t}-classify", "input": "hi"}}),
        shows=lambda s: _version(s, "red-cls")
        and [set(d["scores"]) for d in s.body["data"]] == [{"no", "yes"}]),
    Case("GET", "/v1/models", "any", lambda w, t, p: ("/v1/models", {}), lists="data",
         shows=lambda s: _outsider_or(s, {"red-chat", "red-embed", "red-classify"} <= s.listed(
             "data"))),
    Case("GET", "/metrics", "any", lambda w, t, p: ("/metrics", {}),
         shows=lambda s: "# HELP llmos_serving_requests" in s.resp.text),
    # -- lineage
    Case("GET", "/v1/lineage/deployments/{name}", "viewer",
         lambda w, t, p: (f"/v1/lineage/deployments/{t}-chat", {}),
         shows=lambda s: (s.body["kind"], s.body["name"], s.body["team"]) == (
             "deployment", "red-chat", "red") and s.body["inputs"][0]["name"] == "red-llama"),
    Case("GET", "/v1/lineage/models/{ref}", "viewer",
         lambda w, t, p: (f"/v1/lineage/models/{t}-model:1", {}),
         shows=lambda s: (s.body["kind"], s.body["name"], s.body["version"]) == (
             "model", "red-model", 1)),
    Case("GET", "/v1/lineage/datasets/{ref}", "viewer",
         lambda w, t, p: (f"/v1/lineage/datasets/{t}-data:1", {}),
         shows=lambda s: (s.body["kind"], s.body["name"], s.body["version"]) == (
             "dataset", "red-data", 1)),
    Case("GET", "/v1/lineage/runs/{run_id}", "viewer",
         lambda w, t, p: (f"/v1/lineage/runs/{_pipe_run(w, t, 'SUCCEEDED')}", {}),
         shows=lambda s: (s.body["kind"], s.body["pipeline"], s.body["team"]) == (
             "run", "red-pipe", "red") and [(x["name"], x["job"]["program"])
                                           for x in s.body["steps"]] == [("a", "noop")]),
    # -- pipelines
    Case("POST", "/v1/pipelines/validate", "viewer", lambda w, t, p: (
        "/v1/pipelines/validate", {"json": {"spec": _one_step(f"{t}-pipe"), "team": t}}), 403,
        shows=lambda s: [(x["name"], x["program"]) for x in s.body["steps"]] == [("a", "noop")]),
    Case("POST", "/v1/pipelines/runs", "developer", lambda w, t, p: (
        "/v1/pipelines/runs", {"json": {"spec": _one_step(f"{t}-pipe"), "team": t}}), 403,
        ok=201, shows=lambda s: (s.body["pipeline"], s.body["team"], s.body["owner"]) == (
            "red-pipe", "red", s.user) and [x["name"] for x in s.body["steps"]] == ["a"]),
    Case("GET", "/v1/pipelines/runs", "any", lambda w, t, p: (
        _once_red_ran(w, "/v1/pipelines/runs"), {"params": {"limit": 1000}}), lists="runs",
         shows=lambda s: _outsider_or(s, _pipe_run(s.world, "red", "SUCCEEDED")
                                      in s.listed("runs"))),
    Case("GET", "/v1/pipelines/runs/{run_id}", "viewer",
         lambda w, t, p: (f"/v1/pipelines/runs/{_pipe_run(w, t, 'SUCCEEDED')}", {}),
         shows=lambda s: (s.body["team"], s.body["state"]) == ("red", "SUCCEEDED")
         and s.body["steps"][0]["state"] in ("SUCCEEDED", "CACHED")),
    Case("POST", "/v1/pipelines/runs/{run_id}/cancel", "developer",
         lambda w, t, p: (f"/v1/pipelines/runs/{_pipe_run(w, t, 'RUNNING')}/cancel", {}),
         shows=lambda s: (s.body["id"], s.body["state"]) == (int(s.path.split("/")[4]),
                                                             "CANCELLED")),
    Case("POST", "/v1/pipelines/runs/{run_id}/resume", "developer",
         lambda w, t, p: (f"/v1/pipelines/runs/{_pipe_run(w, t, 'FAILED')}/resume", {}),
         # a resume keeps the run's owner (its maker), whoever resumes it
         shows=lambda s: (s.body["id"], s.body["owner"]) == (int(s.path.split("/")[4]),
                                                             f"{s.body['team']}-developer")
         and s.body["state"] in ("PENDING", "RUNNING", "FAILED")),
    # -- tuning studies
    Case("POST", "/v1/tune/studies", "developer", lambda w, t, p: ("/v1/tune/studies", {
        "json": {"recipe": _study_recipe(_new(w, f"{t}-study"), "final_only"), "team": t}}),
        403, ok=201, shows=lambda s: (s.body["name"], s.body["team"], s.body["owner"]) == (
            s.kwargs["json"]["recipe"]["name"], "red", s.user)),
    Case("GET", "/v1/tune/studies", "any", lambda w, t, p: (
        f"/v1/tune/studies{_study(w, 'red', 'done') and ''}", {}), lists="studies",
        shows=lambda s: _outsider_or(s, "red-tuned" in s.listed("studies", "name"))),
    Case("GET", "/v1/tune/studies/{name}", "viewer",
         lambda w, t, p: (f"/v1/tune/studies/{_study(w, t, 'done')}", {}),
         shows=lambda s: (s.body["name"], s.body["team"], s.body["state"], s.body["done"])
         == ("red-tuned", "red", "SUCCEEDED", 1) and len(s.body["trials"]) == 1),
    Case("POST", "/v1/tune/studies/{name}/stop", "developer",
         lambda w, t, p: (f"/v1/tune/studies/{_study(w, t, 'running')}/stop", {}),
         shows=lambda s: (s.body["state"], s.body["running"]) == ("STOPPED", 0)),
    Case("POST", "/v1/tune/studies/{name}/resume", "developer",
         lambda w, t, p: (f"/v1/tune/studies/{_study(w, t, 'failed')}/resume", {}),
         shows=lambda s: s.body["team"] == "red" and s.body["state"] in ("RUNNING",
                                                                          "FAILED")),
    Case("POST", "/v1/pipelines", "developer", lambda w, t, p: ("/v1/pipelines", {
        "json": {"spec": _one_step(_new(w, f"{t}-applied")), "team": t}}), 403, ok=201,
        shows=lambda s: (s.body["name"], s.body["team"], s.body["owner"], s.body["triggers"])
        == (s.kwargs["json"]["spec"]["name"], "red", s.user, [])),
    Case("GET", "/v1/pipelines", "any", lambda w, t, p: ("/v1/pipelines", {}),
         lists="pipelines",
         shows=lambda s: _outsider_or(s, "red-pipe" in s.listed("pipelines", "name"))),
    Case("GET", "/v1/pipelines/{name}", "viewer",
         lambda w, t, p: (f"/v1/pipelines/{_pipeline(w, t)}", {}),
        shows=lambda s: (s.body["name"], s.body["team"], s.body["spec"]["steps"]["a"][
            "program"]) == ("red-pipe", "red", "noop")),
    Case("DELETE", "/v1/pipelines/{name}", "developer",
         lambda w, t, p: (f"/v1/pipelines/{_doomed_pipeline(w, t)}", {}),
         shows=lambda s: (s.body["name"], s.body["team"]) == (s.last, "red")),
    # -- monitoring (the team filtering of what these show: tests/monitor/)
    Case("GET", "/v1/monitor/overview", "any", lambda w, t, p: ("/v1/monitor/overview", {}),
         shows=lambda s: len(s.body["nodes"]) == 1 and "pending" in s.body),
    Case("GET", "/v1/monitor/usage", "any", lambda w, t, p: (
        "/v1/monitor/usage", {"params": {"kind": "node", "subject": _node(w)}}),
        shows=lambda s: (s.body["kind"], s.body["subject"]) == ("node", s.kwargs["params"][
            "subject"])),
    Case("GET", "/v1/events", "any", lambda w, t, p: ("/v1/events", {}),
         shows=lambda s: isinstance(s.body["events"], list)),
    Case("GET", "/v1/alerts", "any", lambda w, t, p: ("/v1/alerts", {}),
         shows=lambda s: isinstance(s.body["rules"], list)),
    Case("PUT", "/v1/alerts/rules", "sysadmin",
         lambda w, t, p: ("/v1/alerts/rules", {"content": "rules: []\n"}), 403,
         shows=lambda s: s.body["rules"] == []),
    # -- audit
    Case("GET", "/v1/audit", "sysadmin", lambda w, t, p: ("/v1/audit", {}), 403),
    Case("GET", "/v1/audit/verify", "sysadmin", lambda w, t, p: ("/v1/audit/verify", {}), 403),
]


def served_models(live: LiveDaemon, makers: dict[str, Client], inbox: Path) -> None:
    """Each team serves a tiny chat model, encoder and classifier (for the OpenAI routes)."""
    jobs = [(c, c.models.import_(f"{team}-{kind}", inbox / f"tiny-{kind}", cpu=0.5,
                                 memory_mb=2048))
            for team, c in makers.items() for kind in ("llama", "bert", "cls")]
    for c, job in jobs:
        assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED"
    for team, c in makers.items():
        for kind, name in (("llama", "chat"), ("bert", "embed"), ("cls", "classify")):
            c.deployments.create(f"{team}-{kind}", name=f"{team}-{name}", pool=f"{team}-pool",
                                 cpu=0.1, memory_mb=1536)
    for team in makers:
        wait_for(lambda: live.client.deployments.get(f"{team}-chat")["ready_workers"],
                 timeout=240, what=f"{team}'s serving worker")


def labeled_dataset(live: LiveDaemon, c: Client, name: str) -> None:
    """A dataset version with one labeled shard in each of train and test."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = []
    for split in ("train", "test"):
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ["1", "2"], "text": ["a b", "c d"],
                                 "label": ["x", "y"]}), buf)
        art = c.artifacts.put(buf.getvalue(), name=f"{split}-00000.parquet")
        shards.append({"artifact_id": art["id"], "split": split, "rows": 2, "text_bytes": 6,
                       "sha256": art["sha256"], "name": f"{split}-00000.parquet"})
    with live.http(c.token) as http:
        assert http.post(f"/v1/datasets/{name}/versions", json={
            "content_hash": "2" * 64, "schema": {"text": "string", "label": "string"},
            "stats": {}, "lineage": {}, "shards": shards}).status_code == 201


def register(live: LiveDaemon, c: Client, name: str, task: str = "encoder") -> int:
    """A version of model ``name`` made of one small file (what an import job registers)."""
    data = b'{"model_type": "bert"}'
    art = c.artifacts.put(data, name="config.json")
    arch = "BertModel" if task == "encoder" else "BertForSequenceClassification"
    info = {"architecture": arch, "model_type": "bert", "task": task,
            "parameters": 0, "dtypes": [], "size_bytes": len(data), "weight_files": [],
            "tokenizer_files": [], "vocab_size": None, "chat_template": False,
            "context_length": None, "files": [{"path": "config.json", "size": len(data),
                                               "sha256": art["sha256"]}]}
    with live.http(c.token) as http:
        resp = http.post(f"/v1/registry/models/{name}/versions", json={
            "files": [{"path": "config.json", "artifact_id": art["id"]}], "info": info})
    assert resp.status_code == 201, resp.text
    return resp.json()["version"]


def _version_body(w: World) -> dict:
    """A registration whose file is an artifact of red (a blue name is refused first)."""
    data = b'{"model_type": "bert", "n": %d}' % next(w.counter)
    art = w.makers["red"].artifacts.put(data, name="config.json")
    return {"files": [{"path": "config.json", "artifact_id": art["id"]}], "info": {
        "architecture": "BertModel", "model_type": "bert", "task": "encoder", "parameters": 0,
        "dtypes": [], "size_bytes": len(data), "weight_files": [], "tokenizer_files": [],
        "vocab_size": None, "chat_template": False, "context_length": None,
        "files": [{"path": "config.json", "size": len(data), "sha256": art["sha256"]}]}}


def _model_target(w: World, team: str, what: str) -> str:
    """A red model (or version, or alias) made for this call, or blue's existing one."""
    if team == "blue":
        return {"model": "blue-model", "version": "blue-model/versions/1",
                "alias": "blue-model/aliases/prod"}[what]
    if what == "model":
        name = _new(w, "red-doomed")
        register(w.live, w.makers["red"], name)
        return name
    if what == "version":
        return f"red-model/versions/{register(w.live, w.makers['red'], 'red-model')}"
    w.live.client.models.set_alias("red-model", "prod", 1)
    return "red-model/aliases/prod"


def _doomed_deployment(w: World, team: str) -> str:
    """A red deployment made for this call to remove (blue's chat otherwise)."""
    if team == "blue":
        return "blue-chat"
    name = _new(w, "red-doomed-dep")
    w.makers["red"].deployments.create("red-bert", name=name, pool="red-pool")
    return name


def _canary_deployment(w: World, team: str, canary: bool) -> str:
    """A red deployment of red-canary:1 made for this call (with version 2 as its canary
    when ``canary``), or blue's embedder."""
    if team == "blue":
        return "blue-embed"
    red = w.makers["red"]
    if "canary" not in w.res["red"]:  # two versions of one model: copies of red-bert:1
        v = red.models.version("red-bert", 1)
        files = [{"path": f["path"], "artifact_id": f["artifact_id"]} for f in v["files"]]
        with w.live.http(red.token) as http:
            for _ in range(2):
                assert http.post("/v1/registry/models/red-canary/versions", json={
                    "files": files, "info": v["info"]}).status_code == 201
        w.res["red"]["canary"] = "red-canary"
    name = _new(w, "red-canary-dep")
    red.deployments.create("red-canary:1", name=name, pool="red-pool")
    if canary:
        w.live.client.deployments.set_canary(name, 2, 50)
    return name


def _newcomer_in(w: World, team: str) -> str:
    """The path removing "newcomer" from ``team``, having made them a member of red."""
    if team == "red":
        w.live.client.teams.set_member("red", "newcomer", "viewer")
    return f"/v1/teams/{team}/members/newcomer"


def _own_token(w: World, principal: str) -> int:
    with Client(w.live.url, token=w.tokens[principal]) as c:
        return c.tokens.create("to-revoke")["id"]


def _one_step(name: str, prog: str = "noop", **params) -> dict:
    """A pipeline of one small step."""
    return {"name": name, "steps": {"a": {"program": prog, "params": params,
                                          "resources": {"cpu": 0.05, "memory_mb": 256}}}}


def _pipe_run(w: World, team: str, state: str) -> int:
    """A pipeline run of ``team`` in ``state``: SUCCEEDED (``TEAM-pipe``'s, made once);
    RUNNING or FAILED (red: a new one for each call; blue: one, which red never changes)."""
    key = f"pipeline-{state.lower()}"
    if key in w.res[team] and (team == "blue" or state == "SUCCEEDED"):
        return w.res[team][key]
    c = w.makers[team]
    spec = {"SUCCEEDED": _one_step(f"{team}-pipe"),
            "RUNNING": _one_step(f"{team}-going", program("sleep_long"), seconds=600),
            "FAILED": _one_step(f"{team}-failing", program("fail"))}[state]
    run = c.pipelines.run(spec)
    if state != "RUNNING":
        ended = c.pipelines.wait(run["id"], timeout=120)
        assert ended["state"] == state, ended["steps"]
    w.res[team][key] = run["id"]
    return run["id"]


def _once_red_ran(w: World, path: str) -> str:
    """``path``, once red has a pipeline run that succeeded (for a list to show)."""
    _pipe_run(w, "red", "SUCCEEDED")
    return path


def _pipeline(w: World, team: str) -> str:
    """``TEAM-pipe``, which has a run that succeeded."""
    _pipe_run(w, team, "SUCCEEDED")
    return f"{team}-pipe"


def _doomed_pipeline(w: World, team: str) -> str:
    """A red pipeline made for this call to delete (blue's own otherwise)."""
    if team == "blue":
        return _pipeline(w, "blue")
    name = _new(w, "red-doomed-pipe")
    w.makers["red"].pipelines.apply(_one_step(name))
    return name


def _study_recipe(name: str, prog: str, **params) -> dict:
    """A one-trial tuning study of a test program of tests/optimize/tune_programs.py."""
    return {"name": name, "program": f"{TUNE_PROGRAMS}:{prog}", "params": params,
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"metric": "score" if prog == "final_only" else "loss"},
            "trials": 1, "pruner": "none", "resources": {"cpu": 0.05, "memory_mb": 256}}


def _study(w: World, team: str, state: str) -> str:
    """A study of ``team``: done (``TEAM-tuned``, made once), running (red: a new one for
    each call; blue: one, which red never changes) or failed (likewise)."""
    key = f"study-{state}"
    if key in w.res[team] and (team == "blue" or state == "done"):
        return w.res[team][key]
    c = w.makers[team]
    name = f"{team}-tuned" if state == "done" else _new(w, f"{team}-{state}")
    recipe = {"done": _study_recipe(name, "final_only"),
              "running": _study_recipe(name, "curve", y=0.0, steps=10_000, delay=1.0),
              "failed": _study_recipe(name, "broken")}[state]
    c.tune.start(recipe)
    want = {"done": "SUCCEEDED", "failed": "FAILED", "running": "RUNNING"}[state]
    wait_for(lambda: c.tune.get(name)["state"] == want and (
        state != "running" or c.tune.get(name)["running"] == 1), timeout=120,
        what=f"study {name} {want}")
    w.res[team][key] = name
    return name


def _allowed(need: str, principal: str, team: str) -> bool:
    if need == "sysadmin":
        return False
    if need == "any":  # the same call whatever the team: it only shows what one may see
        return True
    if need == "self":
        return team == "red"
    return team == "red" and RANK[principal] >= RANK[need]


def _expected_refusal(case: Case, principal: str, team: str) -> int:
    if case.need == "sysadmin":
        return 403
    if team == "blue":
        return case.other_status
    if principal == "outsider":  # red is not its team: red's things do not exist for it
        return 403 if case.other_status == 403 else 404
    return 403


def test_the_table_covers_every_route(world):
    with world.live.http() as http:
        schema = http.get("/openapi.json").json()
    routes = {(m.upper(), path) for path, ops in schema["paths"].items() for m in ops
              if path != "/healthz"}
    table = {(c.method, c.route) for c in CASES}
    assert routes - table == set(), "routes with no access rule in this test"
    assert table - routes == set(), "rules for routes that no longer exist"
    assert [c.route for c in CASES if c.need != "sysadmin" and c.shows is None] == [], \
        "routes some principal may call with nothing said of what they answer"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.route}")
def test_every_route_for_every_role_in_own_and_other_team(world, case):
    for principal, team in itertools.product(PRINCIPALS, ("red", "blue")):
        path, kwargs = case.call(world, team, principal)
        with world.live.http(world.tokens[principal]) as http:
            resp = http.request(case.method, path, **kwargs)
        who = f"{principal} on {team}: {case.method} {path}"
        assert resp.status_code < 500, f"{who} -> {resp.status_code} {resp.text}"
        if _allowed(case.need, principal, team):
            assert resp.status_code == case.ok, f"{who} -> {resp.status_code} {resp.text}"
            assert case.shows(Seen(world, principal, path, kwargs, resp)), \
                f"{who} -> {resp.text[:2000]}"
            if case.lists:
                _only_visible(world, case.lists, resp.json(), principal)
        else:
            expected = _expected_refusal(case, principal, team)
            assert resp.status_code == expected, f"{who} -> {resp.status_code} {resp.text}"
            error = resp.json()["error"]
            assert error["message"], who
            if path not in OPENAI_PATHS:  # OpenAI's own format names a code, not the status
                assert error["code"] == expected, who


def _only_visible(world: World, key: str, body: dict, principal: str) -> None:
    items = body[key]
    blue = world.res["blue"]
    if key == "jobs":
        assert all(j["team"] == "red" for j in items) and blue["job"] not in {
            j["id"] for j in items}
    elif key == "artifacts":
        assert all(a["team"] == "red" for a in items)
    elif key in ("datasets", "models", "deployments", "pipelines", "runs", "studies"):
        assert all(d["team"] == "red" for d in items)
    elif key == "data":
        assert all(m["owned_by"] == "red" for m in items)
    elif key == "teams":
        assert [t["name"] for t in items] == ([] if principal == "outsider" else ["red"])
    elif key == "tokens":
        assert {t["user"] for t in items} <= {f"red-{principal}", principal}
    if principal == "outsider" and key != "tokens":
        assert items == []


def test_a_developer_cancels_only_their_own_jobs_and_a_maintainer_anyones(world):
    second = world.live.client.users.create("red-developer-2", team="red", role="developer")
    job = world.fresh("red")  # red-developer's
    with world.live.http(second["token"]) as http:
        resp = http.post(f"/v1/jobs/{job}/cancel")
        assert resp.status_code == 403
        assert "to manage job" in resp.json()["error"]["message"]
    with world.live.http(world.tokens["maintainer"]) as http:
        assert http.post(f"/v1/jobs/{job}/cancel").json()["state"] == "CANCELLED"


def test_nothing_of_blue_changed_after_the_whole_table(world):
    with world.live.http() as http:
        assert http.get(f"/v1/jobs/{world.res['blue']['anchor']}").json()["state"] == "RUNNING"
        versions = http.get("/v1/datasets/blue-data").json()["versions"]
        assert [v["version"] for v in versions] == [1, 2]
        tokens = http.get("/v1/tokens", params={"user": "blue-developer"}).json()["tokens"]
        assert world.res["blue"]["token"] in {t["id"] for t in tokens}
        assert http.get("/v1/teams/blue").json()["members"] == {"blue-developer": "developer"}
        model = http.get("/v1/registry/models/blue-model").json()
        assert [v["version"] for v in model["versions"]] == [1, 2] and model["aliases"] == {}
        assert http.get("/v1/registry/models/blue-model/versions/1").json()["metrics"] == {}
        deployments = http.get("/v1/deployments").json()["deployments"]
        assert {d["name"] for d in deployments if d["team"] == "blue"} == {
            "blue-chat", "blue-embed", "blue-classify"}
