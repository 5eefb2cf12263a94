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

import base64
import io
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
from llmos.security import names
from llmos.security.artifacts import ArtifactService
from llmos.security.audit import note_read
from llmos.security.paths import check_sources, within
from llmos.security.rbac import CREATE, READ, Principal
from llmos.store.models import Artifact, Dataset, DatasetVersion, Job

SEALED = "sealed"  # the key of a sensitive version's sealed part, in stats and lineage
SEALED_STATS = ("labels", "languages")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
HEAD_MAX = 1000


def check_dataset_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidRequest(f"bad dataset name {name!r}: lower-case letters, digits, '.', '_' "
                             "and '-', starting with a letter or digit, at most 100")
    return name


class IngestRequest(RequestBody):
    """Start an ingest job."""

    dataset: str = Field(min_length=1, max_length=200, description="NAME or TEAM/NAME.")
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


def _tokenizer_file(given: str, roots: list[Path]) -> Path:
    """The tokenizer.json a recipe's ``tokenize`` step names, resolved (links and '..')
    and checked against the ingest roots as the sources are — before anything looks at
    it, so a path outside gets the same refusal whether it exists or not. The job is
    handed this resolved file (and checks it again), so what it reads is what was checked."""
    shown = f"recipe: the tokenizer path {given[:200]}"
    if not Path(given).is_absolute():  # '~' or relative: whose home, which folder?
        raise InvalidRequest(f"{shown} must be absolute (`llmos data ingest` resolves a "
                             "relative one from the folder it runs in)")
    path = within(given, roots)
    try:
        if path.is_dir():  # its tokenizer.json may be a link that leads outside
            path = within(path / "tokenizer.json", roots, shown=given)
        found = path.is_file()
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"{shown} cannot be read on the llmos host: {e}") from None
    if not found:
        raise InvalidRequest(f"recipe: no tokenizer at {given[:200]} (a folder holding "
                             "tokenizer.json, or the file itself)")
    return path


class DatasetService:
    def __init__(self, jobs: JobService, artifacts: ArtifactService):
        self.jobs = jobs
        self.artifacts = artifacts
        self.db = artifacts.db
        artifacts.on_rotate(self._reseal_all)

    # -- ingest ---------------------------------------------------------------------------

    def ingest(self, who: Principal, req: IngestRequest) -> Job:
        """Check the recipe and the sources, then submit the ingest job."""
        team, name = self._ingest_team(who, req)
        # The folders the job will be held to as well (``data/program.py``).
        roots = [Path(r) for r in self.jobs.read_roots(who)]
        check_sources(roots, req.sources)
        try:
            recipe = load_recipe(req.recipe) if isinstance(req.recipe, str) else parse_recipe(
                req.recipe)
        except RecipeError as e:
            raise InvalidRequest(f"recipe: {e}") from None
        try:  # only inside the roots; links are checked where they lead
            files = expand_sources(req.sources, roots)
        except RuntimeError:  # Path.expanduser of '~nosuchuser'
            raise InvalidRequest("a source starts with '~' of a user this host does not "
                                 "have") from None
        except (OSError, ValueError) as e:
            raise InvalidRequest(str(e)) from None
        if not files:
            raise InvalidRequest("the sources hold no files")
        tokenize = recipe.step("tokenize")
        if tokenize is not None:
            checked = str(_tokenizer_file(tokenize.tokenizer, roots))
            recipe.steps[recipe.steps.index(tokenize)] = tokenize.model_copy(
                update={"tokenizer": checked})
        workers = recipe.workers or max(1, int(req.resources.cpu))
        request = {"sources": [str(s) for s in req.sources], "recipe": recipe.to_dict()}
        if req.sensitive:  # the job's params (a database row) name no input path
            request = {"request_artifact": self._sealed_request(who, team, name, request)}
        spec = JobSpec(program="data.ingest", name=f"ingest {name}",
                       params={**request, "dataset": name, "workers": workers,
                               "sensitive": req.sensitive},
                       resources=req.resources, priority=req.priority, team=team)
        return self.jobs.submit(who, spec)

    def _sealed_request(self, who: Principal, team: str, name: str, request: dict) -> int:
        """A sensitive ingest's sources and recipe, as an artifact sealed at rest that its
        job reads back through the API (``data/program.py``)."""
        who.check(CREATE, team, f"dataset {name!r}")  # before anything is written
        art = self.artifacts.put(who, [json.dumps(request).encode()], f"{name}-ingest.json",
                                 kind="ingest-request", sensitive=True, team=team)
        return art.id

    def _ingest_team(self, who: Principal, req: IngestRequest) -> tuple[str, str]:
        """The dataset's team and bare name: ``team/name`` or the asked team, else the one
        of the caller's teams that has the name, else the caller's (``security/names.py``).
        The job gets the bare name: its token acts in that team only."""
        with self.db.session() as s:
            team, name, _ = names.for_create(s, who, Dataset, "dataset", req.dataset,
                                             asked=req.team)
        return team, check_dataset_name(name)

    # -- versions -------------------------------------------------------------------------

    def create_version(self, who: Principal, name: str, body: VersionIn) -> DatasetVersion:
        """Register ``body`` as the next version of ``name`` (creating the dataset in the
        caller's team). Two ingests finishing at once both get a version: a lost race for
        the number is retried."""
        check_dataset_name(names.split(name)[1])
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
            team, name, ds = names.for_create(s, who, Dataset, "dataset", name)
            rows = s.execute(select(Artifact.id, Artifact.team, Artifact.encrypted)
                             .where(Artifact.id.in_(ids))).all() if ids else []
            found = {i for i, t, _ in rows if t == team}
            # A sensitive dataset (its shards sealed) keeps its label values and input
            # paths sealed in the database too.
            sensitive = any(enc for _, t, enc in rows if t == team)
            if SEALED in body.stats or SEALED in body.lineage:
                raise InvalidRequest(f"{SEALED!r} is a reserved key of stats and lineage")
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
                               schema=body.schema_,
                               **(self._sealed(body.stats, body.lineage) if sensitive else
                                  {"stats": body.stats, "lineage": body.lineage}),
                               report_artifact_id=body.report_artifact_id, job_id=body.job_id)
            s.add(v)
            s.flush()
            return v.id

    def _version_by_id(self, vid: int) -> DatasetVersion:
        with self.db.session() as s:
            v = s.scalars(select(DatasetVersion).where(DatasetVersion.id == vid)
                          .options(selectinload(DatasetVersion.dataset))).one()
        if SEALED in v.lineage:  # detached: opening it here changes nothing stored
            v.stats, v.lineage = self._opened(v.stats, v.lineage)
        return v

    # -- sealed statistics and lineage ----------------------------------------------------

    def _sealed(self, stats: dict, lineage: dict) -> dict:
        """The columns of a sensitive version: the counts in clear (listings show them),
        the label and language values (per split too) and the whole lineage — input
        paths, sources, recipe — sealed with the daemon's cipher."""
        stats = json.loads(json.dumps(stats))
        hidden: dict[str, Any] = {k: stats.pop(k) for k in SEALED_STATS if k in stats}
        for split, counts in (stats.get("splits") or {}).items():
            if isinstance(counts, dict):
                part = {k: counts.pop(k) for k in SEALED_STATS if k in counts}
                if part:
                    hidden.setdefault("splits", {})[split] = part
        stats[SEALED] = self._seal(hidden)
        return {"stats": stats, "lineage": {SEALED: self._seal(lineage)}}

    def _opened(self, stats: dict, lineage: dict) -> tuple[dict, dict]:
        stats = dict(stats)
        hidden = self._open(stats.pop(SEALED)) if SEALED in stats else {}
        for split, part in hidden.pop("splits", {}).items():
            stats.setdefault("splits", {}).setdefault(split, {}).update(part)
        stats.update(hidden)
        return stats, self._open(lineage[SEALED])

    def _reseal_all(self) -> set[str]:
        """After a key rotation: seal every sensitive version's labels and lineage again
        under the new current key; the key ids they still need (none: all moved)."""
        with self.db.session() as s:
            for v in s.scalars(select(DatasetVersion)):
                if SEALED not in (v.lineage or {}):
                    continue
                stats, lineage = self._opened(v.stats, v.lineage)
                fresh = self._sealed(stats, lineage)
                v.stats, v.lineage = fresh["stats"], fresh["lineage"]
        return set()

    def _seal(self, value: Any) -> str:
        out = io.BytesIO()
        self.artifacts.store.cipher.seal([json.dumps(value).encode()], out)
        return base64.b64encode(out.getvalue()).decode()

    def _open(self, text: str) -> Any:
        sealed = io.BytesIO(base64.b64decode(text))
        return json.loads(b"".join(self.artifacts.store.cipher.unseal(sealed)))

    def list(self, who: Principal) -> list[Dataset]:
        q = select(Dataset).options(selectinload(Dataset.versions)).order_by(Dataset.name)
        teams = who.readable_teams()
        if teams is not None:
            q = q.where(Dataset.team.in_(sorted(teams)))
        with self.db.session() as s:
            return list(s.scalars(q))

    def get(self, who: Principal, name: str) -> Dataset:
        """The dataset named ``name`` (bare, or ``team/name``) in a team ``who`` sees;
        another team's is not found, exactly as a missing one."""
        with self.db.session() as s:
            ds = names.find(s, who, Dataset, "dataset", name,
                            (selectinload(Dataset.versions),))
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
            note_read(f"artifact {art.id}")  # a sensitive read: the request's audit record
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
