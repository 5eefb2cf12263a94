"""The pipeline file: what a user writes (YAML, or the SDK's builder, which gives the same
dict), as typed models — and the ``${...}`` references that connect its steps.

A pipeline has parameters (with types and defaults), steps (each a program with inputs,
parameters, resources, an optional ``map`` fan-out and ``when`` condition) and triggers.
A value that is exactly one reference (``"${steps.train.model}"``) keeps the referenced
value's type; a reference inside longer text is replaced by its text.

This module only reads and checks the file's shape; whether the graph makes sense (cycles,
programs, types of inputs) is the planner's business (``plan.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmos.errors import InvalidRequest
from llmos.kernel.jobs import PriorityClass, ResourceSpec
from llmos.schema import load_yaml

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
STEP_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")
REF = re.compile(r"\$\{\s*([^{}]*?)\s*\}")
PATH_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$|^\d+$")
MAX_STEPS = 1000
RESERVED = ("runs", "validate")  # words of the API's paths
MAX_DEPTH = 32  # nesting of lists and mappings in a pipeline file
PARAM_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list,
               "dict": dict, "any": object}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(Strict):
    type: Literal["str", "int", "float", "bool", "list", "dict", "any"] = "any"
    default: Any = None
    required: bool = False
    description: str | None = Field(default=None, max_length=1000)


class TriggerSpec(Strict):
    """Exactly one of ``dataset`` (a new version of it starts a run) or ``cron``."""

    dataset: str | None = Field(default=None, min_length=1, max_length=200)
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> TriggerSpec:
        if (self.dataset is None) == (self.cron is None):
            raise ValueError("a trigger names exactly one of 'dataset' or 'cron'")
        return self


class StepSpec(Strict):
    program: str = Field(min_length=1, max_length=1000)
    inputs: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict, description="A user program's "
                                    "outputs and their types (default: result, a value).")
    resources: ResourceSpec | None = None
    priority: PriorityClass | None = None
    max_retries: int = Field(default=0, ge=0, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    map: Any = Field(default=None, description="A list (or a reference to one): one step "
                     "per element, which ${item} names.")
    when: str | None = Field(default=None, min_length=1, max_length=1000)
    cache: bool = True
    after: list[str] = Field(default_factory=list, max_length=MAX_STEPS,
                             description="Steps this one waits for without reading them.")

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, value):
        return cpu_as_float(value)


class PipelineSpec(Strict):
    name: str
    description: str | None = Field(default=None, max_length=4000)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    steps: dict[str, StepSpec] = Field(min_length=1, max_length=MAX_STEPS)
    triggers: list[TriggerSpec] = Field(default_factory=list, max_length=20)
    overlap: Literal["skip", "queue", "cancel"] = Field(
        default="skip", description="When a trigger fires while a run is still going: skip "
        "the new run, queue it, or cancel the older one.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value) or value in RESERVED:
            raise ValueError(f"bad pipeline name {value!r}: lower-case letters, digits, '.', "
                             "'_' and '-', starting with a letter or digit, at most 100 (not "
                             f"{' or '.join(RESERVED)})")
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _param_shorthand(cls, value):
        """``lr: 0.1`` means a parameter with that default (its type from the value)."""
        if not isinstance(value, dict):
            return value
        out = {}
        for k, v in value.items():
            if isinstance(v, dict) and set(v) <= set(ParamSpec.model_fields):
                out[k] = v
            else:
                kind = next((n for n, t in (("bool", bool), ("int", int), ("float", float),
                                            ("str", str), ("list", list), ("dict", dict))
                             if isinstance(v, t)), "any")
                out[k] = {"type": kind, "default": v}
        return out

    @field_validator("steps")
    @classmethod
    def _step_names(cls, value: dict) -> dict:
        for name in value:
            if not STEP_NAME.match(name):
                raise ValueError(f"bad step name {name!r}: a letter, then letters, digits, "
                                 "'_' or '-', at most 64")
        return value


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (without recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def cpu_as_float(value: Any) -> Any:
    """Resources as YAML gives them (``cpu: 2``) for the strict models (``2.0``)."""
    if isinstance(value, dict):
        return {k: float(v) if k == "cpu" and isinstance(v, int) and not isinstance(v, bool)
                else v for k, v in value.items()}
    return value


def load(spec: dict | str) -> PipelineSpec:
    """The typed spec from a dict or YAML text; a 422 naming the field otherwise."""
    if isinstance(spec, str):
        spec = load_yaml(spec, "pipeline", MAX_DEPTH)
    if not isinstance(spec, dict):
        raise InvalidRequest("pipeline: expected a mapping with name and steps")
    if _depth(spec) > MAX_DEPTH:
        raise InvalidRequest(f"pipeline: nested more than {MAX_DEPTH} levels deep")
    try:
        return PipelineSpec.model_validate(spec)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"pipeline: {where}: {msg}" if where else f"pipeline: {msg}") from None


def fill_params(spec: PipelineSpec, given: dict | None) -> dict:
    """Every parameter's value for a run: given, else its default; 422 for an unknown one,
    a missing required one, or a value of the wrong type."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        known = ", ".join(spec.params) or "none"
        raise InvalidRequest(f"params: unknown parameter {unknown[0]!r} (parameters: {known})")
    out = {}
    for name, p in spec.params.items():
        if name in given:
            value = given[name]
        elif p.required:
            raise InvalidRequest(f"params: {name!r} is required")
        else:
            value = p.default
        if value is not None and not _is(value, p.type):
            raise InvalidRequest(f"params: {name!r} must be {p.type}, not {value!r}")
        out[name] = float(value) if p.type == "float" and isinstance(value, int) else value
    return out


def _is(value: Any, kind: str) -> bool:
    if kind in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, PARAM_TYPES[kind])


# -- references ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """``params.NAME``, ``steps.STEP.OUTPUT...`` or ``item...``, as a path of parts."""

    path: tuple[str, ...]

    @property
    def root(self) -> str:
        return self.path[0]

    @property
    def step(self) -> str | None:
        return self.path[1] if self.root == "steps" and len(self.path) > 1 else None

    def __str__(self) -> str:
        return ".".join(self.path)


def parse_ref(text: str) -> Ref:
    parts = tuple(p for p in re.split(r"\.|\[(\d+)\]", text.strip()) if p)
    if not parts or not all(PATH_PART.match(p) for p in parts):
        raise ValueError(f"bad reference ${{{text}}}")
    if parts[0] == "params" and len(parts) == 2 or parts[0] == "item":
        return Ref(parts)
    if parts[0] == "steps" and len(parts) >= 3:
        return Ref(parts)
    raise ValueError(f"bad reference ${{{text}}}: use ${{params.NAME}}, "
                     "${steps.STEP.OUTPUT} or ${item}")


def refs_in(value: Any) -> list[Ref]:
    """Every reference anywhere inside a value (strings in lists and dicts)."""
    if isinstance(value, str):
        return [parse_ref(m) for m in REF.findall(value)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs_in(v)]
    return []


def substitute(value: Any, lookup) -> Any:
    """``value`` with every reference replaced by ``lookup(ref)``; a string that is one
    whole reference becomes the value itself (any type)."""
    if isinstance(value, str):
        whole = REF.fullmatch(value.strip())
        if whole:
            return lookup(parse_ref(whole.group(1)))
        return REF.sub(lambda m: _text(lookup(parse_ref(m.group(1)))), value)
    if isinstance(value, dict):
        return {k: substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    return value


def _text(value: Any) -> str:
    if isinstance(value, dict) and {"name", "version"} <= set(value):
        return f"{value['name']}:{value['version']}"
    return str(value)
