"""The tuning driver: moves every running study forward, pass by pass, in its own thread
of the daemon (as the pipeline engine does for runs).

A pass over a study follows each running trial's job: the objective values it reported
through ``ctx.metric`` (``job_metrics``) become the trial's intermediate values, and the
study's pruner is asked whether the trial should stop; a pruned trial is told PRUNED and
its job cancelled at once, freeing its resources. A trial whose job succeeded is told
COMPLETE with its last objective value (or the value in its result), FAIL when its job
failed or reported none. Then new trials are asked for and their jobs submitted — as the
study's owner, through the training service or the job service, so the kernel's
priorities, quotas and preemption apply — while fewer than ``parallel`` run and fewer
than ``trials`` exist. Trial number and job id are tied in the trial's user attributes
(``job``). When the study has all its trials finished, the best one is recorded, and in a
fine-tuning study its registered version gets the alias ``best`` on the output model.

Everything is in the store (llmos's tables and Optuna's): a restarted daemon's driver
finishes from the store the trials whose jobs ended meanwhile, follows the running ones,
and asks for no trial twice. A job submitted just before a crash, whose trial never got
its id, is found again by its parameters rather than submitted twice; a trial stored just
before a crash, before its parameters were drawn, draws them then.

The daemon wakes the driver when jobs end; otherwise it looks every ``period_s``.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import timedelta, timezone
from typing import Any

from sqlalchemy import select

from llmos.errors import LLMOSError
from llmos.kernel.jobs import JobSpec, ResourceSpec
from llmos.kernel.loop import Loop
from llmos.optimize.tune_recipe import (TuneRecipe, distributions, make_sampler,
                                        parse_tune_recipe, trial_recipe)
from llmos.optimize.tune_storage import storage_for
from llmos.security import names
from llmos.store.models import Job, JobMetric, TuneStudy, utcnow

log = logging.getLogger("llmos.tune")
ENDED_JOB = ("SUCCEEDED", "FAILED", "CANCELLED")
MIN_FAILURES = 3  # a study whose first trials all fail ends after this many
DEFAULT_RESOURCES = ResourceSpec(cpu=1.0)


class TuneDriver:
    def __init__(self, system, period_s: float = 1.0):
        self.system, self.db = system, system.db
        self.lock = threading.RLock()  # one pass, stop or resume at a time
        self._studies: dict[int, Any] = {}  # loaded optuna studies (their samplers' state)
        self._loop = Loop("llmos-tune", period_s, self.run_pass)

    @property
    def storage(self):
        return storage_for(self.db)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def wake(self) -> None:
        self._loop.wake()

    def forget(self, study_id: int) -> None:
        self._studies.pop(study_id, None)

    def run_pass(self) -> None:
        with self.db.session() as s:
            ids = list(s.scalars(select(TuneStudy.id).where(TuneStudy.state == "RUNNING")
                                 .order_by(TuneStudy.id)))
        for study_id in ids:
            try:
                self.advance(study_id)
            except Exception:  # noqa: BLE001 - one study's bug must not stall the others
                log.exception("advancing tuning study %s failed", study_id)

    def study_of(self, row: TuneStudy, recipe: TuneRecipe):
        import optuna

        study = self._studies.get(row.id)
        if study is None:
            offset = len(self.storage.get_all_trials(
                self.storage.get_study_id_from_name(row.optuna_study), deepcopy=False))
            study = optuna.load_study(study_name=row.optuna_study, storage=self.storage,
                                      sampler=make_sampler(recipe, offset),
                                      pruner=recipe.pruner.make())
            self._studies[row.id] = study
        return study

    # -- one study -----------------------------------------------------------------------

    def advance(self, study_id: int) -> None:
        from optuna.trial import TrialState

        with self.lock:
            with self.db.session() as s:
                row = s.get(TuneStudy, study_id)
            if row is None or row.state != "RUNNING":
                self.forget(study_id)
                return
            recipe = parse_tune_recipe(row.recipe)
            try:
                who = self.system.tokens.principal_of_user(row.owner, row.team,
                                                           row.system_admin)
            except LLMOSError as e:
                return self.end(row, "FAILED", f"cannot act for {row.owner}: {e}")
            study = self.study_of(row, recipe)
            p = Pass(self, row, recipe, study, who)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                p.follow(t)
            p.fill()

    def end(self, row: TuneStudy, state: str, reason: str | None,
            best: dict | None = None) -> None:
        with self.db.session() as s:
            live = s.get(TuneStudy, row.id)
            live.state, live.reason, live.ended_at = state, reason, utcnow()
            if best is not None:
                live.best = best
        row.state = state
        self.forget(row.id)
        log.info("tuning study %s %s%s", row.name, state.lower(),
                 f": {reason}" if reason else "")

    def finish(self, row: TuneStudy, recipe: TuneRecipe, study, who) -> None:
        """Every trial has finished: record the best; alias its version ``best``."""
        from optuna.trial import TrialState

        best = best_of(study, recipe)
        if best is None:
            n = {s: len(study.get_trials(deepcopy=False, states=(s,)))
                 for s in (TrialState.FAIL, TrialState.PRUNED)}
            return self.end(row, "FAILED", f"no trial completed ({n[TrialState.FAIL]} "
                            f"failed, {n[TrialState.PRUNED]} pruned)")
        reason = None
        if recipe.mode == "train":
            reason = self.mark_best(row, recipe, best, who)
        self.end(row, "SUCCEEDED", reason, best)

    def mark_best(self, row: TuneStudy, recipe: TuneRecipe, best: dict, who) -> str | None:
        """Record the study's result on the best version (``tune:<study>``) and point the
        alias ``best`` at it, with the owner's rights (moving an alias is a maintainer's);
        returns what could not be done, or None."""
        if best.get("version") is None:
            return f"trial {best['number']} registered no version"
        name = names.qualified(row.team, recipe.output)
        try:
            self.system.registry.add_metrics(
                who, name, str(best["version"]), f"tune:{row.name}",
                {"objective": recipe.objective.metric, "value": best["value"],
                 "params": best["params"], "trial": best["number"]})
            self.system.registry.set_alias(who, name, "best", best["version"])
        except LLMOSError as e:
            return f"alias best not set on {name}:{best['version']}: {e}"
        return None


class Pass:
    """One pass over one study."""

    def __init__(self, driver: TuneDriver, row: TuneStudy, recipe: TuneRecipe, study, who):
        self.driver, self.row, self.recipe, self.study, self.who = (driver, row, recipe,
                                                                     study, who)
        self.system, self.db, self.storage = driver.system, driver.db, driver.storage

    # -- following a trial ---------------------------------------------------------------

    def follow(self, t) -> None:
        from optuna.trial import TrialState

        job_id = t.user_attrs.get("job")
        if job_id is None:
            t = self.finish_asking(t)
            if t is None:
                return
            job_id = self.orphan(t)
            if job_id is None:
                return self.submit(t)
            self.storage.set_trial_user_attr(t._trial_id, "job", job_id)
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return self.tell(t, TrialState.FAIL, reason=f"its job {job_id} is gone")
            metrics = list(s.scalars(select(JobMetric).where(
                JobMetric.job_id == job_id, JobMetric.name == self.recipe.objective.metric)
                .order_by(JobMetric.id)))
        values = [(m.step if m.step is not None else i, m.value)
                  for i, m in enumerate(metrics) if _finite(m.value)]
        new = [(step, v) for step, v in values if step not in t.intermediate_values]
        for step, v in dict(new).items():
            self.storage.set_trial_intermediate_value(t._trial_id, step, v)
        if job.state == "SUCCEEDED":
            return self.complete(t, job, values)
        if job.state in ENDED_JOB:
            return self.tell(t, TrialState.FAIL, reason=f"job {job.id} "
                             f"{job.state.lower()}: {job.reason or 'no reason given'}")
        if new and self.recipe.pruner.name != "none":
            frozen = self.storage.get_trial(t._trial_id)
            if self.study.pruner.prune(self.study, frozen):
                step = max(frozen.intermediate_values)
                self.tell(t, TrialState.PRUNED, reason=f"pruned at step {step}")
                self.cancel(job)

    def complete(self, t, job: Job, values: list[tuple[int, float]]) -> None:
        from optuna.trial import TrialState

        result = job.result if isinstance(job.result, dict) else {}
        value = values[-1][1] if values else result.get(self.recipe.objective.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(
                value):
            return self.tell(t, TrialState.FAIL, reason=f"job {job.id} reported no "
                             f"{self.recipe.objective.metric!r} (through ctx.metric, or in "
                             "its result)")
        if self.recipe.mode == "train" and isinstance(result.get("version"), int):
            self.storage.set_trial_user_attr(t._trial_id, "version", result["version"])
        self.tell(t, TrialState.COMPLETE, value=float(value))

    def tell(self, t, state, value: float | None = None, reason: str | None = None) -> None:
        if reason:
            self.storage.set_trial_user_attr(t._trial_id, "reason", reason[:2000])
        try:
            self.study.tell(t.number, state=state,
                            values=None if value is None else value, skip_if_finished=True)
        except RuntimeError as e:
            # The grid sampler asks the study to stop once its grid is covered, which only
            # an optimize() loop may; the trial is told all the same (state stored first).
            if "Study.stop" not in str(e):
                raise
        log.info("tuning study %s: trial %s %s%s", self.row.name, t.number, state.name,
                 f" ({value:.6g})" if value is not None else "")

    def cancel(self, job: Job) -> None:
        if job.state not in ENDED_JOB:
            try:
                self.system.daemon.cancel(job.id)
            except Exception:  # noqa: BLE001 - the trial is told whatever this says
                log.exception("tuning study %s: cancelling job %s", self.row.name, job.id)

    # -- new trials ------------------------------------------------------------------------

    def fill(self) -> None:
        """Ask for new trials while fewer than ``parallel`` run; end the study when every
        trial has finished."""
        from optuna.trial import TrialState

        replaced = set(self.study.user_attrs.get("replaced", []))
        trials = [t for t in self.study.get_trials(deepcopy=False) if counts(t, replaced)]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        failed = [t for t in trials if t.state == TrialState.FAIL]
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        if len(failed) >= min(MIN_FAILURES, self.recipe.trials) and not done and not pruned:
            for t in running:
                self.stop_trial(t, "the study failed")
            first = failed[0].user_attrs.get("reason", "no reason given")
            return self.driver.end(self.row, "FAILED", f"its first {len(failed)} trials "
                                   f"failed; trial {failed[0].number}: {first}")
        if len(trials) >= self.recipe.trials and not running:
            return self.driver.finish(self.row, self.recipe, self.study, self.who)
        dists = distributions(self.recipe)
        while len(trials) < self.recipe.trials and len(running) < self.recipe.parallel:
            trial = self.study.ask(dists)
            frozen = self.storage.get_trial(trial._trial_id)
            trials.append(frozen)
            running.append(frozen)
            self.submit(frozen)

    def job_spec(self, t) -> tuple[str, dict]:
        """The program and parameters a trial's job runs (what ``orphan`` looks for)."""
        if self.recipe.mode == "program":
            return self.recipe.program, {**self.recipe.params, **t.params}
        return "train.finetune", {"recipe": trial_recipe(self.recipe, t.params)}

    def submit(self, t) -> None:
        from optuna.trial import TrialState

        r = self.recipe
        try:
            if r.mode == "program":
                program, params = self.job_spec(t)
                job = self.system.jobs.submit(self.who, JobSpec(
                    program=program, params=params, name=f"tune {self.row.name} #{t.number}",
                    resources=r.resources or DEFAULT_RESOURCES, priority=r.priority,
                    team=self.row.team))
            else:
                from llmos.train.service import FinetuneRequest

                req = FinetuneRequest(recipe=self.job_spec(t)[1]["recipe"], model=r.model,
                                      dataset=r.dataset, output=r.output, team=self.row.team,
                                      priority=r.priority,
                                      **({"resources": r.resources} if r.resources else {}))
                job = self.system.train.finetune(self.who, req)
        except (LLMOSError, ValueError) as e:
            return self.tell(t, TrialState.FAIL, reason=f"its job was refused: {e}")
        self.storage.set_trial_user_attr(t._trial_id, "job", job.id)
        log.info("tuning study %s: trial %s is job %s %s", self.row.name, t.number, job.id,
                 t.params)

    def finish_asking(self, t):
        """``t`` with all its parameters. A daemon killed while a trial was asked for
        (Optuna stores the new trial, then each parameter it draws) leaves it running
        with some of them missing: they are drawn now, as the ask would have. Where they
        cannot be (a grid trial cut off before its grid point was stored), the trial is
        told FAIL and replaced, as a resume replaces failed trials: None."""
        import optuna
        from optuna.trial import TrialState

        missing = {name: d for name, d in distributions(self.recipe).items()
                   if name not in t.params}
        if not missing:
            return t
        try:
            trial = optuna.trial.Trial(self.study, t._trial_id)
            for name, dist in missing.items():
                suggest(trial, name, dist)
        except Exception as e:  # noqa: BLE001 - whatever the sampler says, the trial ends
            log.warning("tuning study %s: trial %s cut off while asked: %s", self.row.name,
                        t.number, e)
            self.tell(t, TrialState.FAIL, reason="the daemon stopped while its parameters "
                      "were drawn; another trial runs in its place")
            mark_replaced(self.study, [t.number])
            return None
        log.info("tuning study %s: trial %s, cut off while asked, drew %s", self.row.name,
                 t.number, ", ".join(missing))
        return self.storage.get_trial(t._trial_id)

    def orphan(self, t) -> int | None:
        """The job submitted for ``t`` whose id was never written to it (the daemon
        stopped in between), found by its program and parameters."""
        program, params = self.job_spec(t)
        taken = {x.user_attrs.get("job") for x in self.study.get_trials(deepcopy=False)}
        # Optuna keeps local naive times; jobs, UTC
        start = t.datetime_start.astimezone(timezone.utc) if t.datetime_start else utcnow()
        since = start - timedelta(seconds=5)
        with self.db.session() as s:
            jobs = s.scalars(select(Job).where(
                Job.owner == self.row.owner, Job.program == program,
                Job.team.is_(None) if self.row.team is None else Job.team == self.row.team,
                Job.created_at >= since).order_by(Job.id))
            for job in jobs:
                p = job.params or {}
                same = (p == params if self.recipe.mode == "program" else
                        p.get("recipe") == params["recipe"] and p.get("output") ==
                        self.recipe.output)
                if same and job.id not in taken:
                    return job.id
        return None

    def stop_trial(self, t, why: str, stopped: bool = False) -> None:
        """End a running trial and its job (a study stopping or failing)."""
        from optuna.trial import TrialState

        job_id = t.user_attrs.get("job")
        if stopped:
            self.storage.set_trial_user_attr(t._trial_id, "stopped", True)
        self.tell(t, TrialState.FAIL, reason=why)
        if job_id is not None:
            with self.db.session() as s:
                job = s.get(Job, job_id)
            if job is not None:
                self.cancel(job)


def suggest(trial, name: str, dist) -> Any:
    """``trial``'s value for ``name`` drawn from ``dist`` (through Optuna's public
    suggest methods, one per kind of distribution)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def mark_replaced(study, numbers: list[int]) -> None:
    """These failed trials no longer count: others run in their place (:func:`counts`)."""
    replaced = sorted(set(study.user_attrs.get("replaced", [])) | set(numbers))
    study.set_user_attr("replaced", replaced)


def counts(t, replaced: set[int]) -> bool:
    """Whether a trial counts towards the study's ``trials``: not one a stop ended, nor a
    failed one a resume replaced (``replaced``: their numbers, a study attribute, as a
    finished trial cannot be changed)."""
    return not (t.user_attrs.get("stopped") or t.number in replaced)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_of(study, recipe: TuneRecipe) -> dict | None:
    """The best complete trial: its number, value, parameters, job and version."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    t = study.best_trial
    best = {"number": t.number, "value": t.value, "params": t.params,
            "job": t.user_attrs.get("job")}
    if recipe.mode == "train":
        best.update(model=recipe.output, version=t.user_attrs.get("version"))
    return best
