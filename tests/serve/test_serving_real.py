"""Serving the real offline models through a live daemon, with the official ``openai`` client:
SmolLM2-135M-Instruct imported from its GGUF file (on the default "torch" engine and on the
"llamacpp" engine, which runs the GGUF file itself) and all-MiniLM-L6-v2 for embeddings."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import shutil
import time

import pytest
from live import LiveDaemon
from offline_models import minilm_dir, smollm2_gguf
from test_serving_live import deploy, oai, ready

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-real")
    (root / "home").mkdir()
    live = LiveDaemon(root / "home", cpus=2).start()
    jobs = [live.client.models.import_("smollm2", smollm2_gguf(), memory_mb=6144),
            live.client.models.import_("minilm", minilm_dir(), memory_mb=2048)]
    for j in jobs:
        assert live.wait_job(j["id"], timeout=900)["state"] == "SUCCEEDED"
    yield live
    live.stop()


def test_the_smollm2_gguf_is_converted_once_and_then_loads_from_safetensors(served):
    """The fixture's import job (the GGUF file, de-quantized once by the job): the version
    records its source, and its folder loads as plain safetensors."""
    c = served.client
    v = c.models.version("smollm2")
    assert v["architecture"] == "LlamaForCausalLM" and v["task"] == "causal_lm"
    assert 134_000_000 < v["parameters"] < 135_000_000
    source = v["lineage"]["source"]
    assert source["kind"] == "gguf" and source["quantization"] == "Q4_1"
    assert source["sha256"] == hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()
    assert v["info"]["chat_template"]
    assert {"model.safetensors", smollm2_gguf().name} <= {f["path"] for f in v["files"]}
    # The version's folder (links to verified blobs) loads as plain safetensors.
    from llmos.models.registry import ModelRegistry  # the daemon's own layout code
    from llmos.security.artifacts import ArtifactService
    from llmos.security.rbac import SYSTEM
    from llmos.store import ArtifactStore, open_database

    db = open_database(f"sqlite:///{served.home / 'llmos.db'}")
    reg = ModelRegistry(ArtifactService(db, ArtifactStore(served.home / "artifacts"), 1),
                        served.home / "models")
    expected = served.home / "models" / f"version-{reg.version(SYSTEM, 'smollm2').id}"
    assert not expected.exists()  # made by the first use (this test runs before any deploy)
    _, folder = reg.folder(SYSTEM, "smollm2")
    db.close()
    assert folder == expected
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    loaded_s = time.perf_counter() - started
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    print(f"SmolLM2 loaded from the registry in {loaded_s:.2f} s")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    shutil.rmtree(folder)


def test_the_openai_client_against_smollm2_and_minilm(served):
    deploy(served, "smollm2", "smollm2", cpu=1, memory_mb=3072)
    deploy(served, "minilm", "minilm", cpu=0.5, memory_mb=2048)
    ready(served, "smollm2")
    ready(served, "minilm")
    client = oai(served)
    assert {m.id for m in client.models.list()} >= {"smollm2", "minilm"}

    reply = client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=24,
                                           temperature=0)
    answer = reply.choices[0].message.content
    assert "Paris" in answer and reply.usage.prompt_tokens > 10

    chunks = list(client.chat.completions.create(
        model="smollm2", messages=FRANCE, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    stopped = client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=24,
                                             temperature=0, stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"

    seeded = [client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a short poem."}],
        max_tokens=12, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
        for _ in range(2)]
    assert seeded[0] == seeded[1]  # the same seed samples the same tokens

    text = client.completions.create(model="smollm2", prompt="The capital of France is",
                                     max_tokens=4, temperature=0)
    assert "Paris" in text.choices[0].text and text.usage.completion_tokens <= 4

    emb = client.embeddings.create(model="minilm",
                                   input=["a small cat", "a little kitten", "a stock market crash"])
    cat, kitten, crash = (e.embedding for e in emb.data)
    assert len(cat) == 384 and emb.usage.prompt_tokens > 0

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) *
                                                            sum(y * y for y in b))
    assert cos(cat, kitten) > cos(cat, crash) + 0.3
    for name in ("smollm2", "minilm"):  # their cpus go to the next test's deployment
        served.client.deployments.delete(name)


def test_the_llamacpp_engine_serves_the_imported_gguf_file(served):
    deploy(served, "smollm2", "smollm2-cpp", engine="llamacpp", max_batch=8, cpu=1,
           memory_mb=2048)
    ready(served, "smollm2-cpp")
    client = oai(served)
    reply = client.chat.completions.create(model="smollm2-cpp", messages=FRANCE, max_tokens=24,
                                           temperature=0)
    assert reply.usage.completion_tokens == 24 and reply.choices[0].message.content.strip()
    streamed = client.chat.completions.create(model="smollm2-cpp", messages=FRANCE,
                                              max_tokens=24, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed
                   if c.choices) == reply.choices[0].message.content

    questions = ["Name three primary colors.", "What do bees make?", "Why is the sky blue?",
                 "Who wrote Romeo and Juliet?", "What is the largest planet?",
                 "Suggest a name for a cat.", "What is 12 times 12?", "Write a haiku about snow."]

    def ask(q: str) -> str:
        stream = client.chat.completions.create(
            model="smollm2-cpp", messages=[{"role": "user", "content": q}], max_tokens=16,
            temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, questions))
    assert all(t.strip() for t in together)
    record = served.http().get("/v1/deployments/smollm2-cpp").json()
    assert record["engine"] == "llamacpp"


def test_smollm2_exported_to_gguf_q8_0_is_served_by_llamacpp_through_the_gateway(served):
    c = served.client
    if "smollm2-cpp" in {d["name"] for d in c.deployments.list()}:
        c.deployments.delete("smollm2-cpp")  # its cpu goes to the export, then to this one
    job = c.optimize.compress({"method": "gguf", "gguf": {"quantization": "Q8_0"}}, "smollm2",
                              "smollm2-q8", cpu=1, memory_mb=3072)
    ended = served.wait_job(job["id"], timeout=600)
    assert ended["state"] == "SUCCEEDED", ended.get("reason")
    v = c.models.version("smollm2-q8")
    assert [f["path"] for f in v["files"] if f["path"].endswith(".gguf")] == ["model-Q8_0.gguf"]
    assert not any(f["path"].endswith(".safetensors") for f in v["files"])
    assert v["lineage"]["method"] == "gguf" and v["lineage"]["settings"] == {
        "quantization": "Q8_0"}
    assert v["size_bytes"] < 0.5 * c.models.version("smollm2")["size_bytes"]
    deploy(served, "smollm2-q8", "smollm2-q8", max_batch=4, cpu=1, memory_mb=2048)
    assert c.deployments.get("smollm2-q8")["engine"] == "llamacpp"  # its only weights
    ready(served, "smollm2-q8")
    client = oai(served)
    text = client.completions.create(model="smollm2-q8", prompt="The capital of France is",
                                     max_tokens=4, temperature=0)
    assert "Paris" in text.choices[0].text
    reply = client.chat.completions.create(model="smollm2-q8", messages=FRANCE, max_tokens=24,
                                           temperature=0)
    assert reply.usage.completion_tokens > 0 and reply.choices[0].message.content.strip()
