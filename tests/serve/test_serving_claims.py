"""What the README claims of serving, each shown on a live daemon with tiny models: `llmos
deploy` names the route that calls the model, says why a worker waits and refuses what
could never start; workers preload their models; a crashed worker is replaced; two
replicas serve; redeploying a name updates it hot; an idle model leaves after its
keep-alive; a worker's port refuses calls without its secret; and no prompt is ever logged
(nor one line per request)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid

import httpx
import pytest
import tiny_models
from live import LiveDaemon, wait_for
from offline_models import minilm_dir
from test_serving_live import deploy, import_all, oai

KEEP_ALIVE_S = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A daemon with a short keep-alive and tiny models: two Llamas and two BERTs."""
    root = tmp_path_factory.mktemp("claims")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home", cpus=2,
                      env={"LLMOS_SERVE_KEEP_ALIVE_S": str(KEEP_ALIVE_S)}).start()
    tok = tiny_models.smollm2_tokenizer(root / "tok")
    folders = {"tl": tiny_models.llama(root / "llama", tok),
               "tl-b": tiny_models.llama(root / "llama-b", tok, seed=1),
               "tb": tiny_models.bert(root / "bert", minilm_dir()),
               "tb-cls": tiny_models.bert(root / "cls", minilm_dir(), head="sequence",
                                          labels=["no", "yes"])}
    import_all(live, folders, memory_mb=2048)
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def one_test_at_a_time(served):
    """Each test's deployments are removed after it (their workers free the 2-cpu node)."""
    yield
    for d in served.client.deployments.list():
        served.client.deployments.delete(d["name"])


def llmos(live: LiveDaemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], env=live.cli_env(),
                          capture_output=True, text=True, timeout=120)


def ready(live: LiveDaemon, name: str, workers: int = 1) -> dict:
    return wait_for(lambda: (d := live.client.deployments.get(name))["ready_workers"] >= workers
                    and d, timeout=240, interval=0.1, what=f"{workers} ready worker(s) of {name}")


def resident(live: LiveDaemon, name: str, worker: dict) -> list[dict]:
    return [m for m in worker["resident"] if m["deployment"] == name]


def chat(live: LiveDaemon, name: str, text: str = "Hello!", **kw) -> str:
    reply = oai(live).chat.completions.create(
        model=name, messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0,
        **kw)
    return reply if kw.get("stream") else reply.choices[0].message.content


def test_deploy_names_the_route_preloads_and_says_why_a_worker_waits(served):
    made = llmos(served, "deploy", "tb", "--name", "emb", "--cpu", "0.25", "--memory", "1024")
    assert made.returncode == 0, made.stderr
    assert f"call it: POST {served.url}/v1/embeddings" in made.stdout
    made = llmos(served, "deploy", "tb-cls", "--name", "cls", "--cpu", "0.25",
                 "--memory", "1024")
    assert made.returncode == 0 and f"POST {served.url}/v1/classify" in made.stdout
    d = ready(served, "emb")
    # preloaded: the model is resident before any request asked for it
    w = wait_for(lambda: (w := served.client.deployments.get("emb")["workers"][0])
                 and resident(served, "emb", w) and w, timeout=60, what="the preload")
    assert [e["reason"] for e in w["events"] if e["event"] == "load"] == ["preloaded"]
    assert d["task"] == "embed" and d["route"] == "/v1/embeddings"
    shown = llmos(served, "deployments", "show", "emb")
    assert f"serves embed: POST {served.url}/v1/embeddings" in shown.stdout
    with served.http() as http:  # as `curl -d` sends it: a form content type, a JSON body
        resp = http.post("/v1/embeddings", content=b'{"model": "emb", "input": "a cat"}',
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200 and len(resp.json()["data"][0]["embedding"]) == 32
    # a worker asking for the whole node waits while others hold part of it, and says why
    waits = llmos(served, "deploy", "tl", "--name", "whole", "--cpu", "2")
    assert waits.returncode == 0, waits.stderr
    text = " ".join(waits.stdout.split())
    assert "will serve tl:1" in text and re.search(r"waiting: worker job \d+ waits: ", text), text
    assert f"POST {served.url}/v1/chat/completions" in text
    assert llmos(served, "deployments", "rm", "whole").returncode == 0


@pytest.mark.parametrize("args,why", [
    (("--cpu", "4096", "--replicas", "64"), "needs 4096 cpu, node"),
    (("--memory", str(2**31 - 1)), "MB memory, node"),
])
def test_a_deployment_that_could_never_start_is_refused_at_creation(served, args, why):
    before = served.client.deployments.list()
    made = llmos(served, "deploy", "tl", "--name", "never", *args)
    assert made.returncode != 0 and "Traceback" not in made.stderr
    message = " ".join(made.stderr.split())
    assert "deployment never could never start a worker: request larger than any node" in message
    assert why in message
    assert served.client.deployments.list() == before
    with served.http() as http:
        resp = http.post("/v1/deployments", json={"model": "tl", "name": "never", "cpu": 4096})
    assert resp.status_code == 422 and "could never start" in resp.json()["error"]["message"]


def test_a_crashed_worker_is_replaced(served):
    deploy(served, "tl", "phoenix")
    first = ready(served, "phoenix")["workers"][0]["job_id"]
    job = served.client.jobs.get(first)
    os.kill(job["pid"], signal.SIGKILL)

    def replaced():  # the kernel retries the job, or the controller starts another
        now = served.client.jobs.get(first)
        d = served.client.deployments.get("phoenix")
        if now["state"] == "RUNNING" and now["attempt"] > job["attempt"]:
            return d["ready_workers"] >= 1
        return now["state"] == "FAILED" and any(w["job_id"] != first for w in d["workers"])
    wait_for(replaced, timeout=240, interval=0.2, what="a replacement worker")
    assert chat(served, "phoenix")  # it serves again (a request never meets the dead one)


def test_two_replicas_are_two_ready_workers_each_holding_the_model(served):
    deploy(served, "tl", "pair", replicas=2)
    d = ready(served, "pair", workers=2)
    assert d["replicas"] == 2 and len({w["job_id"] for w in d["workers"]}) == 2

    def both_hold():
        ws = served.client.deployments.get("pair")["workers"]
        return len(ws) == 2 and all(resident(served, "pair", w) for w in ws) and ws
    wait_for(both_hold, timeout=60, what="both replicas to preload the model")
    with served.http() as http:
        statuses = {http.post("/v1/completions", json={"model": "pair", "prompt": "Hi",
                                                       "max_tokens": 2}).status_code
                    for _ in range(4)}
    assert statuses == {200}


def test_redeploying_a_name_switches_its_model_hot(served):
    deploy(served, "tl", "swap")
    ready(served, "swap")
    before = chat(served, "swap")
    again = deploy(served, "tl-b", "swap")
    assert again["model"] == "tl-b"
    after = chat(served, "swap")
    assert after != before  # new requests reach the new weights

    def old_gone():
        w = served.client.deployments.get("swap")["workers"][0]
        return [e for e in w["events"] if e["event"] == "unload"
                and e["reason"] == "replaced by a newer version"]
    assert wait_for(old_gone, timeout=60, what="the old model to leave")[0]["deployment"] == "swap"


def test_an_idle_model_leaves_after_its_keep_alive(served):
    deploy(served, "tl", "sleepy")
    ready(served, "sleepy")
    chat(served, "sleepy")

    def unloaded():
        w = served.client.deployments.get("sleepy")["workers"][0]
        return [e for e in w["events"] if e["event"] == "unload"
                and e["reason"] == f"idle for {KEEP_ALIVE_S} s (keep-alive)"] and w
    w = wait_for(unloaded, timeout=KEEP_ALIVE_S + 30, interval=0.5, what="the keep-alive")
    assert resident(served, "sleepy", w) == []
    assert chat(served, "sleepy")  # the next request loads it again


def test_a_workers_port_refuses_calls_without_its_secret(served):
    deploy(served, "tl", "guarded")
    job = ready(served, "guarded")["workers"][0]["job_id"]
    url = re.search(r"on (http://127\.0\.0\.1:\d+)", served.client.jobs.logs(job)).group(1)
    body = {"request_id": "x", "priority": 1, "tenant": "intruder",
            "deployment": {}, "request": {"kind": "chat", "messages": []}}
    for headers in ({}, {"x-llmos-worker-secret": "guessed-" + "x" * 32}):
        for method, path in (("POST", "/generate/chat"), ("POST", "/load"), ("GET", "/stats")):
            resp = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
            assert resp.status_code == 401, (path, resp.text)
            assert resp.json()["error"]["message"] == "not the daemon"


def test_no_prompt_is_ever_logged_nor_a_line_per_request(served):
    deploy(served, "tl", "private")
    deploy(served, "tb", "private-emb")
    ready(served, "private")
    ready(served, "private-emb")
    marker = f"zebra-quartz-{uuid.uuid4().hex}"
    chat(served, "private", f"My secret is {marker}")
    list(chat(served, "private", f"Stream my secret {marker}", stream=True))
    with served.http() as http:
        for route, body in (("/v1/completions", {"model": "private", "prompt": marker,
                                                 "max_tokens": 2}),
                            ("/v1/embeddings", {"model": "private-emb", "input": [marker]}),
                            ("/v1/chat/completions", {"model": "private", "max_tokens": 2,
                             "messages": [{"role": "user", "content": marker * 999}]})):
            assert http.post(route, json=body).status_code in (200, 400)
    found = [str(p) for p in served.home.rglob("*")
             if p.is_file() and marker.encode() in p.read_bytes()]
    assert found == []
    log = served.log()
    assert "HTTP Request" not in log and "/v1/chat/completions" not in log


def test_an_inference_only_token_calls_and_lists_models_but_reads_nothing_else(served):
    """The README's curl uses `llmos tokens create --scope inference`: such a token calls
    the gateway and sees the models it can call in /v1/models, and nothing more."""
    deploy(served, "tl", "infer-only")
    ready(served, "infer-only")
    token = served.client.tokens.create("curl", scopes=["inference"])["token"]
    assert chat(served, "infer-only") and oai(served, token).chat.completions.create(
        model="infer-only", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        temperature=0).choices[0].message.content is not None
    assert [m.id for m in oai(served, token).models.list()] == ["infer-only"]
    with httpx.Client(base_url=served.url, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        resp = http.get("/v1/deployments/infer-only")
        assert resp.status_code == 403
        assert "lacks the 'read' scope" in resp.json()["error"]["message"]


def test_a_worker_job_of_another_team_never_joins_a_pool(served):
    """A developer of another team who submits `serve.worker` naming a pool (its name is
    the deployment's) must never receive that pool's requests: its heartbeat is refused
    and the controller does not count it."""
    deploy(served, "tl", "coveted")
    ready(served, "coveted")
    mallory = served.user("mallory", team="intruders")
    fake = mallory.jobs.submit("serve.worker", {"pool": "coveted", "budget_mb": 256},
                               cpu=0.25, memory_mb=1024)
    ended = served.wait_job(fake["id"], timeout=180)
    assert ended["state"] == "FAILED"
    assert "is not a worker of pool coveted" in ended["reason"]
    d = served.client.deployments.get("coveted")
    assert fake["id"] not in {w["job_id"] for w in d["workers"]} and d["ready_workers"] == 1
