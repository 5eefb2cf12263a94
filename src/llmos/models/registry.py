"""The model registry: named models with immutable numbered versions, movable aliases, and
the folders serving loads them from. Every face (API, CLI, SDK, jobs) goes through it.

A version is a set of files — each an artifact in the content-addressed store, so two
versions sharing weights share blobs — with what ``models.inspect_model`` says of them
(architecture, task, parameters, dtype, context length, labels, tokenizer), its lineage
(where the weights came from: a GGUF or Hugging Face source, a parent version, a dataset
version, the job and its parameters), evaluation metrics and a generated model card.
Versions are registered last by the job that made them, after every file is stored, so a
failed job leaves nothing half-made.

A model belongs to a team: viewers read it, developers register versions, maintainers move
aliases and delete.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import selectinload

from llmos.errors import Conflict, Forbidden, InvalidRequest, NotFound
from llmos.models.card import model_card
from llmos.models.info import ModelInfo
from llmos.schema import RequestBody
from llmos.security import names
from llmos.security.artifacts import ArtifactService
from llmos.security.rbac import CREATE, MANAGE, READ, Principal
from llmos.store.models import (Artifact, Deployment, Job, Model, ModelAlias, ModelVersion,
                                utcnow)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,49}$")
RESERVED = {"import", "latest"}


def check_model_name(name: str) -> str:
    if not _NAME.match(name or "") or name in RESERVED:
        raise InvalidRequest(f"bad model name {name!r}: lower-case letters, digits, '.', '_' "
                             "and '-', starting with a letter or digit, at most 100 (not "
                             "'import' or 'latest')")
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias or "") or alias in RESERVED:
        raise InvalidRequest(f"bad alias {alias!r}: lower-case letters, digits, '_' and '-', "
                             "starting with a letter (such as production or staging)")
    return alias


def parse_ref(text: str) -> tuple[str, str]:
    """``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` -> (name, version number, alias or
    'latest')."""
    if "@" in text:
        name, _, alias = text.partition("@")
        return name, alias
    name, _, version = text.partition(":")
    return name, version or "latest"


class FileIn(RequestBody):
    path: str = Field(min_length=1, max_length=500)
    artifact_id: int = Field(ge=1, le=2**31 - 1)


class ModelVersionIn(RequestBody):
    """A finished import or training job registers what it made."""

    files: list[FileIn] = Field(min_length=1, max_length=10_000)
    info: dict[str, Any]
    lineage: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    job_id: int | None = Field(default=None, ge=1, le=2**31 - 1)


class ModelRegistry:
    def __init__(self, artifacts: ArtifactService, folders: Path):
        self.artifacts = artifacts
        self.db = artifacts.db
        self.folders = folders  # where versions are laid out as model folders (links)

    # -- registering ------------------------------------------------------------------------

    def register(self, who: Principal, name: str, body: ModelVersionIn) -> ModelVersion:
        """``body`` as the next version of ``name`` (the model is created in the caller's
        team when new; ``team/name`` picks the team). Two registrations at once both get a
        number."""
        check_model_name(names.split(name)[1])
        info = _parse_info(body.info)
        for attempt in range(10):
            try:
                return self.version_by_id(self._insert(who, name, body, info))
            except (IntegrityError, OperationalError):
                if attempt == 9:
                    raise Conflict(f"could not register a version of {name!r}: too many "
                                   "concurrent writers; try again") from None
        raise AssertionError("unreachable")

    def _insert(self, who: Principal, name: str, body: ModelVersionIn, info: ModelInfo) -> int:
        with self.db.session() as s:
            team, name, model = names.for_create(s, who, Model, "model", name)
            files = _check_files(s, body.files, info, team)
            if body.job_id is not None:
                job = s.get(Job, body.job_id)
                if job is None or job.team != team:
                    raise NotFound(f"job {body.job_id} not found")
            if model is None:
                model = Model(name=name, team=team, owner=who.name)
                s.add(model)
                s.flush()
            number = (s.scalar(select(func.max(ModelVersion.version))
                               .where(ModelVersion.model_id == model.id)) or 0) + 1
            version = ModelVersion(
                model_id=model.id, version=number, architecture=info.architecture,
                task=info.task, parameters=info.parameters, size_bytes=info.size_bytes,
                dtype=",".join(info.dtypes), context_length=info.context_length,
                info=info.to_dict(), files=files, lineage=body.lineage, metrics=body.metrics,
                card=model_card(info, name, number, body.lineage, body.metrics),
                job_id=body.job_id, owner=who.name, created_at=utcnow())
            s.add(version)
            s.flush()
            return version.id

    def add_metrics(self, who: Principal, name: str, ref: str, key: str,
                    metrics: dict[str, Any]) -> ModelVersion:
        """Store evaluation results under ``key`` (e.g. ``eval:topics:1:test``) on a version,
        and regenerate its card. ``eval:`` results are what promotion compares, so only an
        evaluation job of this very version writes them; ``promotion:`` records are the
        promote step's (:meth:`record_promotion`)."""
        v = self.version(who, name, ref)
        who.check(CREATE, v.model.team, f"model {name}")
        if key.startswith("promotion:"):
            raise Forbidden(f"metrics key {key!r}: promotion records are written by a "
                            "pipeline's promote step only")
        if key.startswith("eval:") and not self._evaluates(who, v):
            raise Forbidden(f"metrics key {key!r}: evaluation results are written by an "
                            f"evaluation job of {name}:{v.version} only (llmos evaluate)")
        return self._store_metrics(v, key, metrics)

    def record_promotion(self, who: Principal, name: str, version: int, alias: str,
                         comparison: dict[str, Any]) -> ModelVersion:
        """Store a promote step's comparison on the candidate (``promotion:<alias>``):
        whoever may move the alias may record why it moved or not."""
        v = self.version(who, name, str(version))
        who.check(MANAGE, v.model.team, f"model {name}")
        return self._store_metrics(v, f"promotion:{alias}", comparison)

    def _evaluates(self, who: Principal, v: ModelVersion) -> bool:
        """Whether ``who`` is the token of a running evaluation job of version ``v``."""
        if who.job_id is None:
            return False
        with self.db.session() as s:
            job = s.get(Job, who.job_id)
        target = (job.params or {}).get("model") if job else None
        return (job is not None and job.program == "train.evaluate"
                and isinstance(target, dict) and target.get("version") == v.version
                and names.split(str(target.get("name")))[1] == v.model.name)

    def _store_metrics(self, v: ModelVersion, key: str, metrics: dict[str, Any]
                       ) -> ModelVersion:
        with self.db.session() as s:
            row = s.get(ModelVersion, v.id)
            row.metrics = {**row.metrics, key: metrics}
            row.card = model_card(ModelInfo.from_dict(row.info), v.model.name, row.version,
                                  row.lineage, row.metrics)
        return self.version_by_id(v.id)

    # -- reading -----------------------------------------------------------------------------

    def list(self, who: Principal) -> list[Model]:
        q = select(Model).options(selectinload(Model.versions),
                                  selectinload(Model.aliases)).order_by(Model.name)
        teams = who.readable_teams()
        if teams is not None:
            q = q.where(Model.team.in_(sorted(teams)))
        with self.db.session() as s:
            return list(s.scalars(q))

    def get(self, who: Principal, name: str) -> Model:
        """The model named ``name`` (bare, or ``team/name``) in a team ``who`` sees;
        another team's is not found, exactly as a missing one."""
        with self.db.session() as s:
            model = names.find(s, who, Model, "model", name, (
                selectinload(Model.versions),
                selectinload(Model.aliases).selectinload(ModelAlias.version)))
            who.check(READ, model.team, f"model {name!r}")
            return model

    def version(self, who: Principal, name: str, ref: str | int = "latest") -> ModelVersion:
        """A version by number, ``latest``, or alias."""
        model = self.get(who, name)
        if not model.versions:
            raise NotFound(f"model {name!r} has no versions")
        ref = str(ref)
        if ref == "latest":
            return self.version_by_id(model.versions[-1].id)
        if ref.isdigit():
            for v in model.versions:
                if v.version == int(ref):
                    return self.version_by_id(v.id)
            raise NotFound(f"model {name!r} has no version {ref} (versions: "
                           f"{', '.join(str(v.version) for v in model.versions)})")
        for a in model.aliases:
            if a.alias == ref:
                return self.version_by_id(a.version_id)
        raise NotFound(f"model {name!r} has no alias {ref!r}"
                       + (f" (aliases: {', '.join(a.alias for a in model.aliases)})"
                          if model.aliases else ""))

    def version_by_id(self, vid: int) -> ModelVersion:
        with self.db.session() as s:
            return s.scalars(select(ModelVersion).where(ModelVersion.id == vid).options(
                selectinload(ModelVersion.model).selectinload(Model.aliases))).one()

    # -- aliases and deletion ------------------------------------------------------------

    def set_alias(self, who: Principal, name: str, alias: str, version: int) -> Model:
        """Point ``alias`` at ``version`` (created or moved)."""
        check_alias(alias)
        model = self.get(who, name)
        who.check(MANAGE, model.team, f"model {name}")
        target = self.version(who, name, str(version))
        with self.db.session() as s:
            row = s.get(ModelAlias, (model.id, alias))
            if row is None:
                s.add(ModelAlias(model_id=model.id, alias=alias, version_id=target.id,
                                 updated_at=utcnow()))
            else:
                row.version_id, row.updated_at = target.id, utcnow()
        return self.get(who, name)

    def remove_alias(self, who: Principal, name: str, alias: str) -> Model:
        model = self.get(who, name)
        who.check(MANAGE, model.team, f"model {name}")
        with self.db.session() as s:
            row = s.get(ModelAlias, (model.id, alias))
            if row is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            s.delete(row)
        return self.get(who, name)

    def delete_version(self, who: Principal, name: str, ref: str) -> ModelVersion:
        """Remove one version (its blobs stay while other records use them); refused while
        an alias points at it."""
        v = self.version(who, name, ref)
        who.check(MANAGE, v.model.team, f"model {name}")
        pointing = [a.alias for a in v.model.aliases if a.version_id == v.id]
        if pointing:
            raise Conflict(f"{name}:{v.version} is aliased as {', '.join(pointing)}; move or "
                           "remove the alias first")
        with self.db.session() as s:
            serving = list(s.scalars(select(Deployment.name)
                                     .where(Deployment.version_id == v.id)))
            if serving:
                raise Conflict(f"{name}:{v.version} is being served by deployment(s) "
                               f"{', '.join(serving)}; remove them first")
            canary = list(s.scalars(select(Deployment.name)
                                    .where(Deployment.canary_version_id == v.id)))
            if canary:
                raise Conflict(f"{name}:{v.version} is the canary of deployment(s) "
                               f"{', '.join(canary)}; roll back or complete it first")
            s.delete(s.get(ModelVersion, v.id))
        return v

    def delete_model(self, who: Principal, name: str) -> Model:
        """Remove a model with all its versions; refused while it has aliases."""
        model = self.get(who, name)
        who.check(MANAGE, model.team, f"model {name}")
        with self.db.session() as s:  # deployments of any of its versions (of any team)
            serving = list(s.scalars(
                select(Deployment.name).join(ModelVersion,
                                             Deployment.version_id == ModelVersion.id)
                .where(ModelVersion.model_id == model.id)))
            serving += s.scalars(
                select(Deployment.name).join(ModelVersion,
                                             Deployment.canary_version_id == ModelVersion.id)
                .where(ModelVersion.model_id == model.id))
        if serving:
            raise Conflict(f"model {name!r} is being served by deployment(s) "
                           f"{', '.join(dict.fromkeys(serving))}; remove them first")
        if model.aliases:
            raise Conflict(f"model {name!r} has aliases ({', '.join(a.alias for a in model.aliases)})"
                           "; remove them first")
        with self.db.session() as s:
            s.delete(s.get(Model, model.id))
        return model

    # -- folders ------------------------------------------------------------------------------

    def folder(self, who: Principal, name: str, ref: str = "latest") -> tuple[ModelVersion, Path]:
        """A Hugging Face folder of the version: links to its verified blobs, laid out once
        (each blob's sha256 is checked when the folder is first made)."""
        v = self.version(who, name, ref)
        return v, self.lay_out(v)

    def lay_out(self, v: ModelVersion) -> Path:
        folder = self.folders / f"version-{v.id}"
        if (folder / ".complete").exists():
            return folder
        store = self.artifacts.store
        tmp = self.folders / f".version-{v.id}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for f in v.files:
            store.verify(f["sha256"])
            target = tmp / f["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(store.path(f["sha256"]), target)
        (tmp / ".complete").write_text("")
        try:
            os.rename(tmp, folder)
        except OSError:  # made meanwhile by another caller
            if not (folder / ".complete").exists():
                raise
        return folder


def _parse_info(data: dict) -> ModelInfo:
    try:
        info = ModelInfo.from_dict(data)
    except (TypeError, ValueError, KeyError) as e:
        raise InvalidRequest(f"info does not describe a model: {e}") from None
    return info


def _check_files(s, files: list[FileIn], info: ModelInfo, team: str) -> list[dict]:
    """Every file of ``info`` is given exactly once, as an artifact of ``team`` whose bytes
    hash to what ``info`` says."""
    paths = [f.path for f in files]
    for p in paths:
        parts = Path(p).parts
        if p.startswith("/") or ".." in parts or "\\" in p or not parts:
            raise InvalidRequest(f"bad model file path {p!r}")
    if len(set(paths)) != len(paths):
        raise InvalidRequest("a model file is listed twice")
    described = {f.path: f for f in info.files}
    if set(paths) != set(described):
        missing = sorted(set(described) - set(paths)) or sorted(set(paths) - set(described))
        raise InvalidRequest(f"files and info disagree about: {', '.join(missing[:5])}")
    arts = {a.id: a for a in s.scalars(select(Artifact).where(
        Artifact.id.in_([f.artifact_id for f in files])))}
    out = []
    for f in files:
        art = arts.get(f.artifact_id)
        if art is None or art.team != team:
            raise NotFound(f"artifact {f.artifact_id} not found")
        if art.encrypted:
            raise InvalidRequest(f"artifact {art.id} is encrypted at rest; model files are "
                                 "loaded memory-mapped and must be stored in clear")
        want = described[f.path]
        if art.sha256 != want.sha256 or art.size != want.size:
            raise InvalidRequest(f"artifact {art.id} does not hold {f.path} (sha256 differs)")
        out.append({"path": f.path, "sha256": art.sha256, "size": art.size,
                    "artifact_id": art.id})
    return sorted(out, key=lambda f: f["path"])
