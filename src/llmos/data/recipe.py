"""Recipes: what an ingest job does, as YAML, validated before the job starts.

    text_field: text            # jsonl / json / csv / parquet: the column holding the text
    label_field: label          # optional: a class label, used for stratified splits
    fields: [tokens, tags]      # optional: other fields kept as columns, unchanged
    steps:
      - html_to_text
      - fix_unicode
      - normalize: {form: NFC}
      - length: {min_words: 5}
      - exact_dedup
      - near_dedup: {threshold: 0.8}
      - tokenize: {tokenizer: /path/to/tokenizer}
    split: {train: 0.8, validation: 0.1, test: 0.1, seed: 42}

A step is its name alone, or its name mapped to its parameters. Steps run in three
phases, in this order: per-document steps (cleaning and filters), deduplication (which
needs every document), then annotations (tokens, words, tags) on the documents kept.
This module checks recipes; each step, its parameters among them, is defined once, where
it is implemented (``clean``, ``filters``, ``dedup``, ``annotate``), and found by name in
the ``data_steps`` kind of :mod:`llmos.extensions` (see ``steps``).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmos import extensions
from llmos.errors import InvalidRequest
from llmos.schema import load_yaml
from llmos.data.steps import PHASES, Step, StepParams


class RecipeError(ValueError):
    """A recipe that cannot run; the message says which step and why."""


class Split(BaseModel):
    """Train/validation/test fractions; deterministic by seed, stratified by the label
    column when the recipe names one."""

    model_config = ConfigDict(extra="forbid")
    train: float = Field(1.0, ge=0, le=1)
    validation: float = Field(0.0, ge=0, le=1)
    test: float = Field(0.0, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise ValueError("train + validation + test must add up to 1")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class Readers(BaseModel):
    """How files become documents."""

    model_config = ConfigDict(extra="forbid")
    txt: Literal["file", "line", "paragraph"] = "file"
    max_document_mb: int = Field(64, ge=1, le=1024)


RESERVED_COLUMNS = frozenset({"id", "text", "source", "label", "lang"})


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text_field: str = "text"
    label_field: str | None = None
    # Other fields of each record kept as columns of the same name, unchanged (e.g. the
    # tokens and BIO tags of NER data, or the messages of chat data).
    fields: list[str] = Field(default_factory=list, max_length=64)
    steps: list[StepParams] = []
    split: Split = Split()
    readers: Readers = Readers()
    shard_mb: int = Field(128, ge=1, le=4096)
    workers: int | None = Field(None, ge=1, le=256)

    @model_validator(mode="after")
    def _fields_clash_with_annotations(self) -> Recipe:
        written = set().union(*(s.step_class.writes(s) for s in self.steps))
        clash = sorted(written & set(self.fields))
        if clash:
            raise ValueError(f"fields: {', '.join(clash)} would clash with the column an "
                             "annotation step writes; rename the field or drop the step")
        return self

    @field_validator("fields")
    @classmethod
    def _field_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
                raise ValueError(f"{name!r} is not a column name (letters, digits, '_')")
            if name in RESERVED_COLUMNS:
                raise ValueError(f"{name!r} is a column llmos writes itself "
                                 f"({', '.join(sorted(RESERVED_COLUMNS))})")
        if len(set(names)) != len(names):
            raise ValueError("a field is named twice")
        return names

    def phase(self, name: str) -> list[StepParams]:
        return [s for s in self.steps if s.phase == name]

    def step(self, name: str) -> StepParams | None:
        """The parameters of the recipe's first step called ``name``, if it has one."""
        return next((s for s in self.steps if s.step == name), None)

    def to_dict(self) -> dict:
        """The recipe in its canonical form (every parameter spelled out): lineage
        records this, and ``parse_recipe`` accepts it back."""
        out = self.model_dump(exclude={"steps"})
        out["steps"] = [{s.step: s.model_dump()} for s in self.steps]
        return out


def parse_recipe(raw: Any) -> Recipe:
    """Check a recipe (already parsed from YAML or JSON); raise RecipeError naming the step
    and the parameter at fault."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a mapping with 'steps' (and optional 'split', "
                          "'text_field', 'label_field', 'readers', 'shard_mb', 'workers')")
    raw = dict(raw)
    steps_raw = raw.pop("steps", None) or []
    if not isinstance(steps_raw, list):
        raise RecipeError("'steps' is a list")
    steps = [_parse_step(i, item) for i, item in enumerate(steps_raw, 1)]
    _check_order(steps)
    try:
        return Recipe(steps=steps, **raw)
    except ValidationError as e:
        raise RecipeError(_explain(e, "recipe")) from None
    except TypeError as e:
        raise RecipeError(f"recipe: {e}") from None


def load_recipe(text: str) -> Recipe:
    """Parse YAML (or JSON) text into a checked recipe."""
    try:
        raw = load_yaml(text, "recipe")
    except InvalidRequest as e:
        raise RecipeError(str(e)) from None
    return parse_recipe(raw)


def _parse_step(index: int, item: Any) -> StepParams:
    if isinstance(item, str):
        name, params = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, params = next(iter(item.items()))
        params = {} if params is None else params
    else:
        raise RecipeError(f"step {index}: write a step as its name, or as "
                          "'name: {parameter: value}'")
    if not isinstance(name, str) or name not in extensions.data_steps:
        known = extensions.data_steps.names()
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"step {index}: unknown step {name!r}{hint}; known steps: "
                          + ", ".join(known))
    cls: type[Step] = extensions.data_steps.load(name)
    if not isinstance(params, dict):
        raise RecipeError(f"step {index} ({name}): parameters are a mapping")
    try:
        return cls.Params(**params)
    except ValidationError as e:
        raise RecipeError(_explain(e, f"step {index} ({name})", cls.Params)) from None


def _explain(e: ValidationError, where: str, cls: type[BaseModel] | None = None) -> str:
    problems = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = list((cls or Recipe).model_fields)
            problems.append(f"unknown parameter {loc!r}"
                            + (f" (parameters: {', '.join(known)})" if known else
                               " (this step takes no parameters)"))
        else:
            problems.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return f"{where}: " + "; ".join(problems)


def _check_order(steps: list[StepParams]) -> None:
    seen = 0
    for i, step in enumerate(steps, 1):
        rank = PHASES.index(step.phase)
        if rank < seen:
            raise RecipeError(
                f"step {i} ({step.step}): {_PHASE_WORDS[step.phase]} steps come "
                f"before {_PHASE_WORDS[PHASES[seen]]} steps")
        seen = rank
    names = [s.step for s in steps]
    for i, step in enumerate(steps):
        cls = step.step_class
        if cls.once and names.count(step.step) > 1:
            raise RecipeError(f"step {step.step!r} appears twice")
        for needed, why in cls.requires.items():
            if needed not in names[:i]:
                raise RecipeError(f"step {step.step!r} {why}: add {needed!r} before it")


_PHASE_WORDS = {"document": "cleaning and filter", "dedup": "deduplication",
                "annotate": "annotation"}
