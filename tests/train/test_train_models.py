"""Model folders that cannot be trained are refused before training starts: missing
files, pickled weights, a tokenizer that does not belong to the model, a precision the
machine cannot run, an output folder that is in use."""

from __future__ import annotations

import shutil

import pytest
from offline_models import minilm_dir
import tiny_models
from train_helpers import events, job, topic_rows

from llmos.train import (
    ModelError,
    RecipeError,
    TrainError,
    run_evaluation,
    run_training,
)

CLS = {"task": "sequence_classification", "max_length": 16, "batch_size": 4, "max_steps": 1}


def copy_without(src, dest, *names):
    shutil.copytree(src, dest)
    for name in names:
        (dest / name).unlink()
    return dest


def refused(tmp_path, model, recipe=CLS, error=ModelError) -> str:
    work = tmp_path / "job"
    with pytest.raises(error) as e:
        run_training(job(work), recipe, model, topic_rows(2), None, tmp_path / "out")
    assert not any(ev["type"] in ("progress", "metric", "checkpoint") for ev in events(work))
    return str(e.value)


def test_no_config(tmp_path, tiny_bert):
    model = copy_without(tiny_bert, tmp_path / "m", "config.json")
    assert refused(tmp_path, model).startswith("model folder 'm' has no config.json (files: ")


def test_no_weights(tmp_path, tiny_bert):
    model = copy_without(tiny_bert, tmp_path / "m", "model.safetensors")
    assert refused(tmp_path, model) == ("model folder 'm' has no safetensors weights (files: "
                                        "config.json, tokenizer.json, tokenizer_config.json)")


def test_pickled_weights_are_never_loaded(tmp_path, tiny_bert):
    model = copy_without(tiny_bert, tmp_path / "m", "model.safetensors")
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    assert refused(tmp_path, model) == (
        "model folder 'm' has no safetensors weights (it has only pickled weights "
        "(pytorch_model.bin), which llmos never loads; convert them to safetensors first)")


def test_no_tokenizer(tmp_path, tiny_bert):
    model = copy_without(tiny_bert, tmp_path / "m", "tokenizer.json", "tokenizer_config.json")
    assert refused(tmp_path, model) == ("model folder 'm' has no tokenizer (expected "
                                        "tokenizer.json or tokenizer_config.json; files: "
                                        "config.json, model.safetensors)")


def test_no_folder(tmp_path):
    assert refused(tmp_path, tmp_path / "absent").endswith("absent' does not exist")


def test_a_tokenizer_larger_than_the_embeddings(tmp_path):
    model = tiny_models.bert(tmp_path / "small_vocab", minilm_dir(), vocab_size=1000)
    assert refused(tmp_path, model) == (
        "the tokenizer of 'small_vocab' does not match its model: it has 30522 tokens but "
        "the model's embeddings have 1000 rows")


def test_another_models_tokenizer(tmp_path, tiny_bert, smol_tokenizer_dir):
    model = copy_without(tiny_bert, tmp_path / "m", "tokenizer.json", "tokenizer_config.json")
    for f in smol_tokenizer_dir.iterdir():
        shutil.copy(f, model / f.name)
    assert refused(tmp_path, model) == (
        "the tokenizer of 'm' does not match its model: it has 49152 tokens but the model's "
        "embeddings have 30522 rows")


@pytest.mark.parametrize("model_type,message", [
    ("clip", "the model in 'm' (clip) has no token classification form in transformers"),
    ("mamba_xyz", ("the model in 'm' has model type 'mamba_xyz', which this transformers "
                   "version does not know")),
])
def test_a_model_without_the_task(tmp_path, tiny_llama, model_type, message):
    recipe = {"task": "token_classification", "max_length": 16, "max_steps": 1}
    rows = [{"tokens": ["a", "b"], "tags": ["B-X", "O"]}]
    model = copy_without(tiny_llama, tmp_path / "m")
    (model / "config.json").write_text((model / "config.json").read_text()
                                       .replace('"llama"', f'"{model_type}"'))
    with pytest.raises(ModelError) as e:
        run_training(job(tmp_path / "job"), recipe, model, rows, None, tmp_path / "out")
    assert str(e.value) == message


def test_fp16_on_the_cpu(tmp_path, tiny_bert):
    assert refused(tmp_path, tiny_bert, {**CLS, "precision": "fp16"}, RecipeError) == \
        "precision: fp16 needs a CUDA GPU; on the CPU use fp32 or bf16"


def test_an_output_folder_in_use(tmp_path, tiny_bert):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    assert refused(tmp_path, tiny_bert, error=TrainError).endswith(
        "out' already exists and is not empty")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_evaluation_checks_the_model_folder_too(tmp_path, tiny_bert):
    model = copy_without(tiny_bert, tmp_path / "m", "config.json")
    with pytest.raises(ModelError, match="has no config.json"):
        run_evaluation(model, "sequence_classification", topic_rows(1))
