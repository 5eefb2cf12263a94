"""The torch compression methods on tiny randomly initialised models (tests/tiny_models.py):
int8 quantization and its loading by evaluation and serving, unstructured / feed-forward /
attention-head pruning, the distillation student and its training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tiny_models
import torch
from offline_models import minilm_dir
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
)

from llmos.models.loaders import inspect_model
from llmos.models.quantized import is_int8, load_int8
from llmos.optimize.distill import distill, make_student
from llmos.optimize.folders import CompressError
from llmos.optimize.prune import calibration_texts, prune_folder
from llmos.optimize.quantize import quantize_folder
from llmos.serve.engines import EncodeRequest, load_engine
from llmos.train.errors import ModelError
from llmos.train.recipe import parse_train_recipe
from llmos.train.run import run_evaluation
from llmos.train.tasks import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import YieldAt, job, topic_rows  # noqa: E402

LABELS = ["food", "sport", "tech"]
TEXTS = ["the team scored a goal", "fresh bread with basil and salt",
         "my laptop screen and keyboard", "the coach talked to the server",
         "cheese pasta soup", "a chip runs the code"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A 4-layer tiny BERT classifier with weights drawn wider than usual (std 0.3), so
    that its answers depend on the input (with the usual 0.02 every input gets the same
    near-equal logits)."""
    folder = tiny_models.bert(tmp_path_factory.mktemp("clf") / "m", minilm_dir(), dropout=0.0,
                              layers=4, head="sequence", labels=LABELS)
    config = AutoConfig.from_pretrained(folder)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(classifier):
    return AutoTokenizer.from_pretrained(classifier)


@pytest.fixture(scope="module")
def int8(classifier, tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("q") / "int8"
    return dst, quantize_folder(classifier, dst)


def logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- int8 ---------------------------------------------------------------------------------

def test_int8_folder_is_registrable_smaller_and_answers_like_its_parent(classifier, int8,
                                                                        tokenizer):
    dst, stats = int8
    info = inspect_model(dst)
    assert info.task == "sequence_classification" and info.labels == LABELS
    assert is_int8(dst) and not is_int8(classifier)
    assert stats["linear_layers"] == 4 * 6 + 2  # q, k, v, o, ffn in, ffn out; pooler, head
    assert stats["linear_bytes_before"] == 4 * stats["linear_bytes_after"]
    assert stats["bytes_after"] < stats["bytes_before"]
    quantized = load_int8(AutoModelForSequenceClassification, dst)
    layer = quantized.bert.encoder.layer[0]
    assert type(layer.intermediate.dense) is torch.ao.nn.quantized.dynamic.Linear
    parent = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    a, b = logits(parent, tokenizer), logits(quantized, tokenizer)
    assert len(set(a.argmax(-1).tolist())) > 1  # the parent's answers differ by input
    assert a.argmax(-1).tolist() == b.argmax(-1).tolist()
    assert float((a - b).abs().max()) < 0.15 * float(a.abs().max())


def test_int8_is_evaluated_through_training_and_served_by_the_encoder_engine(
        classifier, int8, tokenizer):
    dst, _ = int8
    parent = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    truth = [LABELS[i] for i in logits(parent, tokenizer).argmax(-1).tolist()]
    rows = [{"text": t, "label": y} for t, y in zip(TEXTS, truth)]
    assert run_evaluation(dst, "sequence_classification", rows)["accuracy"] == 1.0
    with pytest.raises(ModelError, match="int8-quantized and cannot be trained"):
        load_model("sequence_classification", dst, LABELS, tokenizer)
    engine = load_engine(dst, engine="encoder", device="cpu")
    try:
        result = engine.submit(EncodeRequest("q", TEXTS)).result(30)
    finally:
        engine.close()
    assert [c.label for c in result.classifications] == truth
    encoder = load_int8(AutoModel, dst)  # the base model alone (embeddings)
    assert type(encoder).__name__ == "BertModel"


def test_quantize_refuses_an_int8_parent_and_a_used_destination(classifier, int8, tmp_path):
    dst, _ = int8
    with pytest.raises(CompressError, match="already int8"):
        quantize_folder(dst, tmp_path / "again")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(CompressError, match="not empty"):
        quantize_folder(classifier, tmp_path / "busy")


# -- pruning ------------------------------------------------------------------------------

def test_ffn_pruning_really_removes_channels(classifier, tokenizer, tmp_path):
    stats = prune_folder(classifier, tmp_path / "ffn", "ffn", 0.4)
    assert stats["intermediate_size_before"] == 64 and stats["intermediate_size_after"] == 38
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ffn")
    assert model.config.intermediate_size == 38
    assert model.bert.encoder.layer[3].output.dense.in_features == 38
    assert parameters(model) == stats["parameters_after"] < stats["parameters_before"]
    assert stats["bytes_after"] < stats["bytes_before"]
    assert logits(model, tokenizer).shape == (len(TEXTS), 3)
    assert inspect_model(tmp_path / "ffn").parameters == stats["parameters_after"]
    texts = calibration_texts([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    calibrated = prune_folder(classifier, tmp_path / "ffn-c", "ffn", 0.4,
                              calibration_texts=texts)
    assert calibrated["importance"] == "activation" and calibrated["calibration_texts"] == 6
    assert calibrated["parameters_after"] == stats["parameters_after"]


def test_unstructured_pruning_reaches_the_asked_sparsity(classifier, tmp_path):
    stats = prune_folder(classifier, tmp_path / "u", "unstructured", 0.6)
    assert stats["measured_sparsity"] == pytest.approx(0.6, abs=0.01)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "u")
    weight = model.bert.encoder.layer[1].attention.self.query.weight
    assert 0.3 < float((weight == 0).float().mean()) < 0.9
    assert float((model.classifier.weight == 0).float().mean()) == 0  # the head stays whole


def test_llama_heads_and_ffn_pruning_shrink_and_still_load(tmp_path):
    src = tiny_models.llama(tmp_path / "llama", minilm_dir())  # any tokenizer will do
    heads = prune_folder(src, tmp_path / "heads", "heads", 0.5)
    assert (heads["heads_before"], heads["heads_after"]) == (2, 1)
    ffn = prune_folder(src, tmp_path / "ffn", "ffn", 0.5)
    for folder, stats in ((tmp_path / "heads", heads), (tmp_path / "ffn", ffn)):
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert parameters(model) == stats["parameters_after"] < stats["parameters_before"]
        with torch.no_grad():
            out = model(torch.tensor([[1, 2, 3]])).logits
        assert out.shape[:2] == (1, 3) and bool(torch.isfinite(out).all())


def test_an_untied_lm_head_stays_float_and_the_torch_engine_serves_the_int8_model(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = tmp_path / "untied"
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, tie_word_embeddings=False,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(src)
    tok.save_pretrained(src)
    stats = quantize_folder(src, tmp_path / "int8")
    assert stats["linear_layers"] > 0
    engine = load_engine(tmp_path / "int8", engine="torch", device="cpu")
    engine.close()
    model = load_int8(AutoModelForCausalLM, tmp_path / "int8")
    assert model.get_output_embeddings().weight.shape == (len(tok), 32)


@pytest.mark.parametrize("structure, sparsity, message", [
    ("ffn", 0.95, r"prune.sparsity: 0.95 is outside \(0, 0.9\]"),
    ("unstructured", 0, r"prune.sparsity: 0 is outside"),
    ("channels", 0.5, "prune.structure: 'channels' is not one of"),
    ("heads", 0.5, "no pruned-heads support for BERT"),
])
def test_impossible_pruning_is_refused_naming_the_field(classifier, tmp_path, structure,
                                                        sparsity, message):
    with pytest.raises(CompressError, match=message):
        prune_folder(classifier, tmp_path / "p", structure, sparsity)
    assert not (tmp_path / "p").exists()


# -- distillation -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def student(classifier, tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("student") / "s"
    return dst, make_student(classifier, dst, 2)


def test_student_has_fewer_layers_copied_from_the_teacher(classifier, student):
    dst, stats = student
    assert stats["copied_from"] == [0, 3]
    config = json.loads((dst / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    model = AutoModelForSequenceClassification.from_pretrained(dst)
    teacher = AutoModelForSequenceClassification.from_pretrained(classifier)
    assert torch.equal(model.bert.encoder.layer[1].output.dense.weight,
                       teacher.bert.encoder.layer[3].output.dense.weight)
    assert torch.equal(model.classifier.weight, teacher.classifier.weight)
    assert parameters(model) == stats["parameters_after"] < stats["parameters_before"]
    with pytest.raises(CompressError, match="student_layers: 4 must be a whole number from 1 "
                                            "to 3"):
        make_student(classifier, dst.parent / "too-big", 4)


def test_distillation_brings_the_student_closer_and_resumes_after_a_yield(
        classifier, student, tmp_path):
    dst, _ = student
    recipe = parse_train_recipe({"task": "sequence_classification", "epochs": 3,
                                 "batch_size": 8, "log_every": 1,
                                 "optimizer": {"lr": 2e-3}})
    settings = {"temperature": 2.0, "alpha": 0.5}
    rows = [{"text": r["text"], "label": r["label"]} for r in topic_rows(8)]
    first = distill(YieldAt(tmp_path / "job", step=3), classifier, dst, recipe, settings,
                    rows, None, tmp_path / "out")
    assert first["yielded"] and first["yielded_at_step"] == 3 and first["export"] is None
    assert not (tmp_path / "out").exists()
    done = distill(job(tmp_path / "job", attempt=2), classifier, dst, recipe, settings,
                   rows, None, tmp_path / "out")
    assert not done["yielded"] and done["steps"] == done["total_steps"] == 9
    assert done["kd_loss_after"] < 0.8 * done["kd_loss_before"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 2
    assert [model.config.id2label[i] for i in range(3)] == LABELS


def test_a_causal_lm_with_tied_embeddings_quantizes_and_keeps_its_tie(tmp_path):
    src = tiny_models.llama(tmp_path / "llama", minilm_dir())
    stats = quantize_folder(src, tmp_path / "int8")
    assert stats["tied_linear_layers"] == ["lm_head"]  # tied to the embeddings: kept float
    model = load_int8(AutoModelForCausalLM, tmp_path / "int8")
    assert model.lm_head.weight is model.get_input_embeddings().weight
    parent = AutoModelForCausalLM.from_pretrained(src)
    ids = torch.tensor([[5, 9, 13, 2]])
    with torch.no_grad():
        a, b = parent(ids).logits, model(ids).logits
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max())
