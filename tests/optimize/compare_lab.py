"""What the comparison and face tests share: a live daemon holding tiny classifiers of two
sizes (two versions of one model), a labeled dataset with train and test splits stored
directly as Parquet shards (no ingest job), and a causal model's version (a registered
config alone: enough for the checks made before any job)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import tiny_models
from live import LiveDaemon
from llmos.models.loaders import inspect_model
from llmos.sdk import Client
from offline_models import minilm_dir

LABELS = ["neg", "pos"]
WORDS = {"neg": ["awful", "bad", "dull", "slow", "broken"],
         "pos": ["great", "good", "bright", "fast", "lovely"]}


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 2]
        words = rng.choices(WORDS[label], k=4) + rng.choices(["the", "a", "day"], k=2)
        rng.shuffle(words)
        out.append({"id": f"{seed}-{i}", "text": " ".join(words), "label": label})
    return out


def labeled_dataset(live: LiveDaemon, c: Client, name: str, splits=("train", "test"),
                    n: int = 40) -> None:
    """A dataset version of ``n`` labeled rows in each of ``splits``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = []
    for i, split in enumerate(splits):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows(n, seed=i)), buf)
        art = c.artifacts.put(buf.getvalue(), name=f"{split}-00000.parquet")
        shards.append({"artifact_id": art["id"], "split": split, "rows": n,
                       "text_bytes": 30 * n, "sha256": art["sha256"],
                       "name": f"{split}-00000.parquet"})
    with live.http(c.token) as http:
        resp = http.post(f"/v1/datasets/{name}/versions", json={
            "content_hash": f"{len(splits):064d}", "schema": {"id": "string",
                                                              "text": "string",
                                                              "label": "string"},
            "stats": {}, "lineage": {}, "shards": shards})
    assert resp.status_code == 201, resp.text


def register_folder(live: LiveDaemon, c: Client, folder: Path, name: str) -> int:
    """``folder`` as the next version of ``name``: its files as artifacts, described by
    ``inspect_model`` (what an import job registers, without the job)."""
    info = inspect_model(folder)
    files = []
    for f in info.files:
        art = c.artifacts.put((folder / f.path).read_bytes(), name=Path(f.path).name)
        files.append({"path": f.path, "artifact_id": art["id"]})
    with live.http(c.token) as http:
        resp = http.post(f"/v1/registry/models/{name}/versions",
                         json={"files": files, "info": info.to_dict()})
    assert resp.status_code == 201, resp.text
    return resp.json()["version"]


def classifiers(live: LiveDaemon, c: Client, root: Path, name: str) -> None:
    """``name``:1 a 1-layer classifier of hidden size 16, ``name``:2 a 2-layer one of 64."""
    for hidden, layers in ((16, 1), (64, 2)):
        folder = tiny_models.bert(root / f"{name}-{hidden}", minilm_dir(), hidden=hidden,
                                  layers=layers, head="sequence", labels=LABELS)
        register_folder(live, c, folder, name)


def causal_config(live: LiveDaemon, c: Client, name: str, arch: str = "LlamaForCausalLM",
                  task: str = "causal_lm") -> None:
    """A version made of its config alone (a causal LM unless told otherwise)."""
    data = b'{"model_type": "llama", "architectures": ["%s"]}' % arch.encode()
    art = c.artifacts.put(data, name="config.json")
    info = {"architecture": arch, "model_type": "llama", "task": task,
            "parameters": 0, "dtypes": [], "size_bytes": len(data), "weight_files": [],
            "tokenizer_files": [], "vocab_size": None, "chat_template": False,
            "context_length": None, "files": [{"path": "config.json", "size": len(data),
                                               "sha256": art["sha256"]}]}
    with live.http(c.token) as http:
        resp = http.post(f"/v1/registry/models/{name}/versions", json={
            "files": [{"path": "config.json", "artifact_id": art["id"]}], "info": info})
    assert resp.status_code == 201, resp.text


def gguf_folder(dest: Path) -> Path:
    """SmolLM2's GGUF file with its config and tokenizer beside it: a version the
    ``llamacpp`` engine serves (what a GGUF export registers)."""
    import shutil

    from transformers import AutoConfig

    from offline_models import smollm2_gguf

    gguf = smollm2_gguf()
    dest.mkdir(parents=True)
    shutil.copy(gguf, dest / gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(dest)
    tiny_models.smollm2_tokenizer(dest)
    return dest
