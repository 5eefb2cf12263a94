"""Control steps: the parts of CI/CD for models that are decisions, not computation. They
run inside the pipeline engine, pass by pass, and start a kernel job only when they need
one (an evaluation of the champion on the candidate's test split).

- ``promote`` moves an alias (``champion``) to the candidate version only if it beats the
  version the alias names now, on the same dataset version and split, by ``margin``; the
  comparison is recorded on the candidate (metrics key ``promotion:<alias>``) and is the
  step's output either way.
- ``rollout`` sends ``weight`` percent of a deployment's requests to the candidate (a
  canary: the gateway splits the traffic), watches error rate and median latency of both
  versions for ``window_s``, then completes (the deployment serves the candidate) or rolls
  back.

Each ``advance`` returns None while it waits, or the step's outputs when done; raising
StepFailed ends the step as failed (a rollback is a failure of the step: the run's goal
was not reached). ``cancel`` undoes what a stopped step left half done.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, field_validator

from llmos.errors import LLMOSError, NotFound
from llmos.kernel.jobs import ResourceSpec
from llmos.pipelines.spec import cpu_as_float
from llmos.pipelines.steps import Call, Kind, StepFailed, resolve_dataset, resolve_model
from llmos.schema import RequestBody
from llmos.store.models import Job
from llmos.train.service import EvaluateRequest

LOWER_IS_BETTER = ("loss", "perplexity", "eval_loss", "error_rate")


class PromoteParams(RequestBody):
    alias: str = Field(default="champion", min_length=1, max_length=50)
    metric: str = Field(default="accuracy", min_length=1, max_length=100)
    margin: float = Field(default=0.0, ge=0)
    split: str = Field(default="test", pattern=r"^(train|validation|test)$")
    fields: dict[str, Any] = Field(default_factory=dict, description="Recipe fields for "
                                   "evaluating a version that has no result on the split.")
    lower_is_better: bool | None = Field(default=None, description="Default: true for "
                                         "loss and perplexity, false otherwise.")
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu=1.0,
                                                                         memory_mb=3072),
                                    description="Of an evaluation it starts.")

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, value):
        return cpu_as_float(value)


class RolloutParams(RequestBody):
    deployment: str = Field(min_length=1, max_length=200)
    weight: int = Field(default=20, ge=1, le=99)
    window_s: float = Field(default=60.0, gt=0, le=7 * 24 * 3600)
    min_requests: int = Field(default=20, ge=1, le=10**9)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_latency_ratio: float = Field(default=2.0, gt=0, description="Roll back when the "
                                     "canary's median latency is more than this many times "
                                     "the stable version's.")
    max_wait_s: float = Field(default=3600.0, gt=0, le=30 * 24 * 3600,
                              description="Roll back if the canary has not had min_requests "
                              "by then.")
    deploy: dict[str, Any] = Field(default_factory=dict, description="When the deployment "
                                   "does not exist yet: it is created serving the candidate, "
                                   "with these settings (engine, cpu, memory_mb, ...).")


class ControlKind(Kind):
    control = True
    cacheable = False

    def build(self, spec, params: dict, inputs: dict, team):
        try:
            return self.request.model_validate(params)
        except Exception as e:  # noqa: BLE001 - pydantic's ValidationError
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"params.{where}: {err['msg']}") from None

    def check(self, spec, params: dict, complete: bool) -> None:
        fields = set(self.request.model_fields)
        for key in params:
            if key not in fields:
                raise ValueError(f"params.{key}: unknown parameter of {self.name} (its "
                                 f"parameters: {', '.join(sorted(fields))})")
        if complete:
            self.build(spec, params, {}, None)

    def code(self, spec) -> str:
        return self.name

    def advance(self, call: Call) -> dict | None:
        raise NotImplementedError

    def cancel(self, call: Call) -> None:
        pass


class Promote(ControlKind):
    name = "promote"
    inputs = {"model": "model", "dataset": "dataset"}
    required = ("model", "dataset")
    outputs = {"promoted": "value", "comparison": "value"}
    request = PromoteParams

    def advance(self, call: Call) -> dict | None:
        p: PromoteParams = self.build(call.spec, call.params, {}, None)
        sys, who = call.system, call.who
        candidate = _model(sys, who, call.inputs["model"], call.team)
        ds = _dataset(sys, who, call.inputs["dataset"], call.team)
        key = f"eval:{ds.dataset.name}:{ds.version}:{p.split}"
        name = candidate.model.name
        held = next((a.version_id for a in candidate.model.aliases if a.alias == p.alias),
                    None)
        champion = sys.registry.version_by_id(held) if held is not None else None
        if champion is not None and champion.id == candidate.id:
            return self._done(call, False, {"reason": f"{name}:{candidate.version} already is "
                                            f"{p.alias}", "key": key})
        versions = [candidate] + ([champion] if champion is not None else [])
        missing = [v for v in versions if key not in (v.metrics or {})]
        if missing:
            return self._evaluate(call, p, missing, ds, key)
        lower = p.lower_is_better if p.lower_is_better is not None else (
            p.metric in LOWER_IS_BETTER)
        cand_value = _metric(candidate, key, p.metric)
        comparison = {"key": key, "metric": p.metric, "margin": p.margin,
                      "lower_is_better": lower, "alias": p.alias,
                      "candidate": {"version": candidate.version, "value": cand_value}}
        if champion is None:
            better, why = True, f"no {p.alias} yet"
        else:
            champ_value = _metric(champion, key, p.metric)
            comparison["champion"] = {"version": champion.version, "value": champ_value}
            gain = (champ_value - cand_value) if lower else (cand_value - champ_value)
            better = gain > p.margin  # beats it by more than the margin
            why = (f"{p.metric} {cand_value:.4g} vs {p.alias} {name}:{champion.version} "
                   f"{champ_value:.4g} on {key}: "
                   + (f"better by {gain:.4g}" if better else
                      f"not better by more than {p.margin:g} (difference {gain:+.4g})"))
        comparison["reason"] = why
        try:
            sys.registry.record_promotion(who, name, candidate.version, p.alias,
                                          {**comparison, "promoted": better})
            if better:
                sys.registry.set_alias(who, name, p.alias, candidate.version)
        except LLMOSError as e:
            raise StepFailed(f"cannot promote: {e}") from None
        return self._done(call, better, comparison)

    def _evaluate(self, call: Call, p: PromoteParams, missing, ds, key) -> dict | None:
        """Start (once) an evaluation of each version lacking a result on the split; wait
        for them."""
        jobs: dict = call.detail.setdefault("evaluations", {})
        with call.system.db.session() as s:
            for v in missing:
                job_id = jobs.get(str(v.id))
                if job_id is None:
                    continue
                job = s.get(Job, job_id)
                if job.state in ("FAILED", "CANCELLED"):
                    raise StepFailed(f"evaluating {v.model.name}:{v.version} on {key} "
                                     f"failed (job {job_id}): {job.reason}")
        for v in missing:
            if str(v.id) not in jobs:
                req = EvaluateRequest(model=f"{_qualified(v.model, call.team)}:{v.version}",
                                      dataset=f"{_qualified(ds.dataset, call.team)}:{ds.version}",
                                      split=p.split, fields=p.fields,
                                      resources=p.resources, priority=call.spec.priority
                                      or "normal")
                try:
                    jobs[str(v.id)] = call.system.train.evaluate(call.who, req).id
                except LLMOSError as e:
                    raise StepFailed(f"cannot evaluate {v.model.name}:{v.version}: {e}") from None
        return None

    def _done(self, call: Call, promoted: bool, comparison: dict) -> dict:
        return {"promoted": promoted, "comparison": comparison}

    def jobs(self, call: Call) -> list[int]:
        return list(call.detail.get("evaluations", {}).values())


class Rollout(ControlKind):
    name = "rollout"
    inputs = {"model": "model"}
    required = ("model",)
    outputs = {"outcome": "value", "stats": "value"}
    request = RolloutParams

    def advance(self, call: Call) -> dict | None:
        p: RolloutParams = self.build(call.spec, call.params, {}, None)
        sys, who = call.system, call.who
        version = _model(sys, who, call.inputs["model"], call.team)
        try:
            d = sys.deployments.get(who, p.deployment)
        except NotFound:
            if "since" in call.detail:
                raise StepFailed(f"deployment {p.deployment} was deleted during the rollout"
                                 ) from None
            return self._first(call, p, version)
        except LLMOSError as e:
            raise StepFailed(str(e)) from None
        now = time.time()
        if "since" not in call.detail:
            if d.version_id == version.id:
                return {"outcome": "unchanged", "stats": {},
                        "reason": f"{p.deployment} already serves {version.model.name}:"
                                  f"{version.version}"}
            try:
                sys.deployments.set_canary(who, p.deployment, version.version, p.weight,
                                           model=_qualified(version.model, call.team))
            except LLMOSError as e:
                raise StepFailed(f"cannot start the canary: {e}") from None
            # what a cancel needs to take the canary back, whoever cancels
            call.detail.update(since=now, deployment_id=d.id, version=version.version,
                               deployment=_qualified(d, None))
            return None
        if d.canary_version_id != version.id:
            raise StepFailed(f"the canary on {p.deployment} was changed or removed by "
                             "someone else")
        stats = sys.gateway.canary_stats(d.id)
        none = {"requests": 0, "errors": 0, "error_rate": 0.0, "p50_s": None, "p95_s": None}
        canary, stable = stats.get("canary") or none, stats.get("stable") or none
        elapsed = now - call.detail["since"]
        bad = self._bad(p, canary, stable)
        if bad and canary["requests"] >= p.min_requests:
            return self._rollback(call, p, stats, bad)
        if elapsed < p.window_s or canary["requests"] < p.min_requests:
            if elapsed >= p.max_wait_s:
                return self._rollback(call, p, stats, f"only {canary['requests']} request(s) "
                                      f"reached the canary in {elapsed:.0f} s "
                                      f"(min_requests {p.min_requests})")
            return None
        try:
            sys.deployments.complete_canary(who, p.deployment)
        except LLMOSError as e:
            raise StepFailed(f"cannot complete the rollout: {e}") from None
        return {"outcome": "completed", "stats": stats,
                "reason": f"canary {version.model.name}:{version.version} served "
                          f"{canary['requests']} request(s), error rate "
                          f"{canary['error_rate']:.1%}; now serves all traffic"}

    def _first(self, call: Call, p: RolloutParams, version) -> dict:
        """No deployment yet: the candidate is deployed as it (nothing to compare with)."""
        from llmos.serve.deployments import DeployRequest

        ref = f"{_qualified(version.model, call.team)}:{version.version}"
        try:
            req = DeployRequest.model_validate({**cpu_as_float(p.deploy), "model": ref,
                                                "name": p.deployment})
            call.system.deployments.deploy(call.who, req)
        except ValueError as e:  # pydantic's ValidationError
            raise StepFailed(f"params.deploy: {str(e).splitlines()[-1].strip()}") from None
        except LLMOSError as e:
            raise StepFailed(f"cannot deploy {p.deployment}: {e}") from None
        return {"outcome": "deployed", "stats": {},
                "reason": f"{p.deployment} did not exist: deployed serving {ref}"}

    @staticmethod
    def _bad(p: RolloutParams, canary: dict, stable: dict) -> str | None:
        if canary["requests"] and canary["error_rate"] > p.max_error_rate:
            return (f"canary error rate {canary['error_rate']:.1%} > "
                    f"{p.max_error_rate:.1%} ({canary['errors']} of {canary['requests']})")
        # the median: a canary's first answer pays for loading its model, once
        if canary.get("p50_s") and stable.get("p50_s") and (
                canary["p50_s"] > p.max_latency_ratio * stable["p50_s"]):
            return (f"canary median latency {canary['p50_s']:.3f} s > "
                    f"{p.max_latency_ratio:g} x stable {stable['p50_s']:.3f} s")
        return None

    def _rollback(self, call: Call, p: RolloutParams, stats: dict, why: str) -> dict:
        try:
            call.system.deployments.clear_canary(call.who, p.deployment)
        except LLMOSError:
            pass
        call.detail["outcome"] = {"outcome": "rolled back", "stats": stats, "reason": why}
        raise StepFailed(f"rolled back: {why}")

    def cancel(self, call: Call) -> None:
        """The run was stopped mid-canary: the deployment serves its stable version only."""
        if "since" in call.detail and "outcome" not in call.detail:
            call.system.deployments.clear_canary(call.who, call.detail["deployment"])


def _model(sys, who, value, team):
    try:
        return resolve_model(sys, who, value, team)
    except LLMOSError as e:
        raise StepFailed(str(e)) from None


def _dataset(sys, who, value, team):
    try:
        return resolve_dataset(sys, who, value, team)
    except LLMOSError as e:
        raise StepFailed(str(e)) from None


def _qualified(obj, team) -> str:
    from llmos.security import names

    return names.for_job(team, obj.team, obj.name)


def _metric(version, key: str, metric: str) -> float:
    value = (version.metrics or {}).get(key, {}).get(metric)
    if not isinstance(value, (int, float)):
        have = ", ".join(k for k, v in (version.metrics or {}).get(key, {}).items()
                         if isinstance(v, (int, float)))
        raise StepFailed(f"{version.model.name}:{version.version} has no {metric!r} in {key} "
                         f"(it has: {have or 'nothing'})")
    return float(value)


CONTROL: dict[str, ControlKind] = {k.name: k for k in (Promote(), Rollout())}
