"""The pipeline engine: moves every active run forward, pass by pass, in its own thread.

A pass looks at each run's steps in plan order. A step whose needs have all ended either
stops (a need failed), is skipped (its ``when`` is false, or a need was skipped), is
answered from the cache (a step with the same key succeeded before, in the same team), or
starts: a kernel job submitted through the owning service as the run's owner — so the
kernel's priorities, quotas, preemption and placement apply unchanged — or, for a control
step, its first move. A running step ends with its job (outputs read back) or when its
control step says so. A ``map`` step becomes one step per element, ``name[i]``, whose
outputs the parent gathers into lists.

The daemon wakes the engine when jobs end; otherwise it looks every ``PERIOD_S``.
Everything is in the store: a restarted daemon's engine carries on where it was.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from llmos.errors import LLMOSError
from llmos.kernel.loop import Loop
from llmos.pipelines import expr
from llmos.pipelines.plan import Plan, PlannedStep, plan
from llmos.pipelines.spec import Ref, load, substitute
from llmos.pipelines.steps import Call, ProgramKind, StepFailed, content_of, key_of
from llmos.store.models import Job, PipelineRun, PipelineStep, utcnow

log = logging.getLogger("llmos.pipelines")
PERIOD_S = 1.0
MAX_MAP = 1000  # elements of one map
MAX_UNITS = 5000  # steps of one run, map elements included
ACTIVE = ("PENDING", "RUNNING")
DONE = ("SUCCEEDED", "CACHED", "SKIPPED", "FAILED", "STOPPED", "CANCELLED")
GOOD = ("SUCCEEDED", "CACHED")
BAD = ("FAILED", "STOPPED", "CANCELLED")


class Engine:
    def __init__(self, system, clock: Callable[[], datetime] = utcnow):
        self.system, self.db, self.clock = system, system.db, clock
        self.lock = threading.RLock()  # one pass, cancel or resume at a time
        self.triggers = None  # pipelines.triggers.Triggers, set by the service
        self._plans: dict[int, Plan] = {}
        self._loop = Loop("llmos-pipelines", PERIOD_S, self.run_pass)

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def wake(self) -> None:
        self._loop.wake()

    def run_pass(self) -> None:
        """Fire due triggers, then advance every active run (oldest first)."""
        if self.triggers is not None:
            self.triggers.fire(self.clock())
        with self.db.session() as s:
            ids = list(s.scalars(select(PipelineRun.id).where(PipelineRun.state.in_(ACTIVE))
                                 .order_by(PipelineRun.id)))
        for run_id in ids:
            try:
                self.advance(run_id)
            except Exception:  # noqa: BLE001 - one run's bug must not stall the others
                log.exception("advancing pipeline run %s failed", run_id)

    # -- one run -------------------------------------------------------------------------

    def plan_of(self, run: PipelineRun) -> Plan:
        if run.id not in self._plans:
            self._plans[run.id] = plan(load(run.spec), run.params)
        return self._plans[run.id]

    def advance(self, run_id: int) -> None:
        with self.lock, self.db.session() as s:
            run = s.scalars(select(PipelineRun).where(PipelineRun.id == run_id).options(
                selectinload(PipelineRun.steps), selectinload(PipelineRun.pipeline))).one()
            if run.state not in ACTIVE:
                self._plans.pop(run_id, None)
                return
            if run.state == "PENDING":
                if self._older_running(s, run):
                    return  # queued behind a run of the same pipeline
                run.state, run.started_at = "RUNNING", utcnow()
            try:
                who = self.system.tokens.principal_of_user(run.owner, run.team,
                                                           run.system_admin)
            except LLMOSError as e:
                self._end_run(s, run, "FAILED", f"cannot act for {run.owner}: {e}")
                return
            Pass(self, s, run, self.plan_of(run), who).go()

    def _older_running(self, s: Session, run: PipelineRun) -> bool:
        return s.scalar(select(PipelineRun.id).where(
            PipelineRun.pipeline_id == run.pipeline_id, PipelineRun.state == "RUNNING",
            PipelineRun.id != run.id).limit(1)) is not None

    def _end_run(self, s: Session, run: PipelineRun, state: str, reason: str | None) -> None:
        run.state, run.reason, run.ended_at = state, reason, utcnow()
        self._plans.pop(run.id, None)
        log.info("pipeline run %s (%s) %s%s", run.id, run.pipeline.name, state.lower(),
                 f": {reason}" if reason else "")

    def forget(self, run_id: int) -> None:
        self._plans.pop(run_id, None)


class Pass:
    """One pass over one run (a session open on it)."""

    def __init__(self, engine: Engine, s: Session, run: PipelineRun, p: Plan, who):
        self.engine, self.s, self.run, self.plan, self.who = engine, s, run, p, who
        self.system = engine.system
        self.rows: dict[str, PipelineStep] = {r.name: r for r in run.steps}
        self.jobs: dict[int, Job] = {}
        # plain jobs to submit at the end of the pass, with the jobs each waits for
        self.batch: list[tuple[PipelineStep, Call, PlannedStep, list[int]]] = []

    def go(self) -> None:
        running = [r.job_id for r in self.rows.values() if r.state == "RUNNING" and r.job_id]
        if running:
            self.jobs = {j.id: j for j in self.s.scalars(select(Job).where(Job.id.in_(running)))}
        # Sweeps until nothing new starts: the jobs a sweep submitted have ids in the next,
        # so the steps that only wait for them are submitted in this pass too.
        for _ in range(len(self.plan.order) + 1):
            for name in self.plan.order:
                row = self.rows[name]
                try:
                    self.step(self.plan.steps[name], row)
                except Exception as e:  # noqa: BLE001 - a bug in one step fails it only
                    log.exception("pipeline run %s: step %s", self.run.id, name)
                    self.end(row, "FAILED", f"internal error: {type(e).__name__}: {e}"[:2000])
            if not self.flush():
                break
        tops = [self.rows[n] for n in self.plan.order]
        if all(r.state in DONE for r in tops):
            failed = [r for r in tops if r.state == "FAILED"]
            if failed:
                self.engine._end_run(self.s, self.run, "FAILED", "; ".join(
                    f"step {r.name} failed: {r.reason}" for r in failed)[:4000])
            else:
                self.engine._end_run(self.s, self.run, "SUCCEEDED", None)

    # -- a step of the plan ----------------------------------------------------------------

    def step(self, p: PlannedStep, row: PipelineStep) -> None:
        if row.state in DONE:
            return
        if row.state == "WAITING":
            needs = [self.rows[n] for n in p.needs]
            going = [n for n in needs if n.state not in DONE]
            if going:
                after = self.eager(p, going)
                if after is not None:  # its job waits in the kernel for theirs
                    row.started_at = utcnow()
                    return self.expand(p, row, after) if p.mapped else self.start(
                        p, row, None, after)
                return
            bad = next((n for n in needs if n.state in BAD), None)
            if bad is not None:
                return self.end(row, "STOPPED", f"step {bad.name} "
                                f"{'failed' if bad.state == 'FAILED' else bad.state.lower()}")
            skipped = next((n for n in needs if n.state == "SKIPPED"), None)
            if skipped is not None:
                return self.end(row, "SKIPPED", f"step {skipped.name} was skipped")
            row.started_at = utcnow()
            if p.mapped:
                return self.expand(p, row, [])
            return self.start(p, row, None, [])
        if p.mapped:
            return self.gather(p, row)
        return self.poll(p, row)

    def eager(self, p: PlannedStep, going: list[PipelineStep]) -> list[int] | None:
        """The jobs a plain step can be submitted to wait for in the kernel (its needs that
        are still running, whose outputs it does not read and whose jobs exist), or None
        when it must wait here: the kernel then starts it the moment they succeed, and
        fails it (not started) if one of them fails."""
        if p.spec.when is not None or not isinstance(p.kind, ProgramKind):
            return None
        jobs = []
        for n in going:
            need = self.plan.steps[n.name]
            if n.name in p.reads or n.state != "RUNNING" or not _sure(need):
                return None
            units = ([self.rows[f"{n.name}[{i}]"] for i in range(n.detail["items"])]
                     if self.plan.steps[n.name].mapped else [n])
            for u in units:
                if u.state in DONE and u.state not in BAD:
                    continue
                if u.job_id is None or u.state != "RUNNING":
                    return None
                jobs.append(u.job_id)
        return jobs

    def expand(self, p: PlannedStep, row: PipelineStep, after: list[int]) -> None:
        try:
            items = substitute(p.spec.map, self.lookup(None))
        except StepFailed as e:
            return self.end(row, "FAILED", f"map: {e}")
        if not isinstance(items, list):
            return self.end(row, "FAILED", f"map: {type(items).__name__} is not a list")
        if len(items) > MAX_MAP:
            return self.end(row, "FAILED", f"map: {len(items)} elements; at most {MAX_MAP}")
        if len(self.rows) + len(items) > MAX_UNITS:
            return self.end(row, "FAILED", f"map: {len(items)} more steps would make the run "
                            f"{len(self.rows) + len(items)}; at most {MAX_UNITS}")
        row.state, row.detail = "RUNNING", {"items": len(items)}
        with self.s.no_autoflush:  # the cache lookups need not write the new rows first
            self._expand(p, items, after)
        self.gather(p, row)

    def _expand(self, p: PlannedStep, items: list, after: list[int]) -> None:
        for i, item in enumerate(items):
            child = PipelineStep(run_id=self.run.id, name=f"{p.name}[{i}]", step=p.name,
                                 index=i, state="WAITING", started_at=utcnow())
            self.s.add(child)
            self.rows[child.name] = child
            self.start(p, child, item, after)

    def gather(self, p: PlannedStep, row: PipelineStep) -> None:
        children = [self.rows[f"{p.name}[{i}]"] for i in range((row.detail or {})["items"])]
        for i, child in enumerate(children):
            if child.state == "RUNNING":
                self.poll(p, child, item=i)
        if any(c.state not in DONE for c in children):
            return
        failed = next((c for c in children if c.state == "FAILED"), None)
        if failed is not None:
            return self.end(row, "FAILED", f"{failed.name}: {failed.reason}")
        stopped = next((c for c in children if c.state in BAD), None)
        if stopped is not None:
            return self.end(row, "STOPPED", stopped.reason)
        if children and all(c.state == "SKIPPED" for c in children):
            return self.end(row, "SKIPPED", "every element was skipped")
        row.outputs = {name: [(c.outputs or {}).get(name) for c in children]
                       for name in p.outputs}
        if all(c.state == "CACHED" for c in children):
            return self.end(row, "CACHED", children[0].reason)
        self.end(row, "SUCCEEDED", None)

    # -- one unit of work (a step, or one element of a map) ----------------------------------

    def call(self, p: PlannedStep, row: PipelineStep, item: Any) -> Call:
        look = self.lookup(item)
        return Call(name=row.name, spec=p.spec, inputs=substitute(p.spec.inputs, look),
                    params=substitute(p.spec.params, look), who=self.who, team=self.run.team,
                    system=self.system, pipeline=self.run.pipeline.name,
                    detail=dict(row.detail or {}))

    def start(self, p: PlannedStep, row: PipelineStep, item: Any, after: list[int]) -> None:
        if item is not None or row.index is not None:
            row.detail = {**(row.detail or {}), "item": item}
        try:
            if p.when is not None and not self.truthy(p, item):
                return self.end(row, "SKIPPED", f"when: {p.when.text} is false")
            call = self.call(p, row, item)
            try:
                p.kind.check(p.spec, call.params, True)
            except ValueError as e:
                raise StepFailed(str(e)) from None
            if p.kind.control:
                row.state = "RUNNING"
                return self.poll(p, row, item=item)
            key = self.key(p, call, item) if p.kind.cacheable else None
            row.cache_key = key
            row.inputs = _jsonable(call.inputs)
            if key and p.spec.cache and not self.run.no_cache:
                hit = self.cached(key)
                if hit is not None:
                    row.cached_from = hit.cached_from or hit.id
                    row.outputs = hit.outputs
                    if after:  # answered, but not before what it comes after has ended
                        row.state = "RUNNING"
                        row.detail = {**(row.detail or {}), "cached_after": after}
                        return
                    return self.end(row, "CACHED", self.cached_reason(row))
            if isinstance(p.kind, ProgramKind):
                row.state = "RUNNING"  # its job is submitted with the others of this pass
                self.batch.append((row, call, p, after))
                return
            self.flush()
            self.s.commit()  # the service writes in its own transaction
            job = p.kind.submit(call)
        except (StepFailed, LLMOSError) as e:
            return self.end(row, "FAILED", str(e))
        row.job_id, row.state = job.id, "RUNNING"
        self.jobs[job.id] = job

    def flush(self) -> bool:
        """Submit the plain jobs this pass started, in one transaction (one by one when
        one of them is refused, so that only its step fails)."""
        batch, self.batch = self.batch, []
        if not batch:
            return False
        self.s.commit()
        try:
            jobs = self.system.jobs.submit_many(self.who, [p.kind.job_spec(c, after)
                                                           for _, c, p, after in batch])
        except LLMOSError:
            jobs = []
            for row, call, p, after in batch:
                try:
                    jobs.append(self.system.jobs.submit(self.who, p.kind.job_spec(call, after)))
                except LLMOSError as e:
                    jobs.append(None)
                    self.end(row, "FAILED", str(e))
        for (row, _, _, _), job in zip(batch, jobs):
            if job is not None:
                row.job_id = job.id
                self.jobs[job.id] = job
        return True

    def poll(self, p: PlannedStep, row: PipelineStep, item: Any = None) -> None:
        item = (row.detail or {}).get("item", item)
        call = self.call(p, row, item)
        try:
            if p.kind.control:
                self.s.commit()
                out = p.kind.advance(call)
                row.detail = {**call.detail}
                if out is not None:
                    row.outputs = _jsonable(out)
                    self.end(row, "SUCCEEDED", out.get("reason") if isinstance(
                        out.get("reason"), str) else None)
                return
            if row.job_id is None and (row.detail or {}).get("cached_after"):
                return self.cached_when_done(p, row)
            if row.job_id is None:
                if not any(b[0] is row for b in self.batch):
                    self.start(p, row, item, [])  # a pass that died before submitting it
                return
            job = self.jobs.get(row.job_id) or self.s.get(Job, row.job_id)
            if job is None:
                raise StepFailed(f"its job {row.job_id} is gone")
            if job.state == "SUCCEEDED":
                bad = next((self.rows[n] for n in p.needs if self.rows[n].state in BAD), None)
                if bad is not None:  # its job ran, but what it needed did not succeed
                    return self.end(row, "STOPPED", f"step {bad.name} failed")
                row.outputs = _jsonable(p.kind.collect(call, job))
                self.end(row, "SUCCEEDED", None)
            elif job.state in ("FAILED", "CANCELLED"):
                stopped = self.stopped_by(p, job)
                if stopped is not None:
                    self.end(row, "STOPPED", stopped)
                else:
                    self.end(row, "FAILED", f"job {job.id} {job.state.lower()}: {job.reason}")
        except StepFailed as e:
            row.detail = {**call.detail}
            if "outcome" in call.detail:
                row.outputs = _jsonable(call.detail["outcome"])
            self.end(row, "FAILED", str(e))
        except LLMOSError as e:
            self.end(row, "FAILED", str(e))

    def cached_reason(self, row: PipelineStep) -> str:
        origin = self.s.get(PipelineStep, row.cached_from)
        return f"cached from run {origin.run_id}" if origin else "cached"

    def cached_when_done(self, p: PlannedStep, row: PipelineStep) -> None:
        """A cached step ordered after running steps ends when they have."""
        needs = [self.rows[n] for n in p.needs]
        if any(n.state not in DONE for n in needs):
            return
        bad = next((n for n in needs if n.state in BAD), None)
        if bad is not None:
            return self.end(row, "STOPPED", f"step {bad.name} failed")
        self.end(row, "CACHED", self.cached_reason(row))

    def stopped_by(self, p: PlannedStep, job: Job) -> str | None:
        """The need whose failure the kernel stopped this step's waiting job for."""
        if not (job.reason or "").startswith("dependency job"):
            return None
        bad = next((self.rows[n] for n in p.needs if self.rows[n].state in BAD), None)
        return f"step {bad.name} failed" if bad is not None else job.reason

    def end(self, row: PipelineStep, state: str, reason: str | None) -> None:
        row.state, row.reason, row.ended_at = state, reason, utcnow()
        if row.started_at is None:
            row.started_at = row.ended_at

    # -- values, conditions, keys, the cache --------------------------------------------------

    def outputs_of(self, name: str) -> dict:
        row = self.rows[name]
        return dict(row.outputs or {})

    def lookup(self, item: Any) -> Callable[[Ref], Any]:
        def value(ref: Ref) -> Any:
            if ref.root == "params":
                return _walk(self.run.params, ref.path[1:], ref)
            if ref.root == "item":
                return _walk(item, ref.path[1:], ref)
            return _walk(self.outputs_of(ref.step), ref.path[2:], ref, ref.path[2])
        return value

    def truthy(self, p: PlannedStep, item: Any) -> bool:
        env = {"params": self.run.params, "item": item,
               "steps": {n: self.outputs_of(n) for n in p.needs}}
        try:
            return bool(p.when.evaluate(env))
        except expr.ExprError as e:
            raise StepFailed(f"when: {e}") from None

    def key(self, p: PlannedStep, call: Call, item: Any) -> str:
        types = p.kind.inputs_of(p.spec)
        inputs = {k: content_of(self.system, self.who, types.get(k, "value"), v, self.run.team)
                  for k, v in call.inputs.items()}
        return key_of({"program": p.spec.program, "code": p.kind.code(p.spec),
                       "params": call.params, "inputs": inputs,
                       "files": p.kind.fingerprint(call),
                       "outputs": p.spec.outputs})

    def cached(self, key: str) -> PipelineStep | None:
        """The newest step of this team with the same key that succeeded, if what it
        made is still there."""
        team = self.run.team
        rows = self.s.scalars(
            select(PipelineStep).join(PipelineRun).where(
                PipelineStep.cache_key == key, PipelineStep.state == "SUCCEEDED",
                PipelineRun.team.is_(None) if team is None else PipelineRun.team == team)
            .order_by(PipelineStep.id.desc()).limit(3))
        for row in rows:
            if self.still_there(row.outputs or {}):
                return row
        return None

    def still_there(self, outputs: dict) -> bool:
        for value in outputs.values():
            if isinstance(value, dict) and value.get("kind") in ("dataset", "model"):
                try:
                    content_of(self.system, self.who, value["kind"], value, self.run.team)
                except StepFailed:
                    return False
        return True


def _sure(p: PlannedStep) -> bool:
    """Whether the step succeeds exactly when its jobs do (a plain program declaring no
    outputs: nothing can fail once its job succeeded), so a job may wait on its jobs."""
    return isinstance(p.kind, ProgramKind) and not p.spec.outputs and p.spec.when is None


def _walk(value: Any, path: tuple[str, ...], ref: Ref, what: str | None = None) -> Any:
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise StepFailed(f"${{{ref}}} is not there")
    return value


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))
