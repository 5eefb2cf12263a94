"""Starting fine-tuning and evaluation jobs: check the request, then submit the
``train.finetune`` or ``train.evaluate`` program (``train/program.py``).

Checked here, before any job exists: the recipe (every field), that the base model and
the dataset version exist and the caller may read them, that the splits exist, that the
columns the recipe reads are in the version's stored schema, that the base model's task
suits the recipe, and that the output model name may be written. What needs the data or
the weights — a label column holding nothing, a tokenizer that does not match the model, a
loss that turns NaN, files gone missing — fails the job with that reason.

Fine-tuning jobs are checkpointable: a higher-priority job that cannot otherwise fit may
ask them to yield; they checkpoint, requeue and resume where they stopped.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmos.data.datasets import DatasetService
from llmos.errors import InvalidRequest
from llmos.kernel.jobs import JobSpec, PriorityClass, ResourceSpec
from llmos.kernel.service import JobService
from llmos.models.registry import ModelRegistry, check_model_name, parse_ref
from llmos.schema import RequestBody
from llmos.security import names
from llmos.security.rbac import CREATE, Principal
from llmos.store.models import Job, Model
from llmos.train.data import required_columns
from llmos.train.errors import RecipeError
from llmos.train.recipe import TrainRecipe, parse_train_recipe

# Which base models each task can start from.
BASES = {
    "sequence_classification": ("encoder", "masked_lm", "sequence_classification"),
    "token_classification": ("encoder", "masked_lm", "token_classification"),
    "causal_lm": ("causal_lm",),
}


class TrainingJobFields(RequestBody):
    """What every request for a job that trains into a new model version also says (fine-tuning
    here, compression in ``optimize``): the splits it reads, the team and the job's limits."""

    train_split: str = Field(default="train", pattern=r"^(train|validation|test)$")
    validation_split: str | None = Field(default="validation",
                                         pattern=r"^(train|validation|test)$")
    test_split: str | None = Field(default="test", pattern=r"^(train|validation|test)$")
    team: str | None = Field(default=None, min_length=1, max_length=100)
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu=2, memory_mb=4096))
    priority: PriorityClass = "normal"
    max_retries: int = Field(default=0, ge=0, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)


class FinetuneRequest(TrainingJobFields):
    recipe: dict[str, Any] | str = Field(description="The training recipe, as an object or "
                                         "YAML text.")
    model: str = Field(min_length=1, max_length=200,
                       description="Base model: NAME, NAME:VERSION or NAME@ALIAS.")
    dataset: str = Field(min_length=1, max_length=200, description="NAME or NAME:VERSION.")
    output: str = Field(min_length=1, max_length=100,
                        description="The model the result is registered as (a new version).")
    tokenizer: str | None = Field(default=None, min_length=1, max_length=200,
                                  description="Train with this model's tokenizer instead.")


class EvaluateRequest(RequestBody):
    model: str = Field(min_length=1, max_length=200)
    dataset: str = Field(min_length=1, max_length=200)
    split: str = Field(default="test", pattern=r"^(train|validation|test)$")
    fields: dict[str, Any] = Field(default_factory=dict, description="Recipe fields that "
                                   "differ from the defaults: text_field, label_field, ...")
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu=2, memory_mb=4096))
    priority: PriorityClass = "normal"


class TrainService:
    def __init__(self, jobs: JobService, registry: ModelRegistry, datasets: DatasetService):
        self.jobs, self.registry, self.datasets = jobs, registry, datasets

    def finetune(self, who: Principal, req: FinetuneRequest) -> Job:
        try:
            recipe = parse_train_recipe(req.recipe)
        except RecipeError as e:
            raise InvalidRequest(str(e)) from None
        name, ref = parse_ref(req.model)
        base = self.registry.version(who, name, ref)
        if base.task not in BASES[recipe.task]:
            raise InvalidRequest(f"{name}:{base.version} is a {base.task} model; a "
                                 f"{recipe.task} recipe starts from "
                                 f"{' or '.join(BASES[recipe.task])}")
        t = None
        if req.tokenizer:
            t_name, t_ref = parse_ref(req.tokenizer)
            t = self.registry.version(who, t_name, t_ref)
        ds, splits = training_splits(self.datasets, who, req, recipe)
        team = output_team(self.jobs, who, req, base.model.team)
        check_torch_weights(name, base, "fine-tuned", quantized_ok=False)
        # The job names what it reads as seen from its own team (names are per team).
        tokenizer = t and {"model": names.for_job(team, t.model.team, t.model.name),
                           "version": t.version}
        spec = JobSpec(program="train.finetune", name=f"train {req.output}",
                       params={"recipe": recipe.to_dict(),
                               "base": {"model": names.for_job(team, base.model.team,
                                                               base.model.name),
                                        "version": base.version},
                               "dataset": {"name": names.for_job(team, ds.dataset.team,
                                                                 ds.dataset.name),
                                           "version": ds.version},
                               "splits": splits, "output": req.output, "tokenizer": tokenizer},
                       resources=req.resources, priority=req.priority, team=team,
                       checkpointable=True, max_retries=req.max_retries,
                       timeout_s=req.timeout_s)
        return self.jobs.submit(who, spec)

    def evaluate(self, who: Principal, req: EvaluateRequest) -> Job:
        name, ref = parse_ref(req.model)
        v = self.registry.version(who, name, ref)
        task = v.task if v.task in BASES else None
        if task is None:
            raise InvalidRequest(f"{name}:{v.version} is a {v.task} model; evaluation is for "
                                 "sequence_classification, token_classification and causal_lm")
        try:
            recipe = parse_train_recipe({"task": task, **req.fields})
        except RecipeError as e:
            raise InvalidRequest(str(e)) from None
        ds_name, _, ds_ref = req.dataset.partition(":")
        ds = self.datasets.version(who, ds_name, ds_ref or "latest")
        if req.split not in {s["split"] for s in ds.shards}:
            raise InvalidRequest(f"dataset {ds_name}:{ds.version} has no {req.split} split")
        check_columns(recipe, ds.schema, f"dataset {ds_name}:{ds.version}")
        who.check(CREATE, v.model.team, f"model {name}")
        check_torch_weights(name, v, "evaluated (`llmos models compare` measures any format)")
        spec = JobSpec(program="train.evaluate", name=f"evaluate {name}:{v.version}",
                       params={"model": {"name": v.model.name, "version": v.version},
                               "task": task,
                               "dataset": {"name": names.for_job(v.model.team, ds.dataset.team,
                                                                 ds.dataset.name),
                                           "version": ds.version},
                               "split": req.split, "fields": req.fields},
                       resources=req.resources, priority=req.priority, team=v.model.team)
        return self.jobs.submit(who, spec)


def training_splits(datasets: DatasetService, who: Principal, req, recipe: TrainRecipe
                    ) -> tuple[Any, dict]:
    """The dataset version ``req.dataset`` names and the splits a training job reads from it:
    422 without the training split or a column the recipe reads."""
    ds_name, _, ds_ref = req.dataset.partition(":")
    ds = datasets.version(who, ds_name, ds_ref or "latest")
    present = {s["split"] for s in ds.shards}
    if req.train_split not in present:
        raise InvalidRequest(f"dataset {ds_name}:{ds.version} has no {req.train_split} "
                             f"split (splits: {', '.join(sorted(present)) or 'none'})")
    check_columns(recipe, ds.schema, f"dataset {ds_name}:{ds.version}")
    return ds, {"train": req.train_split,
                "validation": req.validation_split if req.validation_split in present else None,
                "test": req.test_split if req.test_split in present else None}


def output_team(jobs: JobService, who: Principal, req, default_team: str) -> str:
    """The team whose model ``req.output`` the result is registered as: the asked-for team,
    else the caller's team that has the name (a new version), else ``default_team`` (the
    base model's; names are per team: other teams' do not matter)."""
    check_model_name(req.output)
    with jobs.db.session() as s:
        team, _, _ = names.for_create(s, who, Model, "model", req.output,
                                      asked=req.team, default=default_team)
    return team


def check_torch_weights(name: str, version, purpose: str, quantized_ok: bool = True) -> None:
    """422 unless the version holds weights torch trains and evaluates: safetensors (an ONNX
    or GGUF export holds none), and, for training, not int8-quantized ones."""
    paths = [f["path"] for f in version.info.get("files", [])]
    what = None
    if not any(p.endswith(".safetensors") for p in paths):
        # (a folder with no weights at all fails its job, naming what is missing)
        what = ("an ONNX export" if "model.onnx" in paths else "a GGUF export"
                if any(p.endswith(".gguf") for p in paths) else None)
    elif not quantized_ok and "int8" in version.info.get("dtypes", []):
        what = "int8-quantized"
    if what:
        raise InvalidRequest(f"{name}:{version.version} is {what}; it cannot be {purpose}: "
                             "use the version it was made from")


def check_columns(recipe: TrainRecipe, schema: dict, where: str) -> None:
    """422 when the dataset version's stored schema lacks a column the recipe reads,
    naming the column, the recipe field that names it and the columns there are."""
    if not schema:  # a version stored without its schema: the job checks the shards
        return
    for column in required_columns(recipe):
        if column not in schema:
            field = next((k for k, v in recipe.to_dict().items()
                          if k.endswith("_field") and v == column), "field")
            raise InvalidRequest(f"{where} has no {column!r} column (the recipe's {field}); "
                                 f"its columns: {', '.join(schema)}")
