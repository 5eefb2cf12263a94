"""The "onnx" engine on ONNX bundles exported from tiny random BERTs (all-MiniLM-L6-v2's
tokenizer): classification and embeddings equal to the parent's, the encoder engine's dynamic
batching, limits and aborts, a changed bundle refused, and the deployments' engine choice
(an ONNX version defaults to the onnx engine; each engine refuses the other's versions)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from offline_models import minilm_dir
from tiny_models import bert
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from llmos.errors import InvalidRequest
from llmos.optimize.onnx_export import export_onnx
from llmos.serve.deployments import _check_engine, default_engine
from llmos.serve.engines import (
    ContextLengthExceeded,
    EncodeRequest,
    ModelLoadError,
    QueueFull,
    RequestAborted,
    load_engine,
)

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["A man is eating food.", "The stock market fell sharply today after the report.",
         "Cats sleep a lot", "Quantum computers use qubits, which can be in superpositions.",
         "Hi", "The weather in Paris is mild in spring, with occasional showers and sun."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-engine")
    clf = bert(root / "clf", minilm_dir(), head="sequence", labels=LABELS)
    enc = bert(root / "enc", minilm_dir())
    shutil.copy(minilm_dir() / "modules.json", enc / "modules.json")
    shutil.copytree(minilm_dir() / "1_Pooling", enc / "1_Pooling")
    export_onnx(clf, root / "clf-onnx", quantize=False)
    export_onnx(enc, root / "enc-onnx", quantize=False)
    return {"clf": clf, "enc": enc, "clf-onnx": root / "clf-onnx", "enc-onnx": root / "enc-onnx"}


@pytest.fixture
def engines():
    made = []

    def make(path, **options):
        engine = load_engine(path, engine="onnx", **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def test_classification_equals_the_parent_in_one_padded_batch(folders, engines):
    engine = engines(folders["clf-onnx"], max_batch=16)
    assert (engine.name, engine.task, engine.labels) == ("onnx", "classify", LABELS)
    with engine.paused():
        handles = [engine.submit(EncodeRequest(f"c{i}", [t])) for i, t in enumerate(TEXTS)]
    model = AutoModelForSequenceClassification.from_pretrained(folders["clf"]).eval()
    tok = AutoTokenizer.from_pretrained(folders["clf"])
    for handle, text in zip(handles, TEXTS):
        result = handle.result(30)
        with torch.no_grad():
            probs = torch.softmax(model(**tok(text, return_tensors="pt")).logits[0], -1)
        expected = dict(zip(LABELS, probs.tolist()))
        out = result.classifications[0]
        assert out.scores == pytest.approx(expected, abs=1e-5)
        assert out.label == max(expected, key=expected.get)
        assert result.usage.prompt_tokens == len(tok(text)["input_ids"])
    steps = engine.record().steps
    assert len(steps) == 1 and steps[0].batch_size == len(TEXTS)
    assert steps[0].request_ids == tuple(f"c{i}" for i in range(len(TEXTS)))


def test_embeddings_equal_the_parents_pooled_vectors_and_large_requests_split(folders, engines):
    engine = engines(folders["enc-onnx"], max_batch=4)
    assert (engine.task, engine.pooling, engine.normalize, engine.labels) == (
        "embed", "mean", True, None)
    result = engine.submit(EncodeRequest("big", TEXTS)).result(30)
    assert [s.batch_size for s in engine.record().steps] == [4, 2]
    model, tok = AutoModel.from_pretrained(folders["enc"]).eval(), AutoTokenizer.from_pretrained(
        folders["enc"])
    for vector, text in zip(result.embeddings, TEXTS):
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(0), dim=-1).numpy()
        np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_limits_queue_and_abort_behave_as_the_encoder_engines(folders, engines):
    engine = engines(folders["clf-onnx"], max_queue=2)
    long_text = " ".join(["word"] * 200)  # the tiny model has 128 positions
    with pytest.raises(ContextLengthExceeded, match="202 tokens, more than the model's 128"):
        engine.submit(EncodeRequest("no", [long_text], truncate=False))
    assert engine.submit(EncodeRequest("cut", [long_text])).result(30).classifications
    with engine.paused():
        doomed = engine.submit(EncodeRequest("doomed", ["x"]))
        kept = engine.submit(EncodeRequest("kept", ["y"]))
        with pytest.raises(QueueFull):
            engine.submit(EncodeRequest("third", ["z"]))
        assert engine.abort("doomed")
    with pytest.raises(RequestAborted, match="doomed was aborted"):
        doomed.result(5)
    assert len(kept.result(30).classifications) == 1
    assert engine.memory_bytes() == (folders["clf-onnx"] / "model.onnx").stat().st_size


def test_each_engine_refuses_the_others_folders_and_a_changed_bundle(folders, tmp_path):
    with pytest.raises(ModelLoadError, match="holds no model.onnx"):
        load_engine(folders["clf"], engine="onnx")
    with pytest.raises(ModelLoadError, match="has no .safetensors weights"):
        load_engine(folders["clf-onnx"], engine="encoder")
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        load_engine(folders["clf-onnx"], engine="onnx", device="cuda")
    changed = shutil.copytree(folders["clf-onnx"], tmp_path / "changed")
    (changed / "config.json").write_text((changed / "config.json").read_text() + " ")
    with pytest.raises(ModelLoadError, match="config.json .* the bundle was changed"):
        load_engine(changed, engine="onnx")


def test_the_registrys_copy_of_a_bundle_is_served(folders, tmp_path, engines):
    """What an import keeps of a bundle (never code: runner.py stays behind) still serves."""
    from llmos.models.loaders import import_hf_dir

    info = import_hf_dir(folders["clf-onnx"], tmp_path / "copy")
    kept = {f.path for f in info.files}
    assert {"model.onnx", "manifest.json", "tokenizer.json", "config.json"} <= kept
    assert info.task == "sequence_classification" and info.labels == LABELS
    engine = engines(tmp_path / "copy")
    direct = engines(folders["clf-onnx"])
    got = engine.submit(EncodeRequest("a", TEXTS)).result(30).classifications
    assert got == direct.submit(EncodeRequest("b", TEXTS)).result(30).classifications


def version(*paths: str):
    """A registry version's fields the engine choice reads (files as the registry lists them)."""
    return SimpleNamespace(version=2, info={"files": [{"path": p} for p in paths]})


def test_deployments_default_an_onnx_version_to_the_onnx_engine_and_refuse_mismatches():
    bundle = version("config.json", "manifest.json", "model.onnx", "runner.py", "tokenizer.json")
    plain = version("config.json", "model.safetensors", "tokenizer.json")
    assert default_engine(bundle, "classify") == default_engine(bundle, "embed") == "onnx"
    assert default_engine(plain, "classify") == "encoder"
    _check_engine("clf", bundle, "classify", "onnx")
    _check_engine("clf", plain, "embed", "encoder")
    with pytest.raises(InvalidRequest, match="clf:2 is an ONNX bundle .*onnx engine"):
        _check_engine("clf", bundle, "classify", "encoder")
    with pytest.raises(InvalidRequest, match="clf:2 holds no model.onnx"):
        _check_engine("clf", plain, "classify", "onnx")
    with pytest.raises(InvalidRequest, match="engine 'onnx' cannot serve generate"):
        _check_engine("llm", bundle, "generate", "onnx")
