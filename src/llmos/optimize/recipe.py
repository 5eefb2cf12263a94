"""Compression recipes: what an ``optimize.compress`` job does, as YAML, checked before the
job starts.

    method: prune                   # quantize | prune | distill | onnx | gguf
    prune:
      structure: ffn                # unstructured | ffn | heads
      sparsity: 0.4
      recover: {epochs: 1, optimizer: {lr: 3.0e-5}}

Each method reads the block named after it (defaults when absent) and no other:

- ``quantize: {weights: int8}`` — dynamic int8 of every linear layer (PyTorch), servable on
  the CPU by the existing engines;
- ``prune: {structure, sparsity, recover}`` — ``unstructured`` magnitude pruning (zeros), or
  ``ffn`` / ``heads``: feed-forward channels or attention heads really removed; ``recover``
  is an optional short fine-tune afterwards (training recipe fields, the task is the
  parent's) and needs a dataset;
- ``distill: {student_layers, temperature, alpha, train}`` — a student with fewer layers,
  initialised from the teacher's, trained on a dataset against the teacher's soft labels;
- ``onnx: {opset, quantize}`` — an edge bundle run by onnxruntime and tokenizers alone;
- ``gguf: {quantization}`` — a causal LM as GGUF through llama.cpp's own converter and
  quantizer, served by the ``llamacpp`` engine.

This module only describes and checks recipes; it imports neither torch nor onnx.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from llmos.errors import InvalidRequest
from llmos.schema import load_yaml
from llmos.train.errors import RecipeError
from llmos.train.recipe import TrainRecipe, parse_train_recipe

METHODS = ("quantize", "prune", "distill", "onnx", "gguf")

# The parent kinds (ModelInfo.task) each method works on.
ENCODERS = ("encoder", "masked_lm", "sequence_classification")
PARENT_TASKS = {
    "quantize": ENCODERS + ("causal_lm",),
    "prune": ENCODERS + ("causal_lm",),
    "distill": ("sequence_classification",),
    "onnx": ("encoder", "sequence_classification"),
    "gguf": ("causal_lm",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizeSpec(_Strict):
    weights: Literal["int8"] = "int8"


class PruneSpec(_Strict):
    structure: Literal["unstructured", "ffn", "heads"] = "unstructured"
    sparsity: float = Field(0.5, gt=0, lt=1)
    recover: dict[str, Any] | None = Field(
        None, description="a short fine-tune after pruning: training recipe fields")

    @field_validator("sparsity")
    @classmethod
    def _possible(cls, sparsity: float, info: ValidationInfo) -> float:
        structure = info.data.get("structure", "unstructured")
        top = 0.95 if structure == "unstructured" else 0.9
        if sparsity > top:
            raise ValueError(f"{sparsity} leaves too little of the model: at most {top} for "
                             f"{structure} pruning")
        return sparsity


class DistillSpec(_Strict):
    student_layers: int = Field(3, ge=1, le=128)
    temperature: float = Field(2.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1)
    train: dict[str, Any] = Field(default_factory=dict,
                                  description="how the student trains: training recipe fields")


class OnnxSpec(_Strict):
    opset: int = Field(17, ge=13, le=23)
    quantize: bool = True


class GgufSpec(_Strict):
    quantization: Literal["F16", "Q8_0", "Q4_K_M"] = "Q8_0"


class CompressRecipe(_Strict):
    method: Literal["quantize", "prune", "distill", "onnx", "gguf"]
    quantize: QuantizeSpec | None = None
    prune: PruneSpec | None = None
    distill: DistillSpec | None = None
    onnx: OnnxSpec | None = None
    gguf: GgufSpec | None = None

    @model_validator(mode="after")
    def _one_block(self) -> CompressRecipe:
        others = [m for m in METHODS if m != self.method and getattr(self, m) is not None]
        if others:
            raise ValueError(f"{', '.join(others)}: settings for another method than "
                             f"{self.method!r}")
        if getattr(self, self.method) is None:
            setattr(self, self.method, _SPECS[self.method]())
        return self

    @property
    def settings(self) -> BaseModel:
        """The chosen method's block."""
        return getattr(self, self.method)

    @property
    def needs_dataset(self) -> bool:
        return self.method == "distill" or (self.method == "prune"
                                            and self.prune.recover is not None)

    def training(self, task: str) -> TrainRecipe | None:
        """The training recipe of the recovery fine-tune or the student's training (the
        task is the parent's), or None when the method trains nothing."""
        if self.method == "distill":
            fields, where = self.distill.train, "distill.train"
        elif self.method == "prune" and self.prune.recover is not None:
            fields, where = self.prune.recover, "prune.recover"
        else:
            return None
        if "task" in fields and fields["task"] != task:
            raise RecipeError(f"compress recipe: {where}.task: the task is the parent's "
                              f"({task}), not {fields['task']!r}")
        try:
            return parse_train_recipe({**fields, "task": task})
        except RecipeError as e:
            raise RecipeError(f"compress recipe: {where}: "
                              f"{str(e).removeprefix('training recipe: ')}") from None

    def to_dict(self) -> dict:
        """The recipe with the chosen block spelled out (others left out)."""
        return {"method": self.method, self.method: self.settings.model_dump(mode="json")}


_SPECS = {"quantize": QuantizeSpec, "prune": PruneSpec, "distill": DistillSpec,
          "onnx": OnnxSpec, "gguf": GgufSpec}


def parse_compress_recipe(raw: dict | str | CompressRecipe) -> CompressRecipe:
    """Check a recipe given as a mapping or YAML text; raise RecipeError naming the field."""
    if isinstance(raw, CompressRecipe):
        return raw
    if isinstance(raw, str):
        try:
            raw = load_yaml(raw, "compress recipe")
        except InvalidRequest as e:
            raise RecipeError(str(e)) from None
    if not isinstance(raw, dict):
        raise RecipeError(f"a compress recipe is a mapping with 'method' ({' | '.join(METHODS)})")
    if "method" in raw and raw["method"] not in METHODS:
        raise RecipeError(f"compress recipe: method: unknown method {raw['method']!r} "
                          f"(methods: {', '.join(METHODS)})")
    try:
        return CompressRecipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_explain(e)) from None


def _explain(e: ValidationError) -> str:
    problems = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal"))]
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            owner = _SPECS.get(loc[0], CompressRecipe) if len(loc) > 1 else CompressRecipe
            problems.append(f"unknown field {where!r} (fields: {', '.join(owner.model_fields)})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
    return "compress recipe: " + "; ".join(problems)
