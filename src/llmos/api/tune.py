"""/v1/tune/studies: start a tuning study from its recipe, list studies, show one (best so
far, trials by state, importances, every trial), stop and resume it. The routes parse and
answer; the tuning service (``optimize/tune.py``) checks the recipe and who may do what."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from llmos.api.gate import current, needs
from llmos.api.names import name_param
from llmos.api.schemas import ERRORS
from llmos.optimize.tune import STATES, TuneService
from llmos.schema import RequestBody
from llmos.security.rbac import Principal
from llmos.store.models import TuneStudy

router = APIRouter(prefix="/v1/tune/studies", tags=["tune"])
Who = Depends(current)
Runs = needs("write", "read", what="run tuning studies")
Name = name_param("Study")
Recipe = dict[str, Any] | Annotated[str, Field(min_length=1, max_length=1_000_000)]


class StartRequest(RequestBody):
    recipe: Recipe = Field(description="The tuning recipe: an object, or the text of its "
                           "YAML file.")
    team: str | None = Field(default=None, min_length=1, max_length=100,
                             description="The team it runs for (default: yours).")


class ResumeRequest(RequestBody):
    trials: int | None = Field(default=None, ge=1, le=10_000, description="Raise the "
                               "study's trial count (needed to go on after it ended).")


class TrialOut(BaseModel):
    number: int
    state: str = Field(description="RUNNING, COMPLETE, PRUNED or FAIL.")
    value: float | None = Field(description="Its objective value (last reported, when "
                                "pruned).")
    params: dict[str, Any]
    job: int | None = Field(description="The kernel job that runs it.")
    version: int | None = Field(description="The version it registered (fine-tuning).")
    reason: str | None
    stopped: bool = Field(description="Ended by a stop of the study (does not count).")
    replaced: bool = Field(description="Failed, and replaced by a resume (does not count).")
    last_step: int | None = Field(description="The last step it reported at.")
    started_at: datetime | None
    ended_at: datetime | None


class StudyOut(BaseModel):
    name: str
    team: str | None
    owner: str
    state: str
    reason: str | None
    recipe: dict[str, Any]
    created_at: datetime
    ended_at: datetime | None
    direction: str
    metric: str
    trials_wanted: int | None = None
    done: int | None = Field(default=None, description="Trials complete.")
    pruned: int | None = None
    running: int | None = None
    failed: int | None = None
    stopped: int | None = None
    best: dict[str, Any] | None = Field(default=None, description="The best trial so far: "
                                        "number, value, params, job (and model, version).")
    importances: dict[str, float] | None = Field(default=None, description="Each "
                                                 "parameter's importance (one study, "
                                                 "asked for; two complete trials or "
                                                 "more).")
    trials: list[TrialOut] | None = Field(default=None, description="Every trial (one "
                                          "study only).")


class StudyList(BaseModel):
    studies: list[StudyOut]


def _service(request: Request) -> TuneService:
    return request.app.state.system.tune


def _out(request: Request, row: TuneStudy, trials: bool = True,
         importances: bool = False) -> StudyOut:
    objective = row.recipe.get("objective", {})
    out = StudyOut(name=row.name, team=row.team, owner=row.owner, state=row.state,
                   reason=row.reason, recipe=row.recipe, created_at=row.created_at,
                   ended_at=row.ended_at, direction=objective.get("direction", "maximize"),
                   metric=objective.get("metric", ""))
    summary = _service(request).summary(row, with_trials=trials,
                                        with_importances=importances)
    return out.model_copy(update={k: v for k, v in summary.items() if k != "trials"} | (
        {"trials": [TrialOut(**t) for t in summary["trials"]]} if trials else {}))


@router.post("", response_model=StudyOut, status_code=201, responses=ERRORS)
def start(body: StartRequest, request: Request, who: Principal = Runs) -> StudyOut:
    """Start a study: the recipe is checked whole (a 422 names the field), then its trials
    run as kernel jobs, ``parallel`` at a time."""
    return _out(request, _service(request).start(who, body.recipe, body.team))


@router.get("", response_model=StudyList, responses=ERRORS)
def list_studies(
    request: Request,
    who: Principal = Who,
    state: list[Literal[STATES]] | None = Query(default=None, max_length=4),
) -> StudyList:
    """Studies you may see, newest first, with their counts and best value so far."""
    rows = _service(request).list(who, list(state) if state else None)
    return StudyList(studies=[_out(request, r, trials=False) for r in rows])


@router.get("/{name:qname}", response_model=StudyOut, responses=ERRORS)
def get_study(request: Request, name: str = Name, who: Principal = Who,
              importances: bool = Query(default=False, description="Also the parameters' "
                                        "importances (from two complete trials).")
              ) -> StudyOut:
    """One study: best value so far, trials by state and every trial (and, asked, the
    parameters' importances)."""
    return _out(request, _service(request).get(who, name), importances=importances)


@router.post("/{name:qname}/stop", response_model=StudyOut, responses=ERRORS)
def stop(request: Request, name: str = Name, who: Principal = Runs) -> StudyOut:
    """Stop a running study; its running trials' jobs are cancelled."""
    return _out(request, _service(request).stop(who, name))


@router.post("/{name:qname}/resume", response_model=StudyOut, responses=ERRORS)
def resume(request: Request, body: ResumeRequest | None = None, name: str = Name,
           who: Principal = Runs) -> StudyOut:
    """Go on with a stopped or failed study (or, with more trials, one that ended)."""
    trials = body.trials if body is not None else None
    return _out(request, _service(request).resume(who, name, trials))
