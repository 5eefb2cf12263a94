"""The serving worker's HTTP face without a daemon: only the daemon (its secret) may call
it, it reads the gateway's typed envelope (and refuses anything else with a 400), and a
preload request loads a model before any request needs it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from live import wait_for

from llmos.serve.envelope import ChatInput, Envelope, ModelRef
from llmos.serve.residency import Residency
from llmos.serve.worker import SECRET_HEADER, create_worker_app

SECRET = "s" * 32
REF = ModelRef(name="tiny", model="tl", version_id=7, version=2, task="causal_lm",
               files=[], engine="torch", max_batch=4, max_queue=8, size_bytes=1 << 20,
               priority_rank=1)


class Engine:
    def memory_bytes(self) -> int:
        return 1 << 20

    def close(self) -> None:
        pass


@pytest.fixture
def worker():
    app = create_worker_app(Residency(64 << 20, lambda spec: Engine()), SECRET)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {SECRET_HEADER: "t" * 32}])
def test_calls_without_the_secret_are_refused(worker, headers):
    for method, path in (("POST", "/generate/chat"), ("POST", "/encode/embed"),
                         ("POST", "/load"), ("GET", "/stats")):
        resp = worker.request(method, path, json={}, headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["message"] == "not the daemon"


def test_anything_but_an_envelope_is_a_400(worker):
    resp = worker.post("/generate/chat", json={"deployment": {"name": "tiny"}},
                       headers={SECRET_HEADER: SECRET})
    assert resp.status_code == 400 and resp.json()["error"]["message"].startswith(
        "not a valid Envelope: Field required")


def test_the_envelope_round_trips_and_a_preload_loads_the_model(worker):
    env = Envelope(request_id="r1", priority=1, tenant="ann", deployment=REF,
                   request=ChatInput(messages=[{"role": "user", "content": "hi"}]))
    assert Envelope.model_validate_json(env.model_dump_json()) == env
    assert REF.key == "7:torch:4:8"
    resp = worker.post("/load", content=REF.model_dump_json(),
                       headers={SECRET_HEADER: SECRET, "content-type": "application/json"})
    assert resp.status_code == 202

    def loaded():
        stats = worker.get("/stats", headers={SECRET_HEADER: SECRET}).json()
        return stats["resident"] and stats
    stats = wait_for(loaded, timeout=10, what="the preload")
    assert [(m["deployment"], m["version"], m["key"]) for m in stats["resident"]] == [
        ("tiny", 2, "7:torch:4:8")]
    assert stats["events"][0]["reason"] == "preloaded" and stats["loading"] == []
