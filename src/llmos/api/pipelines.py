"""/v1/pipelines: validate a pipeline, run it, register it with its triggers (apply), and
list, show, cancel and resume its runs. The routes parse and answer; the pipeline service
(``pipelines/service.py``) plans, runs and checks who may do what."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor

from llmos.api.gate import current, needs
from llmos.api.names import QualifiedName
from llmos.api.schemas import ERRORS
from llmos.pipelines import PipelineService
from llmos.schema import INT32_MAX, RequestBody
from llmos.security.rbac import Principal
from llmos.store.models import Pipeline, PipelineRun, PipelineStep, PipelineTrigger

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])
Who = Depends(current)
# Every change answers with what it changed: "write" and "read", checked before it is made.
Runs = needs("write", "read", what="run pipelines")
Changes = needs("write", "read", what="change pipelines")
RunId = PathParam(ge=1, le=INT32_MAX, description="Pipeline run id")
Name = PathParam(min_length=1, max_length=200, description="Pipeline name, or TEAM/NAME")
RUN_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
# A pipeline's spec: the parsed object, or the text of a pipeline file (YAML).
Spec = dict[str, Any] | Annotated[str, Field(min_length=1, max_length=1_000_000)]


class PipelineName(Convertor):
    """A pipeline's name, or TEAM/NAME, but never the routes' own words (``runs``,
    ``validate``) as its first segment: /v1/pipelines/runs/7 is a run, not a name."""

    regex = rf"(?!(?:runs|validate)(?:/|$)){QualifiedName.regex}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        return str(value)


register_url_convertor("pipeline_name", PipelineName())


class ValidateRequest(RequestBody):
    spec: Spec = Field(description="The pipeline: an object, or the text of its YAML file.")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameter values "
                                   "(the spec's defaults fill the rest).")
    team: str | None = Field(default=None, min_length=1, max_length=100,
                             description="The team it would run for (default: yours).")


class RunRequest(ValidateRequest):
    no_cache: bool = Field(default=False, description="Run every step, reusing no cached "
                           "result.")


class ApplyRequest(RequestBody):
    spec: Spec = Field(description="The pipeline: an object, or the text of its YAML file.")
    team: str | None = Field(default=None, min_length=1, max_length=100,
                             description="Register it in this team (default: yours).")


class PlanStep(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    program: str
    needs: list[str] = Field(description="The steps it waits for.")
    map: bool = Field(default=False, description="Whether it fans out over a list.")
    control: bool = Field(default=False, description="Whether the engine runs it itself "
                          "(promote, rollout) rather than as a job.")
    outputs: dict[str, str] = Field(default_factory=dict, description="Its outputs and "
                                    "their types.")


class PlanOut(BaseModel):
    """What would run: every parameter's value and each step with the steps it needs."""

    model_config = ConfigDict(extra="allow")

    name: str
    params: dict[str, Any]
    steps: list[PlanStep]


class StepOut(BaseModel):
    name: str = Field(description="The step's name, with its element in a map: train[2].")
    step: str = Field(description="Its name in the spec.")
    index: int | None
    state: str
    reason: str | None
    job_id: int | None
    cache_key: str | None
    cached_from: int | None = Field(description="The step (row id) whose result it reused.")
    cached_from_run: int | None = Field(description="The run that step belongs to.")
    inputs: dict[str, Any] | None
    outputs: dict[str, Any] | None
    detail: dict[str, Any] | None = Field(description="A control step's own record (a "
                                          "promotion's comparison, a rollout's window).")
    started_at: datetime | None
    ended_at: datetime | None

    @classmethod
    def of(cls, s: PipelineStep, runs: dict[int, int]) -> StepOut:
        return cls(name=s.name, step=s.step, index=s.index, state=s.state, reason=s.reason,
                   job_id=s.job_id, cache_key=s.cache_key, cached_from=s.cached_from,
                   cached_from_run=runs.get(s.cached_from) if s.cached_from else None,
                   inputs=s.inputs, outputs=s.outputs, detail=s.detail,
                   started_at=s.started_at, ended_at=s.ended_at)


class RunOut(BaseModel):
    id: int
    pipeline: str
    team: str | None
    owner: str
    state: str
    reason: str | None
    trigger: str
    params: dict[str, Any]
    no_cache: bool
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    step_states: dict[str, int] | None = Field(
        default=None, description="How many steps are in each state.")
    steps: list[StepOut] | None = Field(default=None, description="Every step (one run "
                                        "only; a list of runs leaves them out).")


class RunList(BaseModel):
    runs: list[RunOut]


class TriggerOut(BaseModel):
    kind: str = Field(description="dataset or cron.")
    target: str = Field(description="The dataset's name, or the cron line.")
    params: dict[str, Any]
    overlap: str = Field(description="When a run is still going: skip, queue or cancel.")
    last_fired_at: datetime | None
    last_version: int | None

    @classmethod
    def of(cls, t: PipelineTrigger) -> TriggerOut:
        return cls(kind=t.kind, target=t.target, params=t.params or {}, overlap=t.overlap,
                   last_fired_at=t.last_fired_at, last_version=t.last_version)


class PipelineOut(BaseModel):
    name: str
    team: str | None
    owner: str
    created_at: datetime
    updated_at: datetime
    spec: dict[str, Any]
    triggers: list[TriggerOut]


class PipelineList(BaseModel):
    pipelines: list[PipelineOut]


def _service(request: Request) -> PipelineService:
    return request.app.state.system.pipelines


def _run_out(request: Request, run: PipelineRun, steps: bool = True) -> RunOut:
    out = RunOut(id=run.id, pipeline=run.pipeline.name, team=run.team, owner=run.owner,
                 state=run.state, reason=run.reason, trigger=run.trigger,
                 params=run.params or {}, no_cache=run.no_cache, created_at=run.created_at,
                 started_at=run.started_at, ended_at=run.ended_at)
    if steps:
        runs = _service(request).origin_runs([s.cached_from for s in run.steps
                                              if s.cached_from])
        out.steps = [StepOut.of(s, runs) for s in run.steps]
        out.step_states = _count([s.state for s in run.steps])
    return out


def _count(states: list[str]) -> dict[str, int]:
    return dict(Counter(states))


def _pipeline_out(request: Request, who: Principal, p: Pipeline) -> PipelineOut:
    qualified = f"{p.team}/{p.name}" if p.team else p.name
    triggers = _service(request).triggers(who, qualified)
    return PipelineOut(name=p.name, team=p.team, owner=p.owner, created_at=p.created_at,
                       updated_at=p.updated_at, spec=p.spec,
                       triggers=[TriggerOut.of(t) for t in triggers])


@router.post("/validate", response_model=PlanOut, responses=ERRORS)
def validate(body: ValidateRequest, request: Request, who: Principal = Who) -> dict:
    """Check a pipeline whole without running anything, as it would run for the team:
    its plan (parameters filled in, each step with the steps it needs), or a 422 naming
    the step and the field."""
    return _service(request).validate(who, body.spec, body.params,
                                      body.team)


@router.post("/runs", response_model=RunOut, status_code=201, responses=ERRORS)
def run(body: RunRequest, request: Request, who: Principal = Runs) -> RunOut:
    """Run a pipeline (registering it, or updating its spec): every step becomes a job
    once the steps it needs are done; a step whose cached result fits is not run again."""
    return _run_out(request, _service(request).run(who, body.spec, body.params,
                                                    body.no_cache, body.team))


@router.get("/runs", response_model=RunList, responses=ERRORS)
def list_runs(
    request: Request,
    who: Principal = Who,
    pipeline: str | None = Query(default=None, min_length=1, max_length=200,
                                 description="Only runs of this pipeline (NAME or "
                                 "TEAM/NAME)."),
    state: list[Literal[RUN_STATES]] | None = Query(default=None, max_length=5),
    limit: int = Query(default=100, ge=1, le=10_000),
) -> RunList:
    """Runs you may see, newest first, each with how many steps are in each state."""
    runs = _service(request).runs(who, pipeline, list(state) if state else None, limit)
    counts = _service(request).step_states([r.id for r in runs])
    return RunList(runs=[_run_out(request, r, steps=False).model_copy(
        update={"step_states": counts.get(r.id, {})}) for r in runs])


@router.get("/runs/{run_id:int}", response_model=RunOut, responses=ERRORS)
def get_run(request: Request, run_id: int = RunId, who: Principal = Who) -> RunOut:
    """One run with every step: its state and reason, job, cache key, the run a cached
    step came from, inputs and outputs."""
    return _run_out(request, _service(request).get_run(who, run_id))


@router.post("/runs/{run_id:int}/cancel", response_model=RunOut, responses=ERRORS)
def cancel(request: Request, run_id: int = RunId, who: Principal = Runs) -> RunOut:
    """Cancel a run: its waiting steps never start and its running jobs are cancelled."""
    return _run_out(request, _service(request).cancel(who, run_id))


@router.post("/runs/{run_id:int}/resume", response_model=RunOut, responses=ERRORS)
def resume(request: Request, run_id: int = RunId, who: Principal = Runs) -> RunOut:
    """Run a failed or cancelled run again: its failed, stopped and cancelled steps and
    what depends on them; every step that succeeded is reused."""
    return _run_out(request, _service(request).resume(who, run_id))


@router.post("", response_model=PipelineOut, status_code=201, responses=ERRORS)
def apply(body: ApplyRequest, request: Request, who: Principal = Changes) -> PipelineOut:
    """Register a pipeline (or update its spec) with its triggers, without running it."""
    return _pipeline_out(request, who,
                         _service(request).apply(who, body.spec, body.team))


@router.get("", response_model=PipelineList, responses=ERRORS)
def list_pipelines(request: Request, who: Principal = Who) -> PipelineList:
    """Pipelines you may see, with their triggers."""
    return PipelineList(pipelines=[_pipeline_out(request, who, p)
                                   for p in _service(request).list(who)])


@router.get("/{name:pipeline_name}", response_model=PipelineOut, responses=ERRORS)
def get_pipeline(request: Request, name: str = Name, who: Principal = Who) -> PipelineOut:
    """A pipeline: its spec and triggers (when each last fired)."""
    return _pipeline_out(request, who, _service(request).get(who, name))


@router.delete("/{name:pipeline_name}", response_model=PipelineOut, responses=ERRORS)
def delete(request: Request, name: str = Name, who: Principal = Changes) -> PipelineOut:
    """Remove a pipeline and its triggers."""
    service = _service(request)
    before = _pipeline_out(request, who, service.get(who, name))
    service.delete(who, name)
    return before
