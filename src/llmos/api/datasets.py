"""/v1/datasets: start an ingest, list datasets, read versions (head, stats, report, diff)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from pydantic import BaseModel, Field

from llmos.api.gate import current, needs
from llmos.api.names import name_param
from llmos.api.schemas import ERRORS, JobOut
from llmos.data.datasets import DatasetService, IngestRequest, VersionIn
from llmos.security.rbac import Principal
from llmos.store.models import Dataset, DatasetVersion

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
Who = Depends(current)
Name = name_param("Dataset")
Version = PathParam(min_length=1, max_length=20, pattern=r"^(latest|[0-9]+)$",
                    description="A version number, or 'latest'")


class VersionSummary(BaseModel):
    version: int
    content_hash: str
    documents: int | None
    job_id: int | None
    created_at: datetime


class DatasetOut(BaseModel):
    name: str
    owner: str
    team: str | None
    created_at: datetime
    versions: list[VersionSummary]

    @classmethod
    def of(cls, ds: Dataset) -> DatasetOut:
        return cls(name=ds.name, owner=ds.owner, team=ds.team, created_at=ds.created_at,
                   versions=[
            VersionSummary(version=v.version, content_hash=v.content_hash,
                           documents=v.stats.get("documents"), job_id=v.job_id,
                           created_at=v.created_at) for v in ds.versions])


class DatasetList(BaseModel):
    datasets: list[DatasetOut]


class VersionOut(BaseModel):
    dataset: str
    version: int
    content_hash: str
    shards: list[dict[str, Any]]
    schema_: dict[str, str] = Field(alias="schema")
    stats: dict[str, Any]
    lineage: dict[str, Any]
    report_artifact_id: int | None
    job_id: int | None
    created_at: datetime

    model_config = {"populate_by_name": True}

    @classmethod
    def of(cls, v: DatasetVersion) -> VersionOut:
        return cls(dataset=v.dataset.name, version=v.version, content_hash=v.content_hash,
                   shards=v.shards, schema_=v.schema, stats=v.stats, lineage=v.lineage,
                   report_artifact_id=v.report_artifact_id, job_id=v.job_id,
                   created_at=v.created_at)


class Rows(BaseModel):
    rows: list[dict[str, Any]]


def _datasets(request: Request) -> DatasetService:
    return request.app.state.datasets


@router.post("/ingest", response_model=JobOut, status_code=201, responses=ERRORS)
def ingest(body: IngestRequest, request: Request,
           who: Principal = needs("write", "read", what="ingest datasets")) -> JobOut:
    """Check the recipe and sources, and start an ingest job; its result is a new version."""
    return JobOut.of(_datasets(request).ingest(who, body), transitions=True)


@router.get("", response_model=DatasetList, responses=ERRORS)
def list_datasets(request: Request, who: Principal = Who) -> DatasetList:
    """Every dataset you may see, with its versions."""
    return DatasetList(datasets=[DatasetOut.of(d) for d in _datasets(request).list(who)])


@router.get("/{name:qname}", response_model=DatasetOut, responses=ERRORS)
def get_dataset(request: Request, name: str = Name, who: Principal = Who) -> DatasetOut:
    """A dataset and its versions."""
    return DatasetOut.of(_datasets(request).get(who, name))


@router.post("/{name:qname}/versions", response_model=VersionOut, status_code=201, responses=ERRORS)
def create_version(body: VersionIn, request: Request, name: str = Name,
                   who: Principal = needs("write", "read", what="create dataset versions")
                   ) -> VersionOut:
    """Register a finished ingest's shards as a new immutable version (ingest jobs call
    this once every shard is stored)."""
    return VersionOut.of(_datasets(request).create_version(who, name, body))


@router.get("/{name:qname}/versions/{version}", response_model=VersionOut, responses=ERRORS)
def get_version(request: Request, name: str = Name, version: str = Version,
                who: Principal = Who) -> VersionOut:
    """A version: shards, schema, statistics and lineage."""
    return VersionOut.of(_datasets(request).version(who, name, version))


@router.get("/{name:qname}/versions/{version}/head", response_model=Rows, responses=ERRORS)
def head(request: Request, name: str = Name, version: str = Version, who: Principal = Who,
         n: int = Query(default=10, ge=1, le=1000),
         split: str | None = Query(default=None, pattern=r"^(train|validation|test)$")) -> Rows:
    """The first rows of a version."""
    return Rows(rows=_datasets(request).head(who, name, version, n, split))


@router.get("/{name:qname}/versions/{version}/report", responses=ERRORS)
def report(request: Request, name: str = Name, version: str = Version,
           who: Principal = Who) -> dict[str, Any]:
    """The ingest report: every file's fate, removals per step and reason, duplicate
    clusters."""
    return _datasets(request).report(who, name, version)


@router.get("/{name:qname}/diff", responses=ERRORS)
def diff(request: Request, name: str = Name, who: Principal = Who,
         a: str = Query(pattern=r"^(latest|[0-9]+)$", max_length=20, alias="from"),
         b: str = Query(pattern=r"^(latest|[0-9]+)$", max_length=20, alias="to"),
         other: str | None = Query(default=None, min_length=1, max_length=200,
                                   description="Compare with a version of this dataset "
                                   "(NAME or TEAM/NAME)")
         ) -> dict[str, Any]:
    """How version ``to`` differs from version ``from``."""
    return _datasets(request).diff(who, name, a, b, other)
