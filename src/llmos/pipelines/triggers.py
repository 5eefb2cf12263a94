"""Triggers: what starts a pipeline's run on its own — a new version of a dataset of the
pipeline's team, or a cron schedule — and what happens when its last run is still going
(the pipeline's ``overlap``: ``skip`` the new run, ``queue`` it behind, or ``cancel`` the
older one).

A trigger acts as the pipeline's owner (who last applied it), with their rights at the
time it fires. A dataset version that one of the pipeline's own steps wrote never starts
it again (no loop). A daemon that was down fires a missed schedule once, not once per
slot. The clock is the engine's (injectable in tests).
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from llmos.errors import LLMOSError
from llmos.pipelines.schedule import due
from llmos.store.models import (Dataset, DatasetVersion, Pipeline, PipelineRun, PipelineStep,
                                PipelineTrigger)

log = logging.getLogger("llmos.pipelines")


def latest_version(s, team: str | None, dataset: str) -> DatasetVersion | None:
    q = select(DatasetVersion).join(Dataset).where(
        Dataset.name == dataset, Dataset.team.is_(None) if team is None else Dataset.team == team)
    return s.scalars(q.order_by(DatasetVersion.version.desc()).limit(1)).first()


class Triggers:
    def __init__(self, service):
        self.service, self.db = service, service.db

    def fire(self, now: datetime) -> list[int]:
        """Start the runs whose triggers are due; returns their ids."""
        with self.service.engine.lock:  # one firing at a time: each slot fires once
            return self._fire(now)

    def _fire(self, now: datetime) -> list[int]:
        started = []
        with self.db.session() as s:
            rows = list(s.scalars(select(PipelineTrigger).options(
                selectinload(PipelineTrigger.pipeline))))
            due_now = []
            for t in rows:
                why = self._due(s, t, now)
                if why:
                    due_now.append((t.pipeline_id, dict(t.params), why))
        for pipeline_id, params, why in due_now:
            run = self._start(pipeline_id, params, why)
            if run is not None:
                started.append(run)
        return started

    def _due(self, s, t: PipelineTrigger, now: datetime) -> str | None:
        team = t.pipeline.team
        if t.kind == "dataset":
            v = latest_version(s, team, t.target)
            if v is None or (t.last_version is not None and v.version <= t.last_version):
                return None
            t.last_version = v.version
            if v.job_id is not None and s.scalar(
                    select(func.count()).select_from(PipelineStep).join(PipelineRun).where(
                        PipelineStep.job_id == v.job_id,
                        PipelineRun.pipeline_id == t.pipeline_id)):
                return None  # written by this pipeline's own step
            return f"dataset {t.target}:{v.version}"
        at = due(t.target, t.last_fired_at or t.created_at, now)
        if at is None:
            return None
        t.last_fired_at = at
        return f"cron {t.target} at {at:%Y-%m-%d %H:%M} UTC"

    def _start(self, pipeline_id: int, params: dict, why: str) -> int | None:
        with self.db.session() as s:
            p = s.get(Pipeline, pipeline_id)
            active = list(s.scalars(select(PipelineRun).where(
                PipelineRun.pipeline_id == pipeline_id,
                PipelineRun.state.in_(("PENDING", "RUNNING")))))
            name, team, owner, overlap = p.name, p.team, p.owner, p.spec.get("overlap", "skip")
            admin = p.system_admin
            spec = p.spec
        if active and overlap == "skip":
            log.info("pipeline %s: %s; skipped (run %s still going)", name, why, active[0].id)
            return None
        try:
            who = self.service.tokens.principal_of_user(owner, team, admin)
            if active and overlap == "cancel":
                for run in active:
                    self.service.stop(run.id, f"cancelled: a newer run ({why}) replaces it")
            run = self.service.start(who, spec, params, team=team, trigger=why, pipeline=p)
        except LLMOSError as e:
            log.warning("pipeline %s: %s, but no run started: %s", name, why, e)
            return None
        log.info("pipeline %s: run %s started (%s)", name, run.id, why)
        return run.id
