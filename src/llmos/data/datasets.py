"""Datasets in the store: start an ingest, register, list, describe, read and compare
immutable versions. Every face (API, CLI, SDK) goes through this service.

A version is a list of Parquet shard artifacts with its schema, statistics, lineage and
the ingest report (an artifact too). Versions are numbered 1, 2, ... per dataset and never
change once written; ``content_hash`` identifies their content (the same recipe on the same
input gives the same hash).

A dataset belongs to a team: viewers read it, developers ingest new versions. Ingest reads
files on the llmos host, so non-administrators may only name files inside the folders
``LLMOS_INGEST_ROOTS`` allows (``security/paths.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import selectinload

from llmos.data.readers import expand_sources
from llmos.data.recipe import RecipeError, load_recipe, parse_recipe
from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.kernel.jobs import JobSpec, PriorityClass, ResourceSpec
from llmos.kernel.service import JobService
from llmos.schema import RequestBody
from llmos.security.artifacts import ArtifactService
from llmos.security.paths import check_file, check_sources
from llmos.security.rbac import READ, Principal
from llmos.store.models import Artifact, Dataset, DatasetVersion, Job

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
HEAD_MAX = 1000


def check_dataset_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidRequest(f"bad dataset name {name!r}: lower-case letters, digits, '.', '_' "
                             "and '-', starting with a letter or digit, at most 100")
    return name


class IngestRequest(RequestBody):
    """Start an ingest job."""

    dataset: str = Field(min_length=1, max_length=100)
    sources: list[str] = Field(min_length=1, max_length=1000,
                               description="Files, folders or globs on the llmos host.")
    recipe: dict[str, Any] | str = Field(
        default_factory=dict, description="The recipe, as an object or as YAML text.")
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu=1, memory_mb=2048))
    priority: PriorityClass = "normal"
    sensitive: bool = Field(default=False, description="Encrypt the shards and the report "
                            "at rest (AES-256-GCM).")
    team: str | None = Field(default=None, min_length=1, max_length=100,
                             description="The team the dataset belongs to (default: yours).")


class ShardIn(RequestBody):
    artifact_id: int = Field(ge=1, le=2**31 - 1)
    split: str = Field(pattern=r"^(train|validation|test)$")
    rows: int = Field(ge=0)
    text_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(min_length=1, max_length=255)


class VersionIn(RequestBody):
    """A finished ingest registers its result (used by the data.ingest program)."""

    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    shards: list[ShardIn] = Field(max_length=100_000)
    schema_: dict[str, str] = Field(alias="schema")
    stats: dict[str, Any]
    lineage: dict[str, Any]
    report_artifact_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    job_id: int | None = Field(default=None, ge=1, le=2**31 - 1)


def _tokenizer_file(who: Principal, given: str, roots: list[Path]) -> Path:
    """The tokenizer.json a recipe's ``tokenize`` step names, resolved (links and '..')
    and checked against the ingest roots as the sources are. The job is handed this
    resolved file, so what it reads is what was checked."""
    shown = f"recipe: the tokenizer path {given[:200]}"
    if not Path(given).is_absolute():  # '~' or relative: whose home, which folder?
        raise InvalidRequest(f"{shown} must be absolute (`llmos data ingest` resolves a "
                             "relative one from the folder it runs in)")
    try:
        path = Path(given).resolve()
        path = path / "tokenizer.json" if path.is_dir() else path
        found = path.is_file()
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"{shown} cannot be read on the llmos host: {e}") from None
    check_file(who, path, roots, shown=given)
    if not found:
        raise InvalidRequest(f"recipe: no tokenizer at {given[:200]} (a folder holding "
                             "tokenizer.json, or the file itself)")
    return path


class DatasetService:
    def __init__(self, jobs: JobService, artifacts: ArtifactService):
        self.jobs = jobs
        self.artifacts = artifacts
        self.db = artifacts.db

    # -- ingest ---------------------------------------------------------------------------

    def ingest(self, who: Principal, req: IngestRequest) -> Job:
        """Check the recipe and the sources, then submit the ingest job."""
        check_dataset_name(req.dataset)
        team = self._ingest_team(who, req)
        roots = self.jobs.settings.ingest_root_dirs
        check_sources(who, req.sources, roots)
        try:
            recipe = load_recipe(req.recipe) if isinstance(req.recipe, str) else parse_recipe(
                req.recipe)
        except RecipeError as e:
            raise InvalidRequest(f"recipe: {e}") from None
        try:
            files = expand_sources(req.sources)
        except RuntimeError:  # Path.expanduser of '~nosuchuser'
            raise InvalidRequest("a source starts with '~' of a user this host does not "
                                 "have") from None
        except (OSError, ValueError) as e:
            raise InvalidRequest(str(e)) from None
        for f in files:  # a link inside a root may point outside it
            check_file(who, f, roots)
        if not files:
            raise InvalidRequest("the sources hold no files")
        tokenize = recipe.step("tokenize")
        if tokenize is not None:
            checked = str(_tokenizer_file(who, tokenize.tokenizer, roots))
            recipe.steps[recipe.steps.index(tokenize)] = tokenize.model_copy(
                update={"tokenizer": checked})
        workers = recipe.workers or max(1, int(req.resources.cpu))
        spec = JobSpec(program="data.ingest", name=f"ingest {req.dataset}",
                       params={"sources": [str(s) for s in req.sources],
                               "recipe": recipe.to_dict(), "dataset": req.dataset,
                               "workers": workers, "sensitive": req.sensitive},
                       resources=req.resources, priority=req.priority, team=team)
        return self.jobs.submit(who, spec)

    def _ingest_team(self, who: Principal, req: IngestRequest) -> str:
        """The dataset's team: its existing one, else the requested or the caller's."""
        with self.db.session() as s:
            ds = s.scalars(select(Dataset).where(Dataset.name == req.dataset)).first()
        return who.team_for_name("dataset", req.dataset, ds.team if ds else None, req.team)

    # -- versions -------------------------------------------------------------------------

    def create_version(self, who: Principal, name: str, body: VersionIn) -> DatasetVersion:
        """Register ``body`` as the next version of ``name`` (creating the dataset in the
        caller's team). Two ingests finishing at once both get a version: a lost race for
        the number is retried."""
        check_dataset_name(name)
        for attempt in range(10):
            try:
                return self._version_by_id(self._insert_version(who, name, body))
            except (IntegrityError, OperationalError):
                if attempt == 9:
                    raise Conflict(f"could not register a version of {name!r}: too many "
                                   "concurrent writers; try again") from None
        raise AssertionError("unreachable")

    def _insert_version(self, who: Principal, name: str, body: VersionIn) -> int:
        ids = [s.artifact_id for s in body.shards] + (
            [body.report_artifact_id] if body.report_artifact_id else [])
        with self.db.session() as s:
            ds = s.scalars(select(Dataset).where(Dataset.name == name)).first()
            team = who.team_for_name("dataset", name, ds.team if ds else None)
            rows = s.execute(select(Artifact.id, Artifact.team)
                             .where(Artifact.id.in_(ids))).all() if ids else []
            found = {i for i, t in rows if t == team}
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound(f"artifact(s) not found: {', '.join(map(str, missing))}")
            job = s.get(Job, body.job_id) if body.job_id is not None else None
            if body.job_id is not None and (job is None or job.team != team):
                raise NotFound(f"job {body.job_id} not found")
            if ds is None:
                ds = Dataset(name=name, owner=who.name, team=team)
                s.add(ds)
                s.flush()
            latest = s.scalar(select(func.max(DatasetVersion.version))
                              .where(DatasetVersion.dataset_id == ds.id)) or 0
            v = DatasetVersion(dataset_id=ds.id, version=latest + 1,
                               content_hash=body.content_hash,
                               shards=[sh.model_dump() for sh in body.shards],
                               schema=body.schema_, stats=body.stats, lineage=body.lineage,
                               report_artifact_id=body.report_artifact_id, job_id=body.job_id)
            s.add(v)
            s.flush()
            return v.id

    def _version_by_id(self, vid: int) -> DatasetVersion:
        with self.db.session() as s:
            return s.scalars(select(DatasetVersion).where(DatasetVersion.id == vid)
                             .options(selectinload(DatasetVersion.dataset))).one()

    def list(self, who: Principal) -> list[Dataset]:
        q = select(Dataset).options(selectinload(Dataset.versions)).order_by(Dataset.name)
        teams = who.readable_teams()
        if teams is not None:
            q = q.where(Dataset.team.in_(sorted(teams)))
        with self.db.session() as s:
            return list(s.scalars(q))

    def get(self, who: Principal, name: str) -> Dataset:
        with self.db.session() as s:
            ds = s.scalars(select(Dataset).where(Dataset.name == name)
                           .options(selectinload(Dataset.versions))).first()
            if ds is None:
                raise NotFound(f"dataset {name!r} not found")
            who.check(READ, ds.team, f"dataset {name!r}")
            return ds

    def version(self, who: Principal, name: str, version: int | str = "latest"
                ) -> DatasetVersion:
        ds = self.get(who, name)
        if not ds.versions:
            raise NotFound(f"dataset {name!r} has no versions")
        if version in ("latest", None):
            return self._version_by_id(ds.versions[-1].id)
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise InvalidRequest(f"a version is a number or 'latest', not {version!r}") from None
        for v in ds.versions:
            if v.version == number:
                return self._version_by_id(v.id)
        raise NotFound(f"dataset {name!r} has no version {number} "
                       f"(versions: 1..{ds.versions[-1].version})")

    def report(self, who: Principal, name: str, version: int | str = "latest") -> dict:
        v = self.version(who, name, version)
        if v.report_artifact_id is None:
            raise NotFound(f"{name}:{v.version} has no report")
        _, chunks = self.artifacts.open(who, v.report_artifact_id)
        return json.loads(b"".join(chunks))

    # -- reading --------------------------------------------------------------------------

    def head(self, who: Principal, name: str, version: int | str = "latest", n: int = 10,
             split: str | None = None) -> list[dict]:
        """The first ``n`` rows (of one split, or in split order)."""
        if not 1 <= n <= HEAD_MAX:
            raise InvalidRequest(f"n is between 1 and {HEAD_MAX}")
        v = self.version(who, name, version)
        rows: list[dict] = []
        for shard in v.shards:
            if split and shard["split"] != split:
                continue
            pf = self._parquet(who, shard)
            for batch in pf.iter_batches(batch_size=min(n, 1024)):
                for row in batch.to_pylist():
                    row["split"] = shard["split"]
                    rows.append(row)
                    if len(rows) >= n:
                        return rows
        return rows

    def ids(self, who: Principal, v: DatasetVersion) -> set[str]:
        out: set[str] = set()
        for shard in v.shards:
            pf = self._parquet(who, shard)
            for batch in pf.iter_batches(columns=["id"], batch_size=65536):
                out.update(batch.column(0).to_pylist())
        return out

    def _parquet(self, who: Principal, shard: dict):
        import io

        import pyarrow.parquet as pq

        art = self.artifacts.get(who, shard["artifact_id"])
        store = self.artifacts.store
        if art.encrypted:  # decrypted in memory only (shards are at most shard_mb)
            return pq.ParquetFile(io.BytesIO(b"".join(store.read_verified(art.sha256, True))))
        store.verify(art.sha256)
        return pq.ParquetFile(store.path(art.sha256))

    def diff(self, who: Principal, name: str, a: int | str, b: int | str,
             other: str | None = None) -> dict:
        """How version ``b`` (of ``other``, default the same dataset) differs from ``a``:
        documents added and removed (by content id), and every statistic that changed."""
        va = self.version(who, name, a)
        vb = self.version(who, other or name, b)
        ids_a, ids_b = self.ids(who, va), self.ids(who, vb)
        stats = {}
        for key in ("documents", "text_bytes", "tokens"):
            x, y = va.stats.get(key), vb.stats.get(key)
            if x is not None or y is not None:
                stats[key] = {"from": x, "to": y,
                              "change": (y or 0) - (x or 0)}
        return {
            "from": {"dataset": name, "version": va.version, "content_hash": va.content_hash},
            "to": {"dataset": other or name, "version": vb.version,
                   "content_hash": vb.content_hash},
            "same_content": va.content_hash == vb.content_hash,
            "documents_added": len(ids_b - ids_a), "documents_removed": len(ids_a - ids_b),
            "documents_common": len(ids_a & ids_b), "stats": stats,
            "schema_added": sorted(set(vb.schema) - set(va.schema)),
            "schema_removed": sorted(set(va.schema) - set(vb.schema)),
            "recipe_changed": va.lineage.get("recipe") != vb.lineage.get("recipe"),
        }
