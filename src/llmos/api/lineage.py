"""/v1/lineage: where a deployment, a model version, a dataset version or a pipeline run
came from — raw files (sha256), dataset versions, pipeline steps and jobs, model versions
and the deployments serving them — as one JSON tree (``pipelines/lineage.py`` says its
shape). Reading it needs read rights on the thing asked about; what of the chain belongs
to a team the caller cannot read shows as a hidden node."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path as PathParam, Request

from llmos.api.gate import current
from llmos.api.names import name_param
from llmos.api.schemas import ERRORS
from llmos.models.registry import parse_ref
from llmos.pipelines.lineage import LineageService
from llmos.security.rbac import Principal

router = APIRouter(prefix="/v1/lineage", tags=["lineage"])
Who = Depends(current)
Name = name_param("Deployment")
Ref = PathParam(min_length=1, max_length=200,
                description="NAME, NAME:VERSION or NAME@ALIAS (models), NAME or NAME:VERSION "
                "(datasets); NAME may be TEAM/NAME")
RunId = PathParam(ge=1, le=2**31 - 1, description="A pipeline run's id")


def _lineage(request: Request) -> LineageService:
    return request.app.state.lineage


@router.get("/deployments/{name:qname}", responses=ERRORS)
def of_deployment(request: Request, name: str = Name, who: Principal = Who) -> dict[str, Any]:
    """A deployment, the model versions it serves (stable and canary), and where they
    came from."""
    return _lineage(request).of_deployment(who, name)


@router.get("/models/{ref:qname}", responses=ERRORS)
def of_model(request: Request, ref: str = Ref, who: Principal = Who) -> dict[str, Any]:
    """A model version: the step and job that made it, its dataset, its base model
    (recursively), and the deployments serving it."""
    name, version = parse_ref(ref)
    return _lineage(request).of_model(who, name, version)


@router.get("/datasets/{ref:qname}", responses=ERRORS)
def of_dataset(request: Request, ref: str = Ref, who: Principal = Who) -> dict[str, Any]:
    """A dataset version: its raw input files with their sha256, the step and job that
    made it, and the model versions trained on it."""
    name, _, version = ref.partition(":")
    return _lineage(request).of_dataset(who, name, version or "latest")


@router.get("/runs/{run_id}", responses=ERRORS)
def of_run(request: Request, run_id: int = RunId, who: Principal = Who) -> dict[str, Any]:
    """A pipeline run: its steps, their jobs (or the run a cached step came from), and
    what each made, with its lineage."""
    return _lineage(request).of_run(who, run_id)
