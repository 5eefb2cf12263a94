"""Canary rollouts and the exact model version of every answer.

The split and the counts (``serve.canary``) are checked without a daemon: a smooth weighted
round robin, counts per version that start afresh when the canary changes. A serving
worker keeps both versions of a deployment with a canary loaded. The live tests run one
daemon with tiny models: a deployment of ``tl:1`` with ``tl:2`` as canary at 50 answers one
request from each in turn, each answer naming its version in the ``x-llmos-model-version``
header and the body's ``model``; a canary whose weights are corrupt fails to load in the
worker and its 503s are counted as its errors; a rollback sends everything to the stable
version; completing makes the canary the version (an alias the deployment followed does not
take it back); bad requests and other teams are refused with a JSON error.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import tiny_models
from fastapi.testclient import TestClient
from live import LiveDaemon, register_copy, wait_for
from offline_models import minilm_dir

from llmos.serve.canary import Canaries, Route, Tally, percentile
from llmos.serve.envelope import ModelRef
from llmos.serve.residency import Residency
from llmos.serve.worker import SECRET_HEADER, create_worker_app

HEADER = "x-llmos-model-version"

# -- the split and the counts, without a daemon ---------------------------------------------


def numbers(vid: int) -> int:
    return {10: 1, 20: 2, 30: 3}[vid]


def sides(c: Canaries, n: int, weight: int, canary: int | None = 20) -> list[str]:
    return [c.route(1, 10, canary, weight, numbers).side for _ in range(n)]


def test_at_50_the_versions_take_turns_and_at_10_one_in_ten():
    assert sides(Canaries(), 6, 50) == ["stable", "canary"] * 3
    ten = sides(Canaries(), 100, 10)
    assert ten.count("canary") == 10
    assert all(ten[i:i + 10].count("canary") == 1 for i in range(0, 100, 10))  # spread out
    for weight in (1, 25, 33, 75, 99):
        assert sides(Canaries(), 100, weight).count("canary") == weight
    assert set(sides(Canaries(), 20, 0, canary=None)) == {"stable"}
    r = Canaries().route(1, 10, 20, 50, numbers)
    assert (r.deployment_id, r.side, r.version_id) == (1, "stable", 10)


def test_counts_per_version_and_a_new_canary_counts_afresh():
    c = Canaries()
    routes = [c.route(7, 10, 20, 50, numbers) for _ in range(4)]
    for route, status, took in zip(routes, (200, 503, 200, 404), (0.1, 0.2, 0.3, 0.4)):
        c.record(route, status, took)
    stats = c.stats(7, 10, 20, 50, numbers)
    assert stats["stable"] == {"version": 1, "requests": 2, "errors": 0, "error_rate": 0.0,
                               "p50_s": 0.1, "p95_s": 0.3}
    # the caller's 404 is not the canary's fault; its 503 is
    assert stats["canary"] == {"version": 2, "requests": 2, "errors": 1, "error_rate": 0.5,
                               "p50_s": 0.2, "p95_s": 0.4}
    # another canary version (or weight): new counts, and an answer that began before the
    # change is left out
    late = c.route(7, 10, 20, 50, numbers)
    assert c.stats(7, 10, 30, 50, numbers)["canary"]["version"] == 3
    c.record(late, 200, 0.5)
    fresh = c.stats(7, 10, 30, 50, numbers)
    assert (fresh["stable"]["requests"], fresh["canary"]["requests"]) == (0, 0)
    assert fresh["canary"]["p50_s"] is None
    # set again (the service's reset): counted afresh, the turns start over
    c.record(c.route(7, 10, 30, 50, numbers), 200, 0.1)
    c.reset(7)
    assert c.stats(7, 10, 30, 50, numbers)["stable"]["requests"] == 0
    assert c.route(7, 10, 30, 50, numbers).side == "stable"
    # no canary: the stable version alone, the canary None
    assert c.stats(8, 10, None, 0, numbers)["canary"] is None


def test_tallies_and_percentiles():
    t = Tally(version=4)
    for s in range(1, 21):
        t.add(200, s / 10)
    t.add(502, None)  # no answer from the worker: an error, with no latency
    out = t.summary()
    assert (out["requests"], out["errors"], out["p50_s"], out["p95_s"]) == (21, 1, 1.0, 1.9)
    assert out["error_rate"] == pytest.approx(1 / 21)
    assert percentile([], 0.5) is None and percentile([3.0], 0.95) == 3.0
    assert Route(1, "canary", 20, 1).version_id == 20


# -- a worker keeps both versions of a canary loaded -------------------------------------------

SECRET = "s" * 32


class Engine:
    def memory_bytes(self) -> int:
        return 1 << 20

    def close(self) -> None:
        pass


def ref(version_id: int, current: list[int]) -> ModelRef:
    return ModelRef(name="tiny", model="tl", version_id=version_id, version=version_id,
                    task="causal_lm", files=[], engine="torch", max_batch=4, max_queue=8,
                    size_bytes=1 << 20, priority_rank=1,
                    current=[f"{v}:torch:4:8" for v in current])


def test_a_worker_keeps_both_versions_of_a_canary_and_retires_the_one_left_out():
    app = create_worker_app(Residency(64 << 20, lambda spec: Engine()), SECRET)
    headers = {SECRET_HEADER: SECRET, "content-type": "application/json"}
    with TestClient(app) as worker:
        def resident():
            stats = worker.get("/stats", headers=headers).json()
            return sorted((m["version"], m["superseded"]) for m in stats["resident"])

        for r in (ref(1, [1, 2]), ref(2, [1, 2]), ref(1, [1, 2]), ref(2, [1, 2])):
            assert worker.post("/load", content=r.model_dump_json(),
                               headers=headers).status_code == 202
        assert wait_for(lambda: resident() == [(1, False), (2, False)], timeout=10,
                        what="both versions resident")
        assert r.served_as == "tl:2"
        # rolled back: a request for version 1 alone retires version 2
        worker.post("/load", content=ref(1, [1]).model_dump_json(), headers=headers)
        wait_for(lambda: resident() == [(1, False)], timeout=10, what="the canary to unload")


# -- live -------------------------------------------------------------------------------------

POOL = {"pool": "canaries", "cpu": 0.5, "memory_mb": 3072}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A daemon with, in team red: tl:1 and tl:2 (two tiny Llamas), tl:3 (tl:2 with corrupt
    weights), tl:4 (an encoder: the wrong task), other:1, and tb:1 (a tiny BERT)."""
    root = tmp_path_factory.mktemp("canary")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home", cpus=2).start()
    tok = tiny_models.smollm2_tokenizer(root / "tok")
    admin = live.client
    admin.teams.create("red")
    ann = live.user("ann", team="red", role="maintainer")
    first = tiny_models.llama(root / "a", tok, hidden=64)
    imports = [("tl", first), ("other", first), ("tb", tiny_models.bert(
        root / "bert", minilm_dir(), hidden=32))]
    for name, folder in imports:  # one after the other: tl's versions in order
        job = admin.models.import_(name, folder, team="red", cpu=0.5, memory_mb=2048)
        assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED"
    job = admin.models.import_("tl", tiny_models.llama(root / "b", tok, hidden=64, seed=1),
                               team="red", cpu=0.5, memory_mb=2048)
    assert live.wait_job(job["id"], timeout=300)["state"] == "SUCCEEDED"
    assert register_copy(live, ann, "tl", "tl", 2, corrupt="model.safetensors") == 3
    assert register_copy(live, ann, "tb", "tl", 1) == 4
    live.ann = ann
    yield live
    live.stop()


def deploy(live: LiveDaemon, model: str, name: str) -> dict:
    d = live.ann.deployments.create(model, name=name, **POOL)
    wait_for(lambda: live.ann.deployments.get(name)["ready_workers"] >= 1, timeout=240,
             what=f"a worker of {name}")
    return d


def ask(live: LiveDaemon, name: str, route: str = "chat") -> httpx.Response:
    body = {"chat": {"messages": [{"role": "user", "content": "Tell me a story."}],
                     "max_tokens": 3, "temperature": 0},
            "completions": {"prompt": "Once upon a time", "max_tokens": 3},
            "embeddings": {"input": ["a cat", "a dog"]}}[route]
    path = {"chat": "/v1/chat/completions"}.get(route, f"/v1/{route}")
    with live.http(live.ann.token) as http:
        return http.post(path, json={"model": name, **body}, timeout=120)


def llmos(live: LiveDaemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args],
                          env=live.cli_env(live.ann.token), capture_output=True, text=True,
                          timeout=120)


def version_of(r: httpx.Response) -> str:
    """The version an answer names in its header, checked against its body."""
    assert r.status_code == 200, r.text
    assert r.json()["model"] == r.headers[HEADER], r.text
    return r.headers[HEADER]


def test_a_canary_at_50_answers_every_other_request_naming_its_version(served):
    deploy(served, "tl:1", "split")
    assert version_of(ask(served, "split")) == "tl:1"
    d = served.ann.deployments.set_canary("split", 2, 50)
    assert (d["version"], d["canary"]["version"], d["canary"]["weight"]) == (1, 2, 50)
    assert d["canary"]["stats"]["stable"]["requests"] == 0  # counted from now
    seen = [version_of(ask(served, "split", route))
            for route in ("chat", "chat", "completions", "completions")]
    with httpx.Client(base_url=served.url, timeout=120,
                      headers={"Authorization": f"Bearer {served.ann.token}"}) as http:
        with http.stream("POST", "/v1/chat/completions", json={
                "model": "split", "stream": True, "max_tokens": 3,
                "messages": [{"role": "user", "content": "Hi"}]}) as r:
            assert r.status_code == 200
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: {")]
        seen.append(r.headers[HEADER])
        assert {c["model"] for c in chunks} == {r.headers[HEADER]}
    assert seen == ["tl:1", "tl:2", "tl:1", "tl:2", "tl:1"]
    stats = served.ann.deployments.get("split")["canary"]["stats"]
    assert (stats["stable"]["version"], stats["stable"]["requests"]) == (1, 3)
    assert (stats["canary"]["version"], stats["canary"]["requests"]) == (2, 2)
    assert stats["stable"]["errors"] == stats["canary"]["errors"] == 0
    assert stats["canary"]["p50_s"] > 0 and stats["canary"]["p95_s"] >= stats["canary"]["p50_s"]
    # the two versions stay loaded side by side in the worker: none is unloaded in between
    worker = served.ann.deployments.get("split")["workers"][0]
    assert not [e for e in worker["events"] if e["event"] == "unload"]
    shown = llmos(served, "deployments", "canary", "split")
    assert shown.returncode == 0, shown.stderr
    assert "canary tl:2 takes 50% of requests" in shown.stdout
    assert "stable tl:1: 3 request(s), 0 error(s)" in shown.stdout
    assert "canary tl:2: 2 request(s), 0 error(s)" in shown.stdout


def test_encoders_name_their_version_too(served):
    deploy(served, "tb", "vectors")
    r = ask(served, "vectors", "embeddings")
    assert version_of(r) == "tb:1" and len(r.json()["data"]) == 2


def test_a_broken_canary_counts_its_errors_and_a_rollback_sends_all_to_stable(served):
    deploy(served, "tl:1", "fragile")
    served.ann.deployments.set_canary("fragile", 3, 50)
    answers = [ask(served, "fragile") for _ in range(4)]
    assert [r.headers[HEADER] for r in answers] == ["tl:1", "tl:3"] * 2
    assert [r.status_code for r in answers] == [200, 503] * 2
    assert "cannot load" in answers[1].json()["error"]["message"]  # the worker tried, really
    stats = served.ann.deployments.get("fragile")["canary"]["stats"]
    assert (stats["canary"]["requests"], stats["canary"]["errors"]) == (2, 2)
    assert stats["canary"]["error_rate"] == 1.0 and stats["stable"]["error_rate"] == 0.0
    with served.http(served.ann.token) as http:  # tl:3 cannot be deleted while it is a canary
        r = http.delete("/v1/registry/models/tl/versions/3")
    assert r.status_code == 409 and "canary of deployment(s) fragile" in r.json()[
        "error"]["message"]
    rolled = llmos(served, "deployments", "canary", "fragile", "--rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert "no canary; every request goes to tl:1" in rolled.stdout
    d = served.ann.deployments.get("fragile")
    assert d["canary"] is None and d["version"] == 1
    assert [version_of(ask(served, "fragile")) for _ in range(3)] == ["tl:1"] * 3
    assert served.ann.deployments.clear_canary("fragile")["canary"] is None  # no-op


def test_completing_makes_the_canary_the_version_and_an_alias_does_not_undo_it(served):
    admin = served.client
    admin.models.set_alias("red/tl", "prod", 1)
    admin.models.set_alias("red/tl", "witness", 1)
    deploy(served, "tl@prod", "promoted")
    served.ann.deployments.create("tl@witness", name="witness", **POOL)
    served.ann.deployments.set_canary("promoted", 2, 10)
    d = served.ann.deployments.complete_canary("promoted")
    assert (d["version"], d["ref"], d["canary"]) == (2, "2", None)
    assert [version_of(ask(served, "promoted")) for _ in range(3)] == ["tl:2"] * 3
    # two passes of the controller's alias following (the witness moves each time); the
    # completed deployment stays on its new version, pinned by number
    for target in (2, 1):
        admin.models.set_alias("red/tl", "witness", target)
        wait_for(lambda: served.ann.deployments.get("witness")["version"] == target,
                 timeout=30, what=f"the witness to follow its alias to {target}")
    assert served.ann.deployments.get("promoted")["version"] == 2
    with served.http(served.ann.token) as http:
        r = http.post("/v1/deployments/promoted/canary/complete")
    assert r.status_code == 409 and "no canary" in r.json()["error"]["message"]


def test_bad_canaries_and_other_teams_get_clear_errors(served):
    deploy(served, "tl:1", "guarded")
    with served.http(served.ann.token) as http:
        def canary(body: dict, name: str = "guarded") -> httpx.Response:
            return http.post(f"/v1/deployments/{name}/canary", json=body)

        for body, status, words in (
                ({"version": 2, "weight": 0}, 422, "weight"),
                ({"version": 2, "weight": 100}, 422, "weight"),
                ({"version": 2}, 422, "weight"),
                ({"version": "two", "weight": 5}, 422, "version"),
                ({"version": 1, "weight": 5}, 422, "already serves tl:1"),
                ({"version": 99, "weight": 5}, 404, "no version 99"),
                ({"version": 4, "weight": 5}, 422, "encoder"),
                ({"version": 1, "weight": 5, "model": "other"}, 422, "not of other"),
                ({"version": 2, "weight": 5, "model": "other:2"}, 422, "not of other")):
            r = canary(body)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)
        assert canary({"version": 2, "weight": 5}, name="nowhere").status_code == 404
        assert http.delete("/v1/deployments/nowhere/canary").status_code == 404
    for args, words in ((["--version", "2"], "needs both --version and --weight"),
                        (["--rollback", "--complete"], "or --rollback, or --complete"),
                        (["--version", "2", "--weight", "100"], "--weight"),
                        (["--version", "1", "--weight", "5"], "already serves tl:1")):
        r = llmos(served, "deployments", "canary", "guarded", *args)
        assert r.returncode != 0 and words in r.stdout + r.stderr, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    assert served.ann.deployments.get("guarded")["canary"] is None  # nothing was set
    bob = served.user("bob", team="blue", role="maintainer")
    viewer = served.user("vic", team="red", role="viewer")
    with served.http(bob.token) as http:  # another team's deployment does not exist for bob
        r = http.post("/v1/deployments/red/guarded/canary", json={"version": 2, "weight": 5})
        assert r.status_code == 404 and r.json()["error"]["message"]
        assert http.delete("/v1/deployments/red/guarded/canary").status_code == 404
    with served.http(viewer.token) as http:  # a viewer may look, not roll out
        r = http.post("/v1/deployments/guarded/canary", json={"version": 2, "weight": 5})
        assert r.status_code == 403 and r.json()["error"]["message"]
    assert served.ann.deployments.get("guarded")["canary"] is None
