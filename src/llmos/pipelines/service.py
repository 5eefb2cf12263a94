"""Pipelines as the faces see them: validate a file, run it, register it with its triggers,
list and read runs, cancel and resume them. Rights: a member of a team (developer or
above) runs, applies, cancels and resumes its pipelines; viewers read them; another team's
pipelines and runs do not exist for the caller. A job's own token starts no pipeline (a
run would outlive the job and act with its owner's full rights).

A run acts as its owner: each step is submitted through the owning service with the
owner's rights as they are when the step starts (``TokenService.principal_of_user``),
confined to the run's team.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, func, select
from sqlalchemy.orm import selectinload

from llmos.errors import Conflict, Forbidden, InvalidRequest, LLMOSError, NotFound
from llmos.pipelines.control import CONTROL
from llmos.pipelines.engine import ACTIVE, BAD, Engine
from llmos.pipelines.plan import plan
from llmos.pipelines.schedule import check_cron
from llmos.pipelines.spec import PipelineSpec, fill_params, load
from llmos.pipelines.steps import Call
from llmos.pipelines.triggers import Triggers, latest_version
from llmos.security import names
from llmos.security.rbac import CREATE, READ, SYSTEM, Principal
from llmos.store.models import (Job, Pipeline, PipelineRun, PipelineStep, PipelineTrigger,
                                utcnow)


log = logging.getLogger("llmos.pipelines")


class PipelineService:
    def __init__(self, system, engine: Engine | None = None):
        self.system, self.db, self.tokens = system, system.db, system.tokens
        self.engine = engine or Engine(system)
        self.engine.triggers = Triggers(self)
        system.daemon.on_jobs_ended.append(self.engine.wake)

    # -- files ---------------------------------------------------------------------------

    def validate(self, who: Principal, spec: dict | str, params: dict | None = None,
                 team: str | None = None) -> dict:
        sp = load(spec)
        filled = fill_params(sp, params)
        team = who.home_team(team, READ, "pipelines")  # a dry run: reading is enough
        return plan(sp, filled, self._roots(who, team)).to_dict()

    def _team(self, who: Principal, sp: PipelineSpec, team: str | None) -> str:
        with self.db.session() as s:
            return names.for_create(s, who, Pipeline, "pipeline", sp.name, asked=team)[0]

    def _roots(self, who: Principal, team: str) -> list[str]:
        """The folders the run's steps may read: its owner's, confined to its team (not
        the wider reach of an administrator's unrestricted token)."""
        runner = self.tokens.principal_of_user(who.name, team, who.is_system_admin)
        return self.system.jobs.read_roots(runner)

    def run(self, who: Principal, spec: dict | str, params: dict | None = None,
            no_cache: bool = False, team: str | None = None) -> PipelineRun:
        """Register (or update) the pipeline and start a run of it now."""
        _not_a_job(who)
        return self.start(who, spec, params, no_cache=no_cache, team=team, trigger="manual")

    def start(self, who: Principal, spec: dict | str, params: dict | None = None,
              no_cache: bool = False, team: str | None = None,
              trigger: str = "manual", pipeline: Pipeline | None = None) -> PipelineRun:
        """Start a run of ``spec``: registered (or updated) first, unless ``pipeline`` is
        the stored one a trigger fired (re-registering the spec it read would undo an
        ``apply`` made since)."""
        sp = load(spec)
        filled = fill_params(sp, params)
        if pipeline is None:
            team = self._team(who, sp, team)
        else:  # the owner as they are now: still a developer (or above) of its team
            team = who.home_team(pipeline.team, CREATE, "pipelines")
        plan(sp, filled, self._roots(who, team))
        if pipeline is None:
            pipeline = self._register(who, sp, team)
        with self.db.session() as s:
            run = PipelineRun(pipeline_id=pipeline.id, team=pipeline.team, owner=who.name,
                              system_admin=who.is_system_admin,
                              spec=sp.model_dump(mode="json"), params=filled,
                              no_cache=no_cache, trigger=trigger, state="PENDING")
            s.add(run)
            s.flush()
            for name in sp.steps:
                s.add(PipelineStep(run_id=run.id, name=name, step=name, state="WAITING"))
            run_id = run.id
        self.engine.wake()
        return self._run(run_id)

    def apply(self, who: Principal, spec: dict | str, team: str | None = None) -> Pipeline:
        """Register (or update) the pipeline and its triggers; start nothing."""
        _not_a_job(who)
        sp = load(spec)
        team = self._team(who, sp, team)
        plan(sp, fill_params(sp, None), self._roots(who, team))
        return self._register(who, sp, team)

    def _register(self, who: Principal, sp: PipelineSpec, team: str | None) -> Pipeline:
        for t in sp.triggers:
            if t.dataset is not None and not names_ok(t.dataset):
                raise _invalid(f"triggers: dataset {t.dataset!r}: a bare name of a dataset "
                               "of the pipeline's team")
            if t.cron is not None:
                try:
                    check_cron(t.cron)
                except ValueError as e:
                    raise _invalid(f"triggers: {e}") from None
            fill_params(sp, t.params)
        with self.db.session() as s:
            team, name, row = names.for_create(s, who, Pipeline, "pipeline", sp.name,
                                               asked=team)
            if row is None:
                row = Pipeline(name=name, team=team, owner=who.name, spec={})
                s.add(row)
                s.flush()
            row.spec, row.owner, row.updated_at = sp.model_dump(mode="json"), who.name, utcnow()
            row.system_admin = who.is_system_admin
            self._sync_triggers(s, row, sp)
            return row

    def _sync_triggers(self, s, row: Pipeline, sp: PipelineSpec) -> None:
        """The file's triggers replace the stored ones; one that stays keeps its memory
        (the dataset version it last saw, when it last fired)."""
        old = {(t.kind, t.target): t for t in s.scalars(
            select(PipelineTrigger).where(PipelineTrigger.pipeline_id == row.id))}
        for t in sp.triggers:
            kind, target = ("dataset", t.dataset) if t.dataset else ("cron", t.cron)
            kept = old.pop((kind, target), None)
            if kept is None:
                kept = PipelineTrigger(pipeline_id=row.id, kind=kind, target=target,
                                       created_at=utcnow())
                if kind == "dataset":  # only versions from now on start runs
                    v = latest_version(s, row.team, target)
                    kept.last_version = v.version if v else 0
                s.add(kept)
            kept.params, kept.overlap = dict(t.params), sp.overlap
        for gone in old.values():
            s.delete(gone)

    # -- pipelines -----------------------------------------------------------------------

    def list(self, who: Principal) -> list[Pipeline]:
        with self.db.session() as s:
            rows = list(s.scalars(select(Pipeline).order_by(Pipeline.name)))
        return [r for r in rows if who.can(READ, r.team)]

    def get(self, who: Principal, name: str) -> Pipeline:
        with self.db.session() as s:
            row = names.find(s, who, Pipeline, "pipeline", name)
        who.check(READ, row.team, f"pipeline {name!r}")
        return row

    def triggers(self, who: Principal, name: str) -> list[PipelineTrigger]:
        row = self.get(who, name)
        with self.db.session() as s:
            return list(s.scalars(select(PipelineTrigger).where(
                PipelineTrigger.pipeline_id == row.id).order_by(PipelineTrigger.id)))

    def delete(self, who: Principal, name: str) -> Pipeline:
        """Delete a pipeline, its triggers and its runs' records (not what they made)."""
        row = self.get(who, name)
        who.check(CREATE, row.team, f"pipeline {name!r}")
        with self.db.session() as s:
            active = s.scalar(select(PipelineRun.id).where(
                PipelineRun.pipeline_id == row.id, PipelineRun.state.in_(ACTIVE)).limit(1))
            if active is not None:
                raise Conflict(f"pipeline {name!r} has a run going (run {active}); cancel it "
                               "first")
            s.execute(delete(PipelineTrigger).where(PipelineTrigger.pipeline_id == row.id))
            runs = select(PipelineRun.id).where(PipelineRun.pipeline_id == row.id)
            s.execute(delete(PipelineStep).where(PipelineStep.run_id.in_(runs)))
            s.execute(delete(PipelineRun).where(PipelineRun.pipeline_id == row.id))
            s.execute(delete(Pipeline).where(Pipeline.id == row.id))
        return row

    # -- runs ----------------------------------------------------------------------------

    def runs(self, who: Principal, pipeline: str | None = None, state: list[str] | None = None,
             limit: int = 100) -> list[PipelineRun]:
        q = select(PipelineRun).options(selectinload(PipelineRun.pipeline)).order_by(
            PipelineRun.id.desc())
        if pipeline is not None:
            q = q.where(PipelineRun.pipeline_id == self.get(who, pipeline).id)
        if state:
            q = q.where(PipelineRun.state.in_([x.upper() for x in state]))
        teams = who.readable_teams()
        if teams is not None:
            q = q.where(PipelineRun.team.in_(sorted(teams)))
        with self.db.session() as s:
            return list(s.scalars(q.limit(max(1, min(limit, 1000)))))

    def origin_runs(self, step_ids: list[int]) -> dict[int, int]:
        """The run of each step row (the ones cached steps reused)."""
        if not step_ids:
            return {}
        with self.db.session() as s:
            return dict(s.execute(select(PipelineStep.id, PipelineStep.run_id)
                                  .where(PipelineStep.id.in_(set(step_ids)))).all())

    def step_states(self, run_ids: list[int]) -> dict[int, dict[str, int]]:
        """How many steps of each run are in each state."""
        counts: dict[int, dict[str, int]] = {}
        if not run_ids:
            return counts
        with self.db.session() as s:
            for run_id, state, n in s.execute(
                    select(PipelineStep.run_id, PipelineStep.state, func.count())
                    .where(PipelineStep.run_id.in_(run_ids))
                    .group_by(PipelineStep.run_id, PipelineStep.state)):
                counts.setdefault(run_id, {})[state] = n
        return counts

    def get_run(self, who: Principal, run_id: int) -> PipelineRun:
        run = self._run(run_id)
        who.check(READ, run.team, f"pipeline run {run_id}")
        return run

    def _run(self, run_id: int) -> PipelineRun:
        with self.db.session() as s:
            run = s.scalars(select(PipelineRun).where(PipelineRun.id == run_id).options(
                selectinload(PipelineRun.steps), selectinload(PipelineRun.pipeline))).first()
        if run is None:
            raise NotFound(f"pipeline run {run_id} not found")
        return run

    def cancel(self, who: Principal, run_id: int) -> PipelineRun:
        run = self.get_run(who, run_id)
        who.check(CREATE, run.team, f"pipeline run {run_id}")
        if run.state not in ACTIVE:
            raise Conflict(f"pipeline run {run_id} is already {run.state.lower()}")
        self.stop(run_id, f"cancelled by {who.name}")
        return self._run(run_id)

    def stop(self, run_id: int, reason: str) -> None:
        """End an active run: its jobs cancelled, a canary it started rolled back."""
        jobs, controls = [], []
        with self.engine.lock, self.db.session() as s:
            run = s.scalars(select(PipelineRun).where(PipelineRun.id == run_id).options(
                selectinload(PipelineRun.steps), selectinload(PipelineRun.pipeline))).one()
            if run.state not in ACTIVE:
                return
            for row in run.steps:
                if row.state == "RUNNING" and row.job_id:
                    jobs.append(row.job_id)
                if row.state == "RUNNING" and row.index is None and row.detail:
                    controls.append(row)
                if row.state in ("WAITING", "RUNNING"):
                    row.state, row.reason, row.ended_at = "CANCELLED", reason, utcnow()
            for job_id in self._control_jobs(run, controls):
                jobs.append(job_id)
            run.state, run.reason, run.ended_at = "CANCELLED", reason, utcnow()
            self.engine.forget(run_id)
            undo = [self._control_call(run, row) for row in controls]
        for job_id in jobs:
            with self.db.session() as s:
                live = s.get(Job, job_id)
                if live is not None and live.state in ("PENDING", "SCHEDULED", "RUNNING",
                                                       "PREEMPTED"):
                    self.system.daemon.cancel(job_id)
        for kind, call in (u for u in undo if u is not None):
            try:
                kind.cancel(call)
            except Exception:  # noqa: BLE001 - the run is cancelled whatever this says
                log.exception("pipeline run %s: undoing step %s", run_id, call.name)

    def _control_jobs(self, run: PipelineRun, rows: list[PipelineStep]) -> list[int]:
        return [j for r in rows for j in (r.detail or {}).get("evaluations", {}).values()]

    def _control_call(self, run: PipelineRun, row: PipelineStep):
        """What undoing a running control step needs (a rollout's canary: its step keeps
        the deployment it set it on), or None."""
        step = load(run.spec).steps.get(row.step)
        if step is None or step.program not in CONTROL:
            return None
        try:
            who = self.tokens.principal_of_user(run.owner, run.team, run.system_admin)
        except LLMOSError:
            who = SYSTEM  # the owner is gone: the system still takes its canary back
        return CONTROL[step.program], Call(name=row.name, spec=step, inputs={}, params={},
                                           who=who, team=run.team, system=self.system,
                                           detail=dict(row.detail))

    def resume(self, who: Principal, run_id: int) -> PipelineRun:
        """Run again the steps that failed, stopped or were cancelled, and what depends on
        them; every step that succeeded (or was cached) keeps its outputs."""
        _not_a_job(who)
        run = self.get_run(who, run_id)
        who.check(CREATE, run.team, f"pipeline run {run_id}")
        with self.engine.lock, self.db.session() as s:
            run = s.scalars(select(PipelineRun).where(PipelineRun.id == run_id).options(
                selectinload(PipelineRun.steps))).one()
            if run.state not in ("FAILED", "CANCELLED"):
                raise Conflict(f"pipeline run {run_id} is {run.state.lower()}; only a failed "
                               "or cancelled run resumes")
            again = {r.name for r in run.steps if r.index is None and r.state in BAD}
            for row in list(run.steps):
                if row.index is not None and row.step in again:
                    s.delete(row)
                elif row.name in again:
                    row.state, row.reason, row.job_id, row.cache_key = "WAITING", None, None, None
                    row.outputs = row.detail = row.inputs = None
                    row.started_at = row.ended_at = row.cached_from = None
            # queued behind a run of the pipeline still going; still its owner's
            run.state, run.reason, run.ended_at = "PENDING", None, None
            self.engine.forget(run_id)
        self.engine.wake()
        return self._run(run_id)


def names_ok(dataset: str) -> bool:
    return "/" not in dataset and ":" not in dataset and dataset.strip() == dataset


def _not_a_job(who: Principal) -> None:
    if who.job_id is not None:
        raise Forbidden("a job's token cannot start or resume pipelines")


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message)
