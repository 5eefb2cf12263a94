"""Starting a compression job: check the request, then submit the ``optimize.compress``
program (``optimize/program.py``).

Checked here, before any job exists: the recipe (every field, the recovery or student
training recipe included), that the parent version exists and the caller may read it, that
the method suits the parent's kind (GGUF export is for causal LMs; ONNX, pruning and
distillation for encoders and classifiers), that a method that trains has a dataset with a
training split and the columns its recipe reads, and that the output model name may be
written. What needs the weights — an architecture the converter does not know, a model the
exporter cannot trace — fails the job with that reason.

Jobs that train (distillation, pruning with recovery) are checkpointable like fine-tuning.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from llmos.data.datasets import DatasetService
from llmos.errors import InvalidRequest
from llmos.kernel.jobs import JobSpec
from llmos.kernel.service import JobService
from llmos.models.registry import ModelRegistry, parse_ref
from llmos.optimize.recipe import PARENT_TASKS, CompressRecipe, parse_compress_recipe
from llmos.security import names
from llmos.security.rbac import Principal
from llmos.store.models import Job
from llmos.train.errors import RecipeError
from llmos.train.service import (TrainingJobFields, check_torch_weights, output_team,
                                 training_splits)


class CompressRequest(TrainingJobFields):
    recipe: dict[str, Any] | str = Field(description="The compression recipe, as an object "
                                         "or YAML text.")
    model: str = Field(min_length=1, max_length=200,
                       description="Parent model: NAME, NAME:VERSION or NAME@ALIAS.")
    output: str = Field(min_length=1, max_length=100,
                        description="The model the result is registered as (a new version).")
    dataset: str | None = Field(default=None, min_length=1, max_length=200,
                                description="NAME or NAME:VERSION: what distillation and "
                                "recovery fine-tuning train on.")


class CompressService:
    def __init__(self, jobs: JobService, registry: ModelRegistry, datasets: DatasetService):
        self.jobs, self.registry, self.datasets = jobs, registry, datasets

    def compress(self, who: Principal, req: CompressRequest) -> Job:
        recipe = _recipe(req.recipe)
        name, ref = parse_ref(req.model)
        parent = self.registry.version(who, name, ref)
        kinds = PARENT_TASKS[recipe.method]
        if parent.task not in kinds:
            raise InvalidRequest(f"model: {name}:{parent.version} is a {parent.task} model; "
                                 f"{recipe.method} works on {' or '.join(kinds)} models")
        if recipe.method == "prune" and recipe.prune.structure == "heads" \
                and parent.task != "causal_lm":
            raise InvalidRequest("prune.structure: heads are removed from Llama-style causal "
                                 "LMs only (transformers cannot load a BERT-style model with "
                                 "heads removed); use structure: ffn")
        training = _training(recipe, parent.task)
        team = output_team(self.jobs, who, req, parent.model.team)
        check_torch_weights(name, parent, f"compressed again ({recipe.method})",
                            quantized_ok=False)
        dataset, splits = None, None
        if recipe.needs_dataset:
            dataset, splits = self._dataset(who, req, training, team)
        elif req.dataset:
            raise InvalidRequest(f"dataset: {recipe.method} trains nothing; give a dataset "
                                 "only to distill or to prune with recover")
        if recipe.method == "distill":
            self._check_student(who, name, parent, recipe.distill.student_layers)
        spec = JobSpec(program="optimize.compress",
                       name=f"{recipe.method} {name}:{parent.version} -> {req.output}",
                       params={"recipe": recipe.to_dict(),
                               "parent": {"model": names.for_job(team, parent.model.team,
                                                                 parent.model.name),
                                          "version": parent.version},
                               "dataset": dataset, "splits": splits, "output": req.output},
                       resources=req.resources, priority=req.priority, team=team,
                       checkpointable=training is not None, max_retries=req.max_retries,
                       timeout_s=req.timeout_s)
        return self.jobs.submit(who, spec)

    def _check_student(self, who: Principal, name: str, parent, layers: int) -> None:
        """A student has fewer layers than its teacher (read from the stored config.json)."""
        config = next((f for f in parent.files if f["path"] == "config.json"), None)
        if config is None:
            return  # the job says what is wrong with the folder
        _, chunks = self.registry.artifacts.open(who, config["artifact_id"])
        try:
            teacher = json.loads(b"".join(chunks)).get("num_hidden_layers")
        except (ValueError, AttributeError):
            return
        if isinstance(teacher, int) and layers >= teacher:
            raise InvalidRequest(f"distill.student_layers: {layers} is not fewer than the "
                                 f"{teacher} layers of {name}:{parent.version}")

    def _dataset(self, who: Principal, req: CompressRequest, training, team: str
                 ) -> tuple[dict, dict]:
        if not req.dataset:
            raise InvalidRequest("dataset: this recipe trains (distill, or prune with "
                                 "recover); name the dataset it trains on")
        ds, splits = training_splits(self.datasets, who, req, training)
        return ({"name": names.for_job(team, ds.dataset.team, ds.dataset.name),
                 "version": ds.version}, splits)


def _recipe(raw) -> CompressRecipe:
    try:
        return parse_compress_recipe(raw)
    except RecipeError as e:
        raise InvalidRequest(str(e)) from None


def _training(recipe: CompressRecipe, task: str):
    """The recipe's training (recovery or student), checked against the parent's kind."""
    if recipe.needs_dataset and task != "sequence_classification":
        where = "distill" if recipe.method == "distill" else "prune.recover"
        raise InvalidRequest(f"{where}: training after compression is for "
                             f"sequence_classification models, not {task}")
    try:
        return recipe.training(task)
    except RecipeError as e:
        raise InvalidRequest(str(e)) from None

