"""Compression recipes are checked whole before any job, each mistake naming its field."""

import pytest

from llmos.optimize.recipe import parse_compress_recipe
from llmos.train.errors import RecipeError


def test_a_method_alone_takes_its_defaults():
    rec = parse_compress_recipe("method: quantize")
    assert rec.to_dict() == {"method": "quantize", "quantize": {"weights": "int8"}}
    assert parse_compress_recipe({"method": "gguf"}).gguf.quantization == "Q8_0"
    assert parse_compress_recipe({"method": "onnx"}).onnx.quantize is True


def test_training_recipes_take_the_parents_task():
    rec = parse_compress_recipe({"method": "prune", "prune": {
        "structure": "ffn", "sparsity": 0.4, "recover": {"epochs": 1,
                                                         "optimizer": {"lr": 3e-5}}}})
    assert rec.needs_dataset
    train = rec.training("sequence_classification")
    assert (train.task, train.epochs, train.optimizer.lr) == ("sequence_classification", 1, 3e-5)
    distill = parse_compress_recipe({"method": "distill", "distill": {"student_layers": 2}})
    assert distill.needs_dataset and distill.training("sequence_classification").epochs is None
    assert not parse_compress_recipe({"method": "prune"}).needs_dataset


@pytest.mark.parametrize("raw, says", [
    ({"method": "shrink"}, "method: unknown method 'shrink' (methods: quantize, prune, distill"),
    ({}, "method: Field required"),
    ("[1, 2]", "a compress recipe is a mapping"),
    ("method: [", "not valid YAML"),
    ("a: &a [1, 2]\nmethod: quantize\nb: [*a, *a]", "YAML aliases (*name) are not accepted"),
    ("method: quantize\nquantize: " + "[" * 40 + "]" * 40, "nested more than 32 levels"),
    ({"method": "prune", "prune": {"sparsity": 1.0}}, "prune.sparsity"),
    ({"method": "prune", "prune": {"sparsity": 0}}, "prune.sparsity"),
    ({"method": "prune", "prune": {"structure": "ffn", "sparsity": 0.95}},
     "prune.sparsity: 0.95 leaves too little of the model: at most 0.9 for ffn pruning"),
    ({"method": "prune", "prune": {"structure": "rows"}}, "prune.structure"),
    ({"method": "quantize", "prune": {"sparsity": 0.5}},
     "prune: settings for another method than 'quantize'"),
    ({"method": "gguf", "gguf": {"quantization": "Q3"}}, "gguf.quantization"),
    ({"method": "onnx", "onnx": {"opset": 7}}, "onnx.opset"),
    ({"method": "distill", "distill": {"student_layers": 0}}, "distill.student_layers"),
    ({"method": "distill", "distill": {"teacher": "x"}}, "unknown field 'distill.teacher'"),
    ({"method": "quantize", "bits": 4}, "unknown field 'bits'"),
])
def test_bad_recipes_are_refused_naming_the_field(raw, says):
    with pytest.raises(RecipeError) as e:
        parse_compress_recipe(raw)
    assert says in str(e.value)


def test_a_bad_training_block_is_named_with_its_place():
    rec = parse_compress_recipe({"method": "distill", "distill": {"train": {"epochs": 0}}})
    with pytest.raises(RecipeError, match=r"compress recipe: distill.train: epochs"):
        rec.training("sequence_classification")
    rec = parse_compress_recipe({"method": "prune", "prune": {
        "recover": {"task": "causal_lm"}}})
    with pytest.raises(RecipeError, match=r"prune.recover.task: the task is the parent's"):
        rec.training("sequence_classification")


def test_the_example_recipes_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "examples" / "optimize"
    methods = set()
    for path in sorted(folder.glob("*.yaml")):
        rec = parse_compress_recipe(path.read_text())
        rec.training("sequence_classification")
        methods.add(rec.method)
    assert methods == {"quantize", "prune", "distill", "onnx", "gguf"}
