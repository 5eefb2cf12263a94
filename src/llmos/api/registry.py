"""/v1/registry/models: import, list, show, register versions, aliases, cards, metrics,
delete. (The OpenAI-style /v1/models lists what is being served.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path as PathParam, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from llmos.api.gate import current, needs
from llmos.api.names import name_param
from llmos.api.schemas import ERRORS, JobOut
from llmos.models.imports import ImportRequest, start_import
from llmos.models.registry import ModelRegistry, ModelVersionIn
from llmos.schema import RequestBody
from llmos.security.rbac import Principal
from llmos.store.models import Model, ModelVersion

router = APIRouter(prefix="/v1/registry/models", tags=["models"])
Who = Depends(current)
# Every change answers with what it changed: "write" and "read", checked before it is made.
Changes = needs("write", "read", what="change models")


def _name() -> Any:
    return name_param("Model")


Name = _name()
Ref = PathParam(min_length=1, max_length=50, pattern=r"^[a-z0-9][a-z0-9_-]*$",
                description="A version number, 'latest', or an alias")
AliasName = PathParam(min_length=1, max_length=50, pattern=r"^[a-z][a-z0-9_-]*$")


class VersionSummary(BaseModel):
    version: int
    task: str
    parameters: int
    size_bytes: int
    job_id: int | None
    created_at: datetime


class ModelOut(BaseModel):
    name: str
    team: str | None
    owner: str
    created_at: datetime
    aliases: dict[str, int]
    versions: list[VersionSummary]

    @classmethod
    def of(cls, m: Model) -> ModelOut:
        by_id = {v.id: v.version for v in m.versions}
        return cls(name=m.name, team=m.team, owner=m.owner, created_at=m.created_at,
                   aliases={a.alias: by_id.get(a.version_id, 0) for a in m.aliases},
                   versions=[VersionSummary(version=v.version, task=v.task,
                                            parameters=v.parameters, size_bytes=v.size_bytes,
                                            job_id=v.job_id, created_at=v.created_at)
                             for v in m.versions])


class ModelList(BaseModel):
    models: list[ModelOut]


class ModelVersionOut(BaseModel):
    model: str
    version: int
    aliases: list[str]
    architecture: str | None
    task: str
    parameters: int
    size_bytes: int
    dtype: str
    context_length: int | None
    info: dict[str, Any]
    files: list[dict[str, Any]]
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    job_id: int | None
    owner: str
    created_at: datetime

    @classmethod
    def of(cls, v: ModelVersion) -> ModelVersionOut:
        return cls(model=v.model.name, version=v.version,
                   aliases=sorted(a.alias for a in v.model.aliases if a.version_id == v.id),
                   architecture=v.architecture, task=v.task, parameters=v.parameters,
                   size_bytes=v.size_bytes, dtype=v.dtype, context_length=v.context_length,
                   info=v.info, files=v.files, lineage=v.lineage, metrics=v.metrics,
                   job_id=v.job_id, owner=v.owner, created_at=v.created_at)


class AliasIn(RequestBody):
    version: int = Field(ge=1, le=2**31 - 1)


class MetricsIn(RequestBody):
    key: str = Field(min_length=1, max_length=200, description="e.g. eval:topics:1:test")
    metrics: dict[str, Any]


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


@router.post("/import", response_model=JobOut, status_code=201, responses=ERRORS)
def import_model(body: ImportRequest, request: Request,
                 who: Principal = needs("write", "read", what="import models")) -> JobOut:
    """Start an import job: a Hugging Face folder or a GGUF file on the llmos host becomes
    a new version (GGUF is de-quantized once into safetensors)."""
    return JobOut.of(start_import(who, body, request.app.state.jobs), transitions=True)


@router.get("", response_model=ModelList, responses=ERRORS)
def list_models(request: Request, who: Principal = Who) -> ModelList:
    """Every model you may see, with its versions and aliases."""
    return ModelList(models=[ModelOut.of(m) for m in _registry(request).list(who)])


@router.get("/{name:qname}", response_model=ModelOut, responses=ERRORS)
def get_model(request: Request, name: str = Name, who: Principal = Who) -> ModelOut:
    """A model, its versions and aliases."""
    return ModelOut.of(_registry(request).get(who, name))


@router.delete("/{name:qname}", response_model=ModelOut, responses=ERRORS)
def delete_model(request: Request, name: str = Name, who: Principal = Changes) -> ModelOut:
    """Delete a model and all its versions (maintainers; refused while it has aliases)."""
    return ModelOut.of(_registry(request).delete_model(who, name))


@router.post("/{name:qname}/versions", response_model=ModelVersionOut, status_code=201,
             responses=ERRORS)
def register_version(body: ModelVersionIn, request: Request, name: str = Name,
                     who: Principal = Changes) -> ModelVersionOut:
    """Register stored files as the next version (import and training jobs call this last)."""
    return ModelVersionOut.of(_registry(request).register(who, name, body))


@router.get("/{name:qname}/versions/{ref}", response_model=ModelVersionOut, responses=ERRORS)
def get_version(request: Request, name: str = Name, ref: str = Ref,
                who: Principal = Who) -> ModelVersionOut:
    """A version by number, 'latest' or alias: what it is, its files, lineage, metrics."""
    return ModelVersionOut.of(_registry(request).version(who, name, ref))


@router.delete("/{name:qname}/versions/{ref}", response_model=ModelVersionOut, responses=ERRORS)
def delete_version(request: Request, name: str = Name, ref: str = Ref,
                   who: Principal = Changes) -> ModelVersionOut:
    """Delete one version (maintainers; refused while an alias points at it)."""
    return ModelVersionOut.of(_registry(request).delete_version(who, name, ref))


@router.get("/{name:qname}/versions/{ref}/card", responses={**ERRORS, 200: {
    "content": {"text/markdown": {}}, "description": "The model card"}})
def get_card(request: Request, name: str = Name, ref: str = Ref, who: Principal = Who):
    """The version's generated model card (Markdown)."""
    card = _registry(request).version(who, name, ref).card
    return PlainTextResponse(card, media_type="text/markdown")


@router.post("/{name:qname}/versions/{ref}/metrics", response_model=ModelVersionOut,
             responses=ERRORS)
def add_metrics(body: MetricsIn, request: Request, name: str = Name, ref: str = Ref,
                who: Principal = Changes) -> ModelVersionOut:
    """Store evaluation results on a version (evaluation jobs call this)."""
    return ModelVersionOut.of(_registry(request).add_metrics(who, name, ref, body.key,
                                                             body.metrics))


@router.put("/{name:qname}/aliases/{alias}", response_model=ModelOut, responses=ERRORS)
def set_alias(body: AliasIn, request: Request, name: str = Name, alias: str = AliasName,
              who: Principal = Changes) -> ModelOut:
    """Point an alias (production, staging ...) at a version (maintainers)."""
    return ModelOut.of(_registry(request).set_alias(who, name, alias, body.version))


@router.delete("/{name:qname}/aliases/{alias}", response_model=ModelOut, responses=ERRORS)
def remove_alias(request: Request, name: str = Name, alias: str = AliasName,
                 who: Principal = Changes) -> ModelOut:
    return ModelOut.of(_registry(request).remove_alias(who, name, alias))
