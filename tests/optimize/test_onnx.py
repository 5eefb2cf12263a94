"""ONNX edge bundles on tiny random BERTs (with all-MiniLM-L6-v2's tokenizer): the export gives
the parent's labels and logits, int8 is smaller, the manifest catches a changed file, the
runner imports only what an edge device has, and (slow) the bundle runs in a separate
virtual environment holding only onnxruntime, tokenizers and numpy."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from offline_models import minilm_dir
from tiny_models import bert
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from llmos.models import onnx_runner
from llmos.models.onnx_runner import BundleError, Runner
from llmos.optimize.onnx_export import CHECK_TEXTS, OnnxExportError, export_onnx

LABELS = ["negative", "neutral", "positive"]
# Not the export's own check texts: mixed lengths in one padded batch, one past the limit.
TEXTS = ["The service was quick and friendly.", "Terrible, I want my money back!!",
         "ok", "Le repas était correct, sans plus.", "word " * 300,
         "Shipping took three weeks and the box arrived damaged, but support replaced it."]


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    return bert(tmp_path_factory.mktemp("clf") / "m", minilm_dir(), head="sequence",
                labels=LABELS)


@pytest.fixture(scope="module")
def bundles(parent, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bundles")
    stages: list[tuple[int, int, str]] = []
    stats = {"fp32": export_onnx(parent, root / "fp32", quantize=False),
             "int8": export_onnx(parent, root / "int8",
                                 progress=lambda *step: stages.append(step))}
    return {"root": root, "stats": stats, "stages": stages}


def parent_logits(folder: Path, texts: list[str], max_length: int) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    inputs = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits.numpy()


def test_the_float_bundle_gives_the_parents_logits_and_labels(parent, bundles):
    runner = Runner(bundles["root"] / "fp32")
    expected = parent_logits(parent, TEXTS, runner.max_length)
    got = runner.logits(TEXTS)
    assert got.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    results = runner.classify(TEXTS)
    assert [r["label"] for r in results] == [LABELS[i] for i in expected.argmax(-1)]
    for r in results:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["score"] == max(r["probabilities"].values())


def test_the_int8_bundle_is_smaller_and_close_to_the_parent(parent, bundles):
    fp32, int8 = bundles["stats"]["fp32"], bundles["stats"]["int8"]
    assert int8["quantized"] and not fp32["quantized"]
    assert int8["bytes_after"] < fp32["bytes_after"] / 3  # embeddings and Linear weights int8
    assert int8["bytes_fp32"] == pytest.approx(fp32["bytes_after"], rel=0.01)
    runner = Runner(bundles["root"] / "int8")
    expected = parent_logits(parent, TEXTS, runner.max_length)
    scale = np.abs(expected).max()
    assert np.abs(runner.logits(TEXTS) - expected).max() < 0.25 * max(1.0, scale)
    assert [s[2] for s in bundles["stages"]] == [
        "loading the parent", "exporting to ONNX", "checking the graph against the parent",
        "quantizing to int8", "checking the int8 graph", "done"]
    assert [s[:2] for s in bundles["stages"]] == [(i, 5) for i in range(6)]
    check = int8["check"]
    assert check["texts"] == len(CHECK_TEXTS) and check["float"]["max_abs_diff"] < 1e-4
    assert check["float"]["labels_agree"] == len(CHECK_TEXTS)


def test_the_manifest_names_the_task_labels_limits_and_every_file(bundles):
    folder = bundles["root"] / "int8"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "llmos-onnx-bundle" and manifest["task"] == "classify"
    assert manifest["labels"] == LABELS and manifest["opset"] == 17 and manifest["quantized"]
    assert manifest["max_length"] == 128  # the tiny BERT's positions
    assert {"model.onnx", "tokenizer.json", "config.json"} <= set(manifest["files"])
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    # every file but the runner (the tool, written by whichever llmos hands the bundle out)
    assert set(manifest["files"]) == on_disk - {"manifest.json", "runner.py"}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": onnx_runner.sha256_file(folder / name),
                         "bytes": (folder / name).stat().st_size}
    assert (folder / "runner.py").read_text() == Path(onnx_runner.__file__).read_text()


def test_a_changed_or_missing_file_is_refused_by_name(bundles, tmp_path):
    copy = shutil.copytree(bundles["root"] / "fp32", tmp_path / "b")
    original = (copy / "model.onnx").read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx .* does not match its sha256"):
        Runner(copy)
    (copy / "model.onnx").write_bytes(original)
    (copy / "config.json").write_text("{}\n")  # the same check for every model file
    with pytest.raises(BundleError, match="config.json .* has 3 bytes, the manifest says"):
        Runner(copy)
    shutil.copyfile(bundles["root"] / "fp32" / "config.json", copy / "config.json")
    (copy / "runner.py").unlink()  # a registry keeps no code: the rest is still checked
    assert Runner(copy).classify(["fine"])[0]["label"] in LABELS
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        onnx_runner.read_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        Runner(copy)


def test_the_runner_command_prints_json(bundles, capsys):
    folder = bundles["root"] / "fp32"
    assert onnx_runner.main([str(folder), "--logits", *TEXTS[:2]]) == 0
    out = json.loads(capsys.readouterr().out)
    runner = Runner(folder)
    assert out["task"] == "classify"
    assert [r["label"] for r in out["results"]] == [r["label"] for r in runner.classify(TEXTS[:2])]
    np.testing.assert_allclose(out["logits"], runner.logits(TEXTS[:2]), atol=1e-6)
    assert onnx_runner.main([str(folder.parent / "nowhere"), "x"]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_an_encoder_bundle_embeds_like_the_parent(tmp_path):
    src = bert(tmp_path / "enc", minilm_dir())
    shutil.copy(minilm_dir() / "modules.json", src / "modules.json")
    shutil.copytree(minilm_dir() / "1_Pooling", src / "1_Pooling")
    stats = export_onnx(src, tmp_path / "bundle", quantize=False)
    assert stats["task"] == "embed" and stats["pooling"] == "mean" and stats["normalize"]
    runner = Runner(tmp_path / "bundle")
    model, tok = AutoModel.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(src)
    for text, vector in zip(TEXTS[:3], runner.embed(TEXTS[:3])):
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(0), dim=-1).numpy()
        np.testing.assert_allclose(vector, expected, atol=1e-5)
    with pytest.raises(BundleError, match="task is embed, not classify"):
        runner.classify(["x"])


def test_what_cannot_be_exported_is_refused_naming_why(parent, tmp_path):
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (causal / "model.safetensors").write_bytes(b"")
    with pytest.raises(OnnxExportError, match="LlamaForCausalLM cannot be exported"):
        export_onnx(causal, tmp_path / "out1")
    int8 = shutil.copytree(parent, tmp_path / "int8")
    config = json.loads((int8 / "config.json").read_text())
    (int8 / "config.json").write_text(json.dumps({**config, "llmos_quantization": {}}))
    with pytest.raises(OnnxExportError, match="holds llmos int8 weights"):
        export_onnx(int8, tmp_path / "out2")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(OnnxExportError, match="already exists and is not empty"):
        export_onnx(parent, busy)
    assert not list(tmp_path.glob(".*exporting"))  # nothing left behind


def test_the_runner_imports_only_numpy_onnxruntime_tokenizers_and_the_standard_library():
    tree = ast.parse(Path(onnx_runner.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    allowed = {"numpy", "onnxruntime", "tokenizers", "__future__"}
    assert roots - allowed <= set(sys.stdlib_module_names)


# ------------------------------------------------------------------ slow: a separate venv

EDGE_PACKAGES = ("onnxruntime", "tokenizers", "numpy")


def edge_venv(where: Path) -> tuple[Path, float]:
    """A virtual environment holding the edge packages and nothing else: no pip of its own
    (this environment's pip installs into it), no dependencies (--no-deps: the runner needs
    none of theirs), no bytecode compiling; the versions installed here, so pip takes them
    from its cache. Returns its python and the seconds it took."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    pins = [f"{p}=={importlib.metadata.version(p)}" for p in EDGE_PACKAGES]
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--disable-pip-version-check", "--no-deps", "--no-compile", *pins],
                   check=True)
    return python, time.monotonic() - started


@pytest.mark.slow
def test_the_bundle_runs_in_a_venv_with_only_onnxruntime_and_tokenizers(parent, bundles,
                                                                        tmp_path):
    python, seconds = edge_venv(tmp_path / "edge")
    print(f"edge venv built in {seconds:.1f} s")
    listing = subprocess.run([str(python), "-c", "import importlib.metadata as m, sys; print("
                              "sorted(d.metadata['Name'].lower() for d in m.distributions()), "
                              "sys.prefix != sys.base_prefix)"],
                             capture_output=True, text=True, check=True)
    assert listing.stdout.split() == ["['numpy',", "'onnxruntime',", "'tokenizers']", "True"]
    isolated = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert isolated.returncode != 0  # nothing of llmos's own environment leaks in
    for kind in ("fp32", "int8"):
        bundle = bundles["root"] / kind
        out = subprocess.run([str(python), str(bundle / "runner.py"), str(bundle), "--logits",
                              *TEXTS], capture_output=True, text=True, check=True,
                             cwd=tmp_path)  # run as a plain script, away from the source tree
        edge = json.loads(out.stdout)
        logits = np.array(edge["logits"])
        here = Runner(bundle).logits(TEXTS)  # what llmos's onnx engine computes
        np.testing.assert_allclose(logits, here, atol=1e-5)
        assert [r["label"] for r in edge["results"]] == [LABELS[i] for i in here.argmax(-1)]
        if kind == "fp32":  # the parent's labels and logits
            expected = parent_logits(parent, TEXTS, 128)
            np.testing.assert_allclose(logits, expected, atol=1e-4)
            assert logits.argmax(-1).tolist() == expected.argmax(-1).tolist()
