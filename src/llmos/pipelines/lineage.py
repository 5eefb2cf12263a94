"""Lineage end to end: where a deployment, a model version, a dataset version or a
pipeline run came from, as one JSON tree (``llmos lineage``, ``/v1/lineage``).

The tree points upstream: a node's ``inputs`` are what it was made from.

- deployment: the model versions it serves (``serves``: stable or canary, and ``weight``,
  the percent of requests each gets).
- model: the step (or plain job) that made it, the dataset version it was trained on,
  its base model version (recursively) or the files it was imported from; ``metrics``
  lists its evaluation keys (``eval:DATASET:VERSION:SPLIT``). Its ``served_by`` lists
  the deployments serving it: the chain's last link, downstream.
- dataset: the step (or job) that made it, and the raw input files (path, sha256, bytes).
  Asked about directly, its ``used_by`` lists the model versions trained on it (each
  with its ``served_by``), downstream.
- run: its ``steps``; each step's ``outputs`` are the dataset and model versions its job
  made, each with its own inputs. A cached step names the step it reused
  (``cached_from``: run, step, job) and shows that step's outputs.
- step: its run, pipeline, name, state and ``job``; job: id, program, state; file: path,
  sha256, bytes.

Rights: a node of a team the caller cannot read is ``{"kind": K, "hidden": true}``,
whether it exists or not, with nothing under it; downstream nodes (deployments, models
trained on a dataset) of such teams are left out. Names written in a lineage are read as
the job that wrote them wrote them: bare names in the node's own team.

Repeats: a node already in the tree appears again with its names and ``"repeat": true``
and nothing under it, so a cycle in recorded lineage ends there.

This module reads the store and the services; it changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from llmos.data.datasets import DatasetService
from llmos.errors import InvalidRequest, NotFound
from llmos.models.registry import ModelRegistry
from llmos.security import names
from llmos.security.rbac import READ, Principal
from llmos.serve.deployments import DeploymentService
from llmos.store.db import Database
from llmos.store.models import (Dataset, DatasetVersion, Deployment, Job, Model, ModelVersion,
                                PipelineRun, PipelineStep)

MAX_FILES = 500  # raw files listed per dataset version; the rest are counted
MAX_CACHE_HOPS = 50  # cached_from links followed to the step that ran


class LineageService:
    def __init__(self, db: Database, registry: ModelRegistry, datasets: DatasetService,
                 deployments: DeploymentService):
        self.db, self.registry, self.datasets = db, registry, datasets
        self.deployments = deployments

    def of_deployment(self, who: Principal, name: str) -> dict:
        return _Walk(self, who).deployment(self.deployments.get(who, name))

    def of_model(self, who: Principal, name: str, ref: str | int = "latest") -> dict:
        return _Walk(self, who).model(self.registry.version(who, name, ref))

    def of_dataset(self, who: Principal, name: str, ref: str | int = "latest") -> dict:
        v = self.datasets.version(who, name, ref)
        walk = _Walk(self, who)
        node = walk.dataset(v)
        node["used_by"] = walk.trained_on(v)
        return node

    def of_run(self, who: Principal, run_id: int) -> dict:
        with self.db.session() as s:
            run = s.scalars(select(PipelineRun).where(PipelineRun.id == run_id).options(
                selectinload(PipelineRun.steps), selectinload(PipelineRun.pipeline))).first()
        if run is None or who.role_in(run.team) is None:
            raise NotFound(f"pipeline run {run_id} not found")
        who.check(READ, run.team, f"pipeline run {run_id}")
        return _Walk(self, who).run(run)


def _when(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Walk:
    """One walk through the lineage for one caller: what it has shown already."""

    def __init__(self, svc: LineageService, who: Principal):
        self.svc, self.who = svc, who
        self.seen: set[tuple[str, int]] = set()

    def _first(self, kind: str, row_id: int) -> bool:
        if (kind, row_id) in self.seen:
            return False
        self.seen.add((kind, row_id))
        return True

    def _can(self, team: str | None) -> bool:
        return self.who.can(READ, team)

    # -- deployments and models -------------------------------------------------------------

    def deployment(self, d: Deployment) -> dict:
        node = {"kind": "deployment", "name": d.name, "team": d.team, "ref": d.ref,
                "engine": d.engine}
        if not self._first("deployment", d.id):
            return {**node, "repeat": True}
        canary = d.canary_version_id is not None
        served = [(d.version_id, "stable", 100 - d.canary_weight if canary else 100)]
        if canary:
            served.append((d.canary_version_id, "canary", d.canary_weight))
        node["inputs"] = [{**self.model_by_id(vid), "serves": role, "weight": weight}
                          for vid, role, weight in served]
        return node

    def model_by_id(self, vid: int) -> dict:
        with self.svc.db.session() as s:
            v = s.scalars(select(ModelVersion).where(ModelVersion.id == vid).options(
                selectinload(ModelVersion.model).selectinload(Model.aliases))).first()
        if v is None or not self._can(v.model.team):
            return {"kind": "model", "hidden": True} if v is not None else {
                "kind": "model", "missing": True}
        return self.model(v)

    def model(self, v: ModelVersion) -> dict:
        m = v.model
        node: dict[str, Any] = {"kind": "model", "name": m.name, "team": m.team,
                                "version": v.version}
        if not self._first("model", v.id):
            return {**node, "repeat": True}
        lin = v.lineage if isinstance(v.lineage, dict) else {}
        node.update(task=v.task, method=lin.get("method") if isinstance(
            lin.get("method"), str) else None, created_at=_when(v.created_at),
            aliases=sorted(a.alias for a in m.aliases if a.version_id == v.id),
            metrics=sorted(str(k) for k in (v.metrics or {})))
        inputs = []
        if v.job_id is not None:
            inputs.append(self.producer(v.job_id))
        if isinstance(lin.get("dataset"), dict):
            ds = lin["dataset"]
            inputs.append(self.dataset_named(ds.get("name"), ds.get("version"), m.team))
        for key in ("base", "tokenizer"):
            if isinstance(lin.get(key), dict):
                ref = lin[key]
                inputs.append({**self.model_named(ref.get("model"), ref.get("version"), m.team),
                               "as": key})
        if isinstance(lin.get("source"), dict):
            inputs.append(_source(lin["source"]))
        node["inputs"] = inputs
        node["served_by"] = self.served_by(v)
        return node

    def model_named(self, text: Any, version: Any, team: str | None) -> dict:
        found = self._named("model", text, version, team)
        if "hidden" in found or "missing" in found:
            return found
        try:
            v = self.svc.registry.version(self.who, names.qualified(found["team"],
                                                                     found["name"]),
                                          str(found["version"]))
        except NotFound:
            return {**found, "missing": True}
        return self.model(v)

    def served_by(self, v: ModelVersion) -> list[dict]:
        with self.svc.db.session() as s:
            rows = list(s.scalars(select(Deployment).where(or_(
                Deployment.version_id == v.id, Deployment.canary_version_id == v.id))
                .order_by(Deployment.team, Deployment.name)))
        out = []
        for d in rows:
            if not self._can(d.team):
                continue
            canary = d.canary_version_id == v.id
            weight = d.canary_weight if canary else (
                100 - d.canary_weight if d.canary_version_id is not None else 100)
            node = {"kind": "deployment", "name": d.name, "team": d.team,
                    "serves": "canary" if canary else "stable", "weight": weight}
            if (("deployment", d.id)) in self.seen:
                node["repeat"] = True
            out.append(node)
        return out

    # -- datasets -----------------------------------------------------------------------------

    def dataset(self, v: DatasetVersion) -> dict:
        ds = v.dataset
        node: dict[str, Any] = {"kind": "dataset", "name": ds.name, "team": ds.team,
                                "version": v.version, "content_hash": v.content_hash}
        if not self._first("dataset", v.id):
            return {**node, "repeat": True}
        node.update(documents=(v.stats or {}).get("documents"), created_at=_when(v.created_at))
        inputs: list[dict] = []
        if v.job_id is not None:
            inputs.append(self.producer(v.job_id))
        files = (v.lineage or {}).get("inputs")
        files = [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []
        inputs += [_file(f) for f in files[:MAX_FILES]]
        if len(files) > MAX_FILES:
            node["files_left_out"] = len(files) - MAX_FILES
        node["inputs"] = inputs
        return node

    def dataset_named(self, text: Any, version: Any, team: str | None) -> dict:
        found = self._named("dataset", text, version, team)
        if "hidden" in found or "missing" in found:
            return found
        try:
            v = self.svc.datasets.version(self.who, names.qualified(found["team"],
                                                                    found["name"]),
                                          found["version"])
        except NotFound:
            return {**found, "missing": True}
        return self.dataset(v)

    def trained_on(self, v: DatasetVersion) -> list[dict]:
        """The model versions (of teams the caller reads) whose lineage names ``v``."""
        teams = self.who.readable_teams()
        q = select(ModelVersion).join(Model).options(
            selectinload(ModelVersion.model).selectinload(Model.aliases)).order_by(
            Model.team, Model.name, ModelVersion.version)
        if teams is not None:
            q = q.where(Model.team.in_(sorted(teams)))
        with self.svc.db.session() as s:
            rows = list(s.scalars(q))
        out = []
        for mv in rows:
            ds = (mv.lineage or {}).get("dataset") if isinstance(mv.lineage, dict) else None
            if not isinstance(ds, dict) or _int(ds.get("version")) != v.version:
                continue
            try:
                team, name = names.split(ds.get("name") if isinstance(ds.get("name"), str)
                                         else "")
            except InvalidRequest:
                continue
            if (team or mv.model.team, name) == (v.dataset.team, v.dataset.name):
                out.append(self.model(mv))
        return out

    # -- how a lineage names things -----------------------------------------------------------

    def _named(self, kind: str, text: Any, version: Any, team: str | None) -> dict:
        """``{"kind", "name", "team", "version"}`` for a name a lineage wrote (bare: the
        node's team), or a hidden or missing node; never a name of a team the caller
        cannot read."""
        number = _int(version)
        if not isinstance(text, str) or number is None:
            return {"kind": kind, "missing": True}
        try:
            asked, name = names.split(text)
        except InvalidRequest:
            return {"kind": kind, "missing": True}
        team = asked or team
        if not self._can(team):
            return {"kind": kind, "hidden": True}
        return {"kind": kind, "name": name, "team": team, "version": number}

    # -- jobs, steps and runs -----------------------------------------------------------------

    def producer(self, job_id: int) -> dict:
        """The step whose job ``job_id`` made something, or the plain job."""
        with self.svc.db.session() as s:
            job = s.get(Job, job_id)
            step = s.scalars(select(PipelineStep).where(PipelineStep.job_id == job_id)
                             .options(selectinload(PipelineStep.run)
                                      .selectinload(PipelineRun.pipeline))
                             .order_by(PipelineStep.id)).first()
        if job is None:
            return {"kind": "job", "id": job_id, "missing": True}
        if not self._can(job.team):
            return {"kind": "job", "hidden": True}
        if step is None or not self._can(step.run.team):
            return _job(job)
        node = _step_names(step)
        if not self._first("step", step.id):
            return {**node, "repeat": True}
        return {**node, "state": step.state, "job": _job(job)}

    def run(self, run: PipelineRun) -> dict:
        node = {"kind": "run", "id": run.id, "pipeline": run.pipeline.name, "team": run.team,
                "owner": run.owner, "state": run.state, "reason": run.reason,
                "trigger": run.trigger, "params": run.params,
                "created_at": _when(run.created_at), "ended_at": _when(run.ended_at)}
        self._first("run", run.id)
        node["steps"] = [self.step(step, run) for step in run.steps]
        return node

    def step(self, step: PipelineStep, run: PipelineRun) -> dict:
        node: dict[str, Any] = {"kind": "step", "name": step.name, "run": run.id,
                                "pipeline": run.pipeline.name, "state": step.state,
                                "reason": step.reason}
        self._first("step", step.id)
        ran = step
        if step.cached_from is not None:
            ran = self._original(step)
            if ran is None:
                node["cached_from"] = {"missing": True}
            elif not self._can(ran.run.team):
                node["cached_from"] = {"hidden": True}
                ran = None
            else:
                node["cached_from"] = {"run": ran.run_id, "step": ran.name,
                                       "job": ran.job_id}
        job_id = ran.job_id if ran is not None else None
        node["job"] = self._job_by_id(job_id) if job_id is not None else None
        node["outputs"] = self.outputs(job_id) if job_id is not None else []
        return node

    def _original(self, step: PipelineStep) -> PipelineStep | None:
        """The step a cached step reused, followed to the one that ran a job."""
        with self.svc.db.session() as s:
            current, hops = step, 0
            while current.cached_from is not None and hops < MAX_CACHE_HOPS:
                current = s.scalars(select(PipelineStep).where(
                    PipelineStep.id == current.cached_from).options(
                    selectinload(PipelineStep.run))).first()
                if current is None:
                    return None
                hops += 1
            return current

    def _job_by_id(self, job_id: int) -> dict | None:
        with self.svc.db.session() as s:
            job = s.get(Job, job_id)
        if job is None:
            return {"kind": "job", "id": job_id, "missing": True}
        return _job(job) if self._can(job.team) else {"kind": "job", "hidden": True}

    def outputs(self, job_id: int) -> list[dict]:
        """The dataset and model versions job ``job_id`` registered."""
        with self.svc.db.session() as s:
            datasets = list(s.scalars(select(DatasetVersion).join(Dataset).where(
                DatasetVersion.job_id == job_id).options(selectinload(DatasetVersion.dataset))
                .order_by(DatasetVersion.id)))
            models = list(s.scalars(select(ModelVersion).where(
                ModelVersion.job_id == job_id).options(
                selectinload(ModelVersion.model).selectinload(Model.aliases))
                .order_by(ModelVersion.id)))
        out = []
        for dv in datasets:
            if not self._can(dv.dataset.team):
                out.append({"kind": "dataset", "hidden": True})
                continue
            out.append(self.dataset(self.svc.datasets.version(
                self.who, names.qualified(dv.dataset.team, dv.dataset.name), dv.version)))
        for mv in models:
            out.append(self.model(mv) if self._can(mv.model.team)
                       else {"kind": "model", "hidden": True})
        return out


def _step_names(step: PipelineStep) -> dict:
    return {"kind": "step", "name": step.name, "run": step.run_id,
            "pipeline": step.run.pipeline.name}


def _job(job: Job) -> dict:
    return {"kind": "job", "id": job.id, "program": job.program, "state": job.state,
            "owner": job.owner}


def _file(f: dict) -> dict:
    node = {"kind": "file", "path": f.get("path"), "sha256": f.get("sha256"),
            "bytes": f.get("bytes")}
    if f.get("error"):
        node["error"] = f["error"]
    return node


def _source(source: dict) -> dict:
    """The file or folder a model was imported from."""
    return {"kind": "file", "path": source.get("path") or source.get("file"),
            "sha256": source.get("sha256"), "format": source.get("kind")}
