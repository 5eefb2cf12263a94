"""Tuning studies as the faces see them: start one from a recipe, list, show (best so far,
trials by state, parameter importances), stop and resume.

Checked before any job exists: the recipe (every field, ``tune_recipe``); for a
fine-tuning study the base model, the dataset version, its splits and columns, and the
output name, as the training service checks them; for a program study that the program
takes the parameters and sampled values (and lies where the owner's jobs may read); that
a trial's resources could ever run in the team. Rights follow jobs': members of a team
(developers and above) start, stop and resume its studies; viewers read them; another
team's studies do not exist for the caller (404). A job's own token starts no study (a
study outlives the job).

The study acts as its owner (``TokenService.principal_of_user``): each trial's job is
submitted with the owner's rights as they are when it starts.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from llmos.errors import Conflict, Forbidden, InvalidRequest
from llmos.kernel import programs
from llmos.kernel.jobs import ResourceSpec
from llmos.optimize.tune_driver import DEFAULT_RESOURCES, TuneDriver, best_of, mark_replaced
from llmos.optimize.tune_recipe import MAX_TRIALS, TuneRecipe, parse_tune_recipe
from llmos.optimize.tune_storage import storage_for
from llmos.security import names
from llmos.security.rbac import CREATE, READ, Principal
from llmos.store.models import TuneStudy
from llmos.train.errors import RecipeError

STATES = ("RUNNING", "SUCCEEDED", "FAILED", "STOPPED")


class TuneService:
    def __init__(self, system, period_s: float | None = None):
        self.system, self.db = system, system.db
        tick = system.settings.tick_s
        self.driver = TuneDriver(system, period_s or min(1.0, max(0.1, 2 * tick)))
        system.daemon.on_jobs_ended.append(self.driver.wake)

    # -- start -----------------------------------------------------------------------------

    def start(self, who: Principal, recipe: dict | str, team: str | None = None
              ) -> TuneStudy:
        """Check the recipe whole, create the study (llmos's row, Optuna's study) and let
        the driver start its first trials."""
        if who.job_id is not None:
            raise Forbidden("a job's token cannot start or resume tuning studies")
        try:
            r = parse_tune_recipe(recipe)
        except RecipeError as e:
            raise InvalidRequest(str(e)) from None
        with self.db.session() as s:
            team, name, row = names.for_create(s, who, TuneStudy, "study", r.name,
                                               asked=team or r.team)
        if row is not None:
            raise Conflict(f"study {r.name!r} exists in team {team} ({row.state.lower()}); "
                           "resume it, or give the new one another name")
        runner = self.system.tokens.principal_of_user(who.name, team, who.is_system_admin)
        self._check(runner, r, team)
        import optuna

        key = f"llmos-{uuid.uuid4().hex}"
        optuna.create_study(storage=storage_for(self.db), study_name=key,
                            direction=r.objective.direction)
        try:
            with self.db.session() as s:
                row = TuneStudy(name=name, team=team, owner=who.name,
                                system_admin=who.is_system_admin,
                                recipe=r.model_dump(mode="json", exclude_none=True),
                                state="RUNNING", optuna_study=key)
                s.add(row)
                s.flush()
                study_id = row.id
        except IntegrityError:  # the same name, started at the same moment
            raise Conflict(f"study {r.name!r} exists in team {team}") from None
        self.driver.wake()
        return self._row(study_id)

    def _check(self, runner: Principal, r: TuneRecipe, team: str) -> None:
        resources = r.resources or DEFAULT_RESOURCES
        if r.mode == "train":
            self._check_train(runner, r, team)
            if r.resources is None:
                from llmos.train.service import FinetuneRequest

                resources = FinetuneRequest.model_fields["resources"].default_factory()
        else:
            sample = {k: d.ends()[0] for k, d in r.space.items()}
            try:
                programs.check(r.program, {**r.params, **sample},
                               read_roots=self.system.jobs.read_roots(runner))
            except programs.ProgramOutsideRoots as e:
                raise Forbidden(f"tune recipe: program: {e}") from None
            except programs.ProgramError as e:
                raise InvalidRequest(f"tune recipe: program: {e}") from None
        never = self.system.jobs.never_runs(
            ResourceSpec.model_validate(resources).to_request(
                self.system.settings.default_job_memory_mb), team)
        if never:
            raise InvalidRequest(f"tune recipe: resources: a trial {never}")

    def _check_train(self, runner: Principal, r: TuneRecipe, team: str) -> None:
        """What the training service checks before a fine-tuning job, once for every
        trial (each trial's recipe differs only in the searched values)."""
        from llmos.models.registry import check_model_name, parse_ref
        from llmos.store.models import Model
        from llmos.train.recipe import parse_train_recipe
        from llmos.train.service import BASES, check_columns

        recipe = parse_train_recipe(r.train)
        name, ref = parse_ref(r.model)
        base = self.system.registry.version(runner, name, ref)
        if base.task not in BASES[recipe.task]:
            raise InvalidRequest(f"tune recipe: model: {name}:{base.version} is a {base.task} "
                                 f"model; a {recipe.task} recipe starts from "
                                 f"{' or '.join(BASES[recipe.task])}")
        ds_name, _, ds_ref = r.dataset.partition(":")
        ds = self.system.datasets.version(runner, ds_name, ds_ref or "latest")
        present = {s["split"] for s in ds.shards}
        if "train" not in present:
            raise InvalidRequest(f"tune recipe: dataset: {ds_name}:{ds.version} has no train "
                                 f"split (splits: {', '.join(sorted(present)) or 'none'})")
        if r.objective.metric.startswith("eval_") and "validation" not in present:
            raise InvalidRequest(f"tune recipe: objective.metric: {r.objective.metric} needs "
                                 f"a validation split; {ds_name}:{ds.version} has none")
        check_columns(recipe, ds.schema, f"dataset {ds_name}:{ds.version}")
        check_model_name(r.output)
        with self.db.session() as s:
            names.for_create(s, runner, Model, "model", r.output, asked=team)

    # -- read ------------------------------------------------------------------------------

    def list(self, who: Principal, state: list[str] | None = None) -> list[TuneStudy]:
        q = select(TuneStudy).order_by(TuneStudy.id.desc())
        teams = who.readable_teams()
        if teams is not None:
            q = q.where(TuneStudy.team.in_(sorted(teams)))
        if state:
            bad = [x for x in state if x.upper() not in STATES]
            if bad:
                raise InvalidRequest(f"unknown state {bad[0]!r}; one of {', '.join(STATES)}")
            q = q.where(TuneStudy.state.in_([x.upper() for x in state]))
        with self.db.session() as s:
            return list(s.scalars(q))

    def get(self, who: Principal, name: str) -> TuneStudy:
        with self.db.session() as s:
            row = names.find(s, who, TuneStudy, "study", name)
        who.check(READ, row.team, f"study {name!r}")
        return row

    def _row(self, study_id: int) -> TuneStudy:
        with self.db.session() as s:
            return s.get(TuneStudy, study_id)

    def _study(self, row: TuneStudy):
        import optuna

        return optuna.load_study(study_name=row.optuna_study, storage=storage_for(self.db))

    def trials(self, row: TuneStudy, study=None) -> list[dict[str, Any]]:
        """Every trial: number, state, value, parameters, job, version, last step, why."""
        study = study or self._study(row)
        replaced = set(study.user_attrs.get("replaced", []))
        out = []
        for t in study.get_trials(deepcopy=False):
            steps = t.intermediate_values
            out.append({"number": t.number, "state": t.state.name, "value": t.value,
                        "params": t.params, "job": t.user_attrs.get("job"),
                        "version": t.user_attrs.get("version"),
                        "reason": t.user_attrs.get("reason"),
                        "stopped": bool(t.user_attrs.get("stopped")),
                        "replaced": t.number in replaced,
                        "last_step": max(steps) if steps else None,
                        "started_at": t.datetime_start, "ended_at": t.datetime_complete})
        return out

    def summary(self, row: TuneStudy, with_trials: bool = True,
                with_importances: bool = False) -> dict[str, Any]:
        """Best value so far, trials by state and the best parameters; with the trials,
        every trial; with the importances (from two complete trials), the parameters'
        importances (the first computation in a process imports Optuna's importance
        evaluators, which takes seconds)."""
        recipe = parse_tune_recipe(row.recipe)
        study = self._study(row)
        trials = self.trials(row, study)
        counts = {k: sum(1 for t in trials if t["state"] == k and not t["stopped"])
                  for k in ("COMPLETE", "PRUNED", "RUNNING", "FAIL")}
        out = {"trials_wanted": recipe.trials, "done": counts["COMPLETE"],
               "pruned": counts["PRUNED"], "running": counts["RUNNING"],
               "failed": counts["FAIL"],
               "stopped": sum(1 for t in trials if t["stopped"]),
               "best": row.best or best_of(study, recipe)}
        if with_trials:
            out["trials"] = trials
        if with_importances:
            out["importances"] = importances(study)
        return out

    # -- change ----------------------------------------------------------------------------

    def stop(self, who: Principal, name: str) -> TuneStudy:
        """Stop a running study: its running trials' jobs cancelled (those trials do not
        count: a resume runs others in their place)."""
        from llmos.optimize.tune_driver import Pass

        row = self.get(who, name)
        who.check(CREATE, row.team, f"study {name!r}")
        with self.driver.lock:
            row = self._row(row.id)
            if row.state != "RUNNING":
                raise Conflict(f"study {name!r} is already {row.state.lower()}")
            from optuna.trial import TrialState

            recipe = parse_tune_recipe(row.recipe)
            runner = self.system.tokens.principal_of_user(row.owner, row.team,
                                                          row.system_admin)
            study = self.driver.study_of(row, recipe)
            p = Pass(self.driver, row, recipe, study, runner)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                p.stop_trial(t, f"stopped by {who.name}", stopped=True)
            self.driver.end(row, "STOPPED", f"stopped by {who.name}")
        return self._row(row.id)

    def resume(self, who: Principal, name: str, trials: int | None = None) -> TuneStudy:
        """Run a stopped or failed study on (or one that ended, with more ``trials``):
        its complete and pruned trials stay; its failed ones are replaced; new ones start
        until it has ``trials``."""
        if who.job_id is not None:
            raise Forbidden("a job's token cannot start or resume tuning studies")
        row = self.get(who, name)
        who.check(CREATE, row.team, f"study {name!r}")
        if trials is not None and not 1 <= trials <= MAX_TRIALS:
            raise InvalidRequest(f"trials: between 1 and {MAX_TRIALS}")
        with self.driver.lock, self.db.session() as s:
            live = s.get(TuneStudy, row.id)
            if live.state == "RUNNING":
                raise Conflict(f"study {name!r} is running")
            recipe = dict(live.recipe)
            if trials is not None:
                try:
                    parse_tune_recipe({**recipe, "trials": trials})
                except RecipeError as e:
                    raise InvalidRequest(str(e)) from None
                recipe["trials"] = trials
            elif live.state == "SUCCEEDED":
                raise Conflict(f"study {name!r} has all its {recipe['trials']} trials; resume "
                               "it with more trials")
            live.recipe, live.state, live.reason, live.ended_at = recipe, "RUNNING", None, None
            live.best = None
            self._replace_failed(live)
            self.driver.forget(row.id)
        self.driver.wake()
        return self._row(row.id)


    def _replace_failed(self, row: TuneStudy) -> None:
        """The failed trials of a resumed study no longer count: others run in their
        place (a program fixed since runs again)."""
        from optuna.trial import TrialState

        study = self._study(row)
        failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if not t.user_attrs.get("stopped")]
        if failed:
            mark_replaced(study, failed)


def importances(study) -> dict[str, float] | None:
    """Each parameter's importance for the objective (Optuna's default evaluator,
    PED-ANOVA), from the complete trials; None with fewer than two, or when they cannot
    tell."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    try:
        found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    return {k: round(float(v), 4) for k, v in found.items()}
