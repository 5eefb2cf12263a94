"""Tuning recipes: what a study searches, how, and what each trial runs — checked whole
before any job starts, every refusal naming its field ("tune recipe: space.optimizer.lr:
...").

A trial is either a fine-tuning job (``train.finetune`` through the training service)
whose recipe is ``train`` with the sampled values set at their dotted paths::

    name: lr-search
    model: minilm-cls            # the base model of every trial
    dataset: reviews
    output: reviews-tuned        # each trial registers a version of it; the best gets `best`
    train: {task: sequence_classification, epochs: 2, eval_every: 20}
    space:
      optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      batch_size: {type: categorical, choices: [8, 16, 32]}
    objective: {metric: eval_accuracy, direction: maximize}
    trials: 12
    parallel: 2
    sampler: {name: tpe, seed: 0}
    pruner: {name: asha, min_resource: 20, reduction_factor: 3}

or any program (``program: /abs/file.py:function`` or a registered name), called with
``params`` plus the sampled values as keyword arguments, reporting the objective through
``ctx.metric(name, value, step)`` (or returning it in its result).

This module only describes recipes and turns them into Optuna's objects (distributions,
sampler, pruner); the driver (``tune_driver``) runs studies.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmos.errors import InvalidRequest
from llmos.kernel.jobs import PriorityClass, ResourceSpec
from llmos.schema import load_yaml
from llmos.train.errors import RecipeError
from llmos.train.recipe import (TASK_METRICS, EarlyStopping, LoraSpec, OptimizerSpec,
                                ScheduleSpec, TrainRecipe, parse_train_recipe)
from llmos.train.recipe import StrictSpec as _Strict  # with the ``sampler: tpe`` shorthand

NESTED = {"lora": LoraSpec, "optimizer": OptimizerSpec, "schedule": ScheduleSpec,
          "early_stopping": EarlyStopping}
MAX_GRID = 100_000
MAX_TRIALS = 10_000
ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Dimension(_Strict):
    """One searched value: a float or int range (optionally log-scaled or stepped), or a
    list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _values(self) -> Dimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical dimension needs at least one choice")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("low, high, log and step apply to float and int, not "
                                 "categorical")
            return self
        if self.choices is not None:
            raise ValueError(f"choices apply to categorical, not {self.type}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} dimension needs low and high")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high are finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g}): the "
                             "range holds no values")
        if self.log and self.low <= 0:
            raise ValueError("log needs low > 0")
        if self.log and self.step:
            raise ValueError("log and step do not go together")
        if self.type == "int":
            for what in ("low", "high", "step"):
                v = getattr(self, what)
                if v is not None and v != int(v):
                    raise ValueError(f"{what}: an int dimension takes whole numbers")
        if self.step and self.step > self.high - self.low:
            raise ValueError(f"step ({self.step:g}) is wider than the range: one value only")
        return self

    def distribution(self):
        from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                          IntDistribution)

        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list | None:
        """Every value, for the grid sampler (None: a float range without a step)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "float" and not self.step:
            return None
        step = self.step or 1
        span = (self.high - self.low) / step
        if not math.isfinite(span) or span >= MAX_GRID:
            return list(range(MAX_GRID + 1))  # refused by the caller: too many
        n = int(math.floor(span + 1e-9)) + 1
        values = [self.low + i * step for i in range(n)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12)
                                                                    for v in values]

    def ends(self) -> list:
        """The extreme values (each must be a valid recipe value)."""
        if self.type == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low,
                                                                            self.high]


class Objective(_Strict):
    metric: str = Field(min_length=1, max_length=200)
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerSpec(_Strict):
    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = Field(None, ge=0, lt=2**32)
    n_startup_trials: int | None = Field(None, ge=0, description="tpe: random trials first")

    @model_validator(mode="after")
    def _fits(self) -> SamplerSpec:
        if self.n_startup_trials is not None and self.name != "tpe":
            raise ValueError("n_startup_trials applies to the tpe sampler")
        return self


_PRUNER_FIELDS = {"median": {"n_startup_trials", "n_warmup_steps", "interval_steps"},
                  "asha": {"min_resource", "reduction_factor", "min_early_stopping_rate"},
                  "hyperband": {"min_resource", "max_resource", "reduction_factor"},
                  "none": set()}


class PrunerSpec(_Strict):
    """median (Optuna's MedianPruner), asha (SuccessiveHalvingPruner), hyperband, none.
    Steps are the ``step`` the trials report their objective at."""

    name: Literal["median", "asha", "hyperband", "none"] = "median"
    n_startup_trials: int | None = Field(None, ge=0)
    n_warmup_steps: int | None = Field(None, ge=0)
    interval_steps: int | None = Field(None, ge=1)
    min_resource: int | Literal["auto"] | None = None
    max_resource: int | Literal["auto"] | None = None
    reduction_factor: int | None = Field(None, ge=2)
    min_early_stopping_rate: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> PrunerSpec:
        given = {k for k in _PRUNER_FIELDS["median"] | _PRUNER_FIELDS["asha"]
                 | _PRUNER_FIELDS["hyperband"] if getattr(self, k) is not None}
        wrong = given - _PRUNER_FIELDS[self.name]
        if wrong:
            raise ValueError(f"{', '.join(sorted(wrong))} does not apply to the {self.name} "
                             f"pruner (its fields: "
                             f"{', '.join(sorted(_PRUNER_FIELDS[self.name])) or 'none'})")
        for k in ("min_resource", "max_resource"):
            v = getattr(self, k)
            if isinstance(v, int) and v < 1:
                raise ValueError(f"{k}: at least 1 (or auto)")
        return self

    def make(self):
        import optuna.pruners as p

        given = {k: getattr(self, k) for k in _PRUNER_FIELDS[self.name]
                 if getattr(self, k) is not None}
        if self.name == "median":
            return p.MedianPruner(**given)
        if self.name == "asha":
            return p.SuccessiveHalvingPruner(**given)
        if self.name == "hyperband":
            return p.HyperbandPruner(**given)
        return p.NopPruner()


class TuneRecipe(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # a trial fine-tunes ...
    model: str | None = Field(None, min_length=1, max_length=200)
    dataset: str | None = Field(None, min_length=1, max_length=200)
    output: str | None = Field(None, min_length=1, max_length=100)
    train: dict[str, Any] | None = None
    # ... or runs a program
    program: str | None = Field(None, min_length=1, max_length=1000)
    params: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Dimension] = Field(min_length=1)
    objective: Objective
    trials: int = Field(20, ge=1, le=MAX_TRIALS)
    parallel: int = Field(1, ge=1, le=256)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    resources: ResourceSpec | None = None
    priority: PriorityClass = "normal"
    team: str | None = Field(None, min_length=1, max_length=100)

    @property
    def mode(self) -> str:
        return "train" if self.program is None else "program"

    @model_validator(mode="after")
    def _consistent(self) -> TuneRecipe:
        train = {"model": self.model, "dataset": self.dataset, "output": self.output,
                 "train": self.train}
        if self.program is not None:
            given = [k for k, v in train.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: a study runs a program or fine-tunes "
                                 "a model, not both")
        else:
            missing = [k for k, v in train.items() if v is None]
            if missing:
                raise ValueError(f"a study fine-tunes (model, dataset, output, train) or runs "
                                 f"a program (program, params); missing: {', '.join(missing)}")
            if self.params:
                raise ValueError("params: for a program study; a fine-tuning study sets "
                                 "fields in train")
        return self


def parse_tune_recipe(raw: dict | str | TuneRecipe) -> TuneRecipe:
    """Check a tuning recipe (a mapping, or YAML/JSON text); raise RecipeError naming the
    field at fault."""
    if isinstance(raw, TuneRecipe):
        return raw
    if isinstance(raw, str):
        try:
            raw = load_yaml(raw, "tune recipe")
        except InvalidRequest as e:
            raise RecipeError(str(e)) from None
    if not isinstance(raw, dict):
        raise RecipeError("tune recipe: a mapping with name, space, objective and either "
                          "program or model/dataset/output/train")
    try:
        recipe = TuneRecipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_explain(e)) from None
    if recipe.mode == "train":
        _check_train(recipe)
    else:
        _check_program(recipe)
    _check_sampler(recipe)
    return recipe


def _explain(e: ValidationError) -> str:
    problems = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith((
            "function-after", "function-before", "literal[", "int", "float", "str", "bool",
            "none"))]
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown field {where!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
    return "tune recipe: " + "; ".join(dict.fromkeys(problems))


def _fail(field: str, msg: str) -> RecipeError:
    return RecipeError(f"tune recipe: {field}: {msg}")


def set_path(recipe: dict, path: str, value: Any) -> dict:
    """A copy of ``recipe`` with ``value`` at the dotted ``path`` (``optimizer.lr``)."""
    out = {**recipe}
    head, _, rest = path.partition(".")
    if rest:
        inner = out.get(head)
        out[head] = set_path(inner if isinstance(inner, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def trial_recipe(recipe: TuneRecipe, values: dict[str, Any]) -> dict:
    """The training recipe of a trial: ``train`` with each sampled value at its path."""
    train = dict(recipe.train or {})
    for path, value in values.items():
        train = set_path(train, path, value)
    return parse_train_recipe(train).to_dict()


def _check_train(recipe: TuneRecipe) -> None:
    try:
        base = parse_train_recipe(recipe.train)
    except RecipeError as e:
        raise RecipeError(f"tune recipe: train: {str(e).removeprefix('training recipe: ')}"
                          ) from None
    for path, dim in recipe.space.items():
        parts = path.split(".")
        owner = TrainRecipe if len(parts) == 1 else NESTED.get(parts[0])
        if len(parts) > 2 or owner is None or parts[-1] not in owner.model_fields or (
                len(parts) == 1 and parts[0] in NESTED) or parts[0] == "task":
            raise _fail(f"space.{path}", "not a field of the training recipe (searchable: "
                        "lr as optimizer.lr, batch_size, epochs, schedule.warmup_ratio, "
                        "lora.r, ...)")
        for value in dim.ends():
            try:
                trial_recipe(recipe, {path: value})
            except RecipeError as e:
                raise _fail(f"space.{path}", f"the value {value!r} is refused by the "
                            f"training recipe ({str(e).removeprefix('training recipe: ')})"
                            ) from None
    metrics = TASK_METRICS[base.task]
    allowed = list(metrics) + [f"test_{m.removeprefix('eval_')}" for m in metrics
                               if m != "eval_loss"]
    if recipe.objective.metric not in allowed:
        raise _fail("objective.metric", f"{recipe.objective.metric!r} is not a metric "
                    f"{base.task} training reports (metrics: {', '.join(allowed)})")
    if recipe.pruner.name != "none" and base.eval_every is None and not any(
            p == "eval_every" for p in recipe.space):
        raise _fail("pruner", f"the {recipe.pruner.name} pruner needs intermediate values: "
                    "set train.eval_every (or pruner: none)")
    if recipe.pruner.name != "none" and recipe.objective.metric.startswith("test_"):
        raise _fail("pruner", "test_ metrics are reported once, at the end: prune on an "
                    "eval_ metric (or pruner: none)")


def _check_program(recipe: TuneRecipe) -> None:
    for name in recipe.space:
        if not ARG.match(name):
            raise _fail(f"space.{name}", "a program study's dimensions are its keyword "
                        "arguments: plain names")
        if name in recipe.params:
            raise _fail(f"space.{name}", "also given in params: a value is searched or "
                        "fixed, not both")


def _check_sampler(recipe: TuneRecipe) -> None:
    if recipe.sampler.name != "grid":
        return
    size = 1
    for path, dim in recipe.space.items():
        values = dim.grid()
        if values is None:
            raise _fail(f"space.{path}", "the grid sampler needs a step for a float range "
                        "(or choices)")
        size *= len(values)
        if size > MAX_GRID:
            raise _fail("space", f"the grid has more than {MAX_GRID} points")
    if recipe.trials > size:
        raise _fail("trials", f"{recipe.trials} trials but the grid has {size} point(s); "
                    f"at most {size}")


def grid_space(recipe: TuneRecipe) -> dict[str, list]:
    return {path: dim.grid() for path, dim in recipe.space.items()}


def distributions(recipe: TuneRecipe) -> dict:
    return {path: dim.distribution() for path, dim in recipe.space.items()}


def make_sampler(recipe: TuneRecipe, offset: int = 0):
    """The recipe's sampler. ``offset`` (the trials there are already) moves the seed on,
    so a driver that loads a study again does not draw its first values again."""
    import optuna.samplers as s

    spec = recipe.sampler
    seed = None if spec.seed is None else (spec.seed + offset) % 2**32
    if spec.name == "grid":
        return s.GridSampler(grid_space(recipe), seed=seed)
    if spec.name == "random":
        return s.RandomSampler(seed=seed)
    kwargs = {} if spec.n_startup_trials is None else {"n_startup_trials":
                                                        spec.n_startup_trials}
    return s.TPESampler(seed=seed, constant_liar=recipe.parallel > 1, **kwargs)
