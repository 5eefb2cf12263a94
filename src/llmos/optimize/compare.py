"""Comparing model versions: check the request, then submit one ``optimize.measure`` job
(``optimize/measure.py``) per version, all on the same dataset split.

Checked here, before any job exists: 2 to 8 versions, each existing, readable and listed
once, and each of a team where the caller may store results (developers); all of one task
(sequence classifiers with the same labels, or causal LMs); the dataset version exists and
has the split; the columns the measuring reads are in its stored schema. What needs the
weights or the rows — a file that does not load, a label the model does not know — fails
that version's job with the reason.

The jobs are chained with ``depends_on`` (each starts only after the one before it
succeeded), so that no two measurements ever run side by side on this machine and the
latencies compare: a version's timing never shares the cores with another's. The price:
when one version's job fails, the versions after it are not measured (their jobs end
"dependency failed"); fix that version, or leave it out, and compare again.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmos.data.datasets import DatasetService
from llmos.errors import InvalidRequest
from llmos.kernel.jobs import JobSpec, PriorityClass, ResourceSpec
from llmos.kernel.service import JobService
from llmos.models.registry import ModelRegistry, parse_ref
from llmos.schema import RequestBody
from llmos.security import names
from llmos.security.rbac import CREATE, Principal
from llmos.store.models import Job, ModelVersion
from llmos.train.errors import RecipeError
from llmos.train.recipe import parse_train_recipe
from llmos.train.service import check_columns

TASKS = ("sequence_classification", "causal_lm")
MIN_MODELS, MAX_MODELS = 2, 8


class CompareRequest(RequestBody):
    models: list[str] = Field(max_length=MAX_MODELS, description="2 to 8 versions: NAME, "
                              "NAME:VERSION or NAME@ALIAS each; the first is the baseline.")
    dataset: str = Field(min_length=1, max_length=200, description="NAME or NAME:VERSION.")
    split: str = Field(default="test", pattern=r"^(train|validation|test)$")
    fields: dict[str, Any] = Field(default_factory=dict, description="Recipe fields that "
                                   "differ from the defaults: text_field, label_field, "
                                   "max_length.")
    budget_s: float = Field(default=10.0, gt=0, le=600, description="Seconds of timing at "
                            "each batch size (slow models take up to 4x to reach 100 calls).")
    max_rows: int | None = Field(default=None, ge=1, le=1_000_000, description="Measure "
                                 "quality on the split's first rows only.")
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu=2, memory_mb=4096))
    priority: PriorityClass = "normal"


class CompareService:
    def __init__(self, jobs: JobService, registry: ModelRegistry, datasets: DatasetService):
        self.jobs, self.registry, self.datasets = jobs, registry, datasets

    def compare(self, who: Principal, req: CompareRequest) -> list[Job]:
        """One measuring job per version, in the order given, each depending on the one
        before it (see the module's docstring)."""
        versions = self._versions(who, req.models)
        task = _one_task(versions)
        try:
            recipe = parse_train_recipe({"task": task, **req.fields})
        except RecipeError as e:
            raise InvalidRequest(f"fields: {e}") from None
        if task == "causal_lm" and not recipe.text_field:
            raise InvalidRequest("fields: comparing causal LMs measures perplexity on plain "
                                 "text; name its column with text_field")
        ds_name, _, ds_ref = req.dataset.partition(":")
        ds = self.datasets.version(who, ds_name, ds_ref or "latest")
        present = sorted({s["split"] for s in ds.shards})
        if req.split not in present:
            raise InvalidRequest(f"split: dataset {ds_name}:{ds.version} has no {req.split} "
                                 f"split (splits: {', '.join(present) or 'none'})")
        check_columns(recipe, ds.schema, f"dataset {ds_name}:{ds.version}")
        self._fits(req, versions)
        jobs: list[Job] = []
        for v in versions:
            team = v.model.team
            spec = JobSpec(program="optimize.measure",
                           name=f"measure {v.model.name}:{v.version}",
                           params={"model": {"name": v.model.name, "version": v.version},
                                   "task": task,
                                   "dataset": {"name": names.for_job(team, ds.dataset.team,
                                                                     ds.dataset.name),
                                               "version": ds.version},
                                   "split": req.split, "fields": req.fields,
                                   "budget_s": req.budget_s, "max_rows": req.max_rows},
                           resources=req.resources, priority=req.priority, team=team,
                           depends_on=[jobs[-1].id] if jobs else [])
            jobs.append(self.jobs.submit(who, spec))
        return jobs

    def _fits(self, req: CompareRequest, versions: list[ModelVersion]) -> None:
        """Refuse resources no job could ever get, before the first job is submitted
        (the chain is submitted job by job)."""
        request = req.resources.to_request(self.jobs.settings.default_job_memory_mb)
        for team in sorted({v.model.team for v in versions}, key=str):
            never = self.jobs.never_runs(request, team)
            if never:
                raise InvalidRequest(f"resources: {never}")

    def _versions(self, who: Principal, refs: list[str]) -> list[ModelVersion]:
        if len(refs) < MIN_MODELS:
            raise InvalidRequest(f"models: a comparison needs {MIN_MODELS} to {MAX_MODELS} "
                                 f"versions; {len(refs)} given")
        versions, seen = [], {}
        for ref in refs:
            name, at = parse_ref(ref.strip())
            if not name or not at:
                raise InvalidRequest(f"models: {ref!r}: write NAME, NAME:VERSION or "
                                     "NAME@ALIAS")
            v = self.registry.version(who, name, at)
            who.check(CREATE, v.model.team, f"model {name}")  # results are stored on it
            if v.id in seen:
                raise InvalidRequest(f"models: {ref!r} is {name}:{v.version}, which "
                                     f"{seen[v.id]!r} names already; list each version once")
            seen[v.id] = ref
            versions.append(v)
        return versions


def _one_task(versions: list[ModelVersion]) -> str:
    """The task every version has, or a 422 naming the version that differs."""
    first = versions[0]
    for v in versions:
        if v.task not in TASKS:
            raise InvalidRequest(f"models: {v.model.name}:{v.version} is a {v.task} model; "
                                 "comparisons measure sequence classifiers (accuracy, F1) "
                                 "and causal LMs (perplexity)")
        if v.task != first.task:
            raise InvalidRequest(f"models: {v.model.name}:{v.version} is a {v.task} model "
                                 f"but {first.model.name}:{first.version} is a "
                                 f"{first.task} model; compare versions of one task")
        labels, base = (v.info or {}).get("labels"), (first.info or {}).get("labels")
        if v.task == "sequence_classification" and labels and base and \
                sorted(labels) != sorted(base):
            raise InvalidRequest(f"models: {v.model.name}:{v.version} predicts "
                                 f"{', '.join(labels)} but {first.model.name}:"
                                 f"{first.version} predicts {', '.join(base)}; compare "
                                 "classifiers of the same labels")
    return first.task
