"""Job operations behind every face (REST API, CLI, SDK): submit, list, get, cancel, logs.

Validation happens here, before anything is written: an unknown program, bad or oversized
parameters (``LLMOS_MAX_JOB_PARAMS_KB``), impossible resources, a job its team's quota
could never hold, or missing dependencies raise an :mod:`llmos.errors` error and leave the
store untouched. :meth:`JobService.never_runs` is the "could never run" check, which
serving also asks before it accepts a deployment.

Every operation takes the :class:`~llmos.security.rbac.Principal` asking for it and checks
its role in the job's team here, in the service, so no face can go around the check:
viewers read, developers submit and cancel their own jobs, maintainers cancel anyone's.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from llmos.errors import Conflict, Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from llmos.kernel import programs
from llmos.kernel.executors import UnknownExecutor, available_executors, executor_class
from llmos.kernel.jobs import JobSpec, JobState, create_job
from llmos.kernel.resources import NodeState, too_large_reason
from llmos.kernel.scheduler.gang import gang_plan, is_multi_node
from llmos.kernel.scheduler.stages import beyond_quota, has_labels
from llmos.security.rbac import CREATE, MANAGE, READ, Principal
from llmos.store.models import Job, JobMetric

LOG_STREAMS = ("stdout", "stderr")


class JobService:
    def __init__(self, daemon):
        self.daemon = daemon
        self.db = daemon.db
        self.settings = daemon.settings

    # -- submit ------------------------------------------------------------------------

    def submit(self, who: Principal, spec: JobSpec) -> Job:
        return self.submit_many(who, [spec])[0]

    def submit_many(self, who: Principal, specs: list[JobSpec]) -> list[Job]:
        """Validate every spec, then write them all in one transaction (or none)."""
        prepared = [self._validate(who, spec) for spec in specs]
        with self.db.session() as s:
            deps = sorted({d for spec in specs for d in spec.depends_on})
            found = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(deps)))}
            missing = [d for d in deps if d not in found or not who.can(READ, found[d].team)]
            if missing:
                raise NotFound(f"dependency job(s) not found: {', '.join(map(str, missing))}")
            for dep in deps:
                state = found[dep].state
                if state in (JobState.FAILED.value, JobState.CANCELLED.value):
                    raise Conflict(f"dependency job {dep} is {state}; this job could never run")
            roots = self.read_roots(who)
            jobs = [create_job(s, spec, request, executor, owner=who.name, team=team,
                               read_roots=roots)
                    for spec, request, executor, team in prepared]
            s.flush()
            ids = [job.id for job in jobs]
        self.daemon.submitted(ids)
        with self.db.session() as s:  # one read for them all
            found = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)).options(
                selectinload(Job.dependencies), selectinload(Job.transitions)))}
        return [found[i] for i in ids]

    def read_roots(self, who: Principal) -> list[str]:
        """The host folders jobs of ``who`` may read: anywhere ("/") for a system
        administrator's own unrestricted token, else LLMOS_INGEST_ROOTS (none when unset).
        A job's sandbox shows it these folders only, and the programs that read host paths
        check against them (whatever route started the job)."""
        roots = [str(r) for r in self.settings.ingest_root_dirs]
        if who.is_system_admin:
            return ["/", *roots]  # the roots too: the sandbox shows them whole
        return roots

    def _validate(self, who: Principal, spec: JobSpec):
        team = who.home_team(spec.team, CREATE, "jobs")
        size = len(json.dumps(spec.params, default=str))
        if size > self.settings.max_job_params_kb << 10:
            raise PayloadTooLarge(
                f"the job's params are {size >> 10} KB of JSON; the limit is "
                f"{self.settings.max_job_params_kb} KB (LLMOS_MAX_JOB_PARAMS_KB): pass large "
                "inputs as artifacts")
        try:  # a program file must lie where its submitter may read (kernel/programs.py)
            programs.check(spec.program, spec.params, read_roots=self.read_roots(who))
        except programs.ProgramOutsideRoots as e:
            raise Forbidden(str(e)) from None
        except programs.ProgramError as e:
            raise InvalidRequest(str(e)) from None
        executor = spec.executor or self.settings.executor
        try:
            executor_class(executor)
        except UnknownExecutor:
            raise InvalidRequest(
                f"unknown executor {executor!r}; available: {', '.join(available_executors())}"
            ) from None
        if executor != self.settings.executor:  # its nodes are the only ones known
            raise InvalidRequest(
                f"this llmos runs jobs with the {self.settings.executor!r} executor on its "
                f"nodes; executor {executor!r} has none")
        refusal = self.daemon.isolation_refusal(executor)
        if refusal:
            raise Conflict(refusal)
        request = spec.resources.to_request(self.settings.default_job_memory_mb)
        if request.millicores < 1:
            raise InvalidRequest("cpu must be at least 0.001")
        never = self.never_runs(request, team, spec.node_labels, spec.multi_node)
        if never:
            raise InvalidRequest(never)
        return spec, request, executor, team

    def never_runs(self, request, team: str | None,
                   node_labels: dict[str, str] | None = None,
                   multi_node: bool | None = None) -> str | None:
        """Why a job asking ``request`` could never run in ``team`` (no node it may use is
        that large, nor, for a job that asks to span nodes, a gang over several; or the
        team's quota could never hold it), or None. With no node carrying its labels yet,
        it may still run: a node may join. ``multi_node``: whether the job asked to span
        nodes (None: it cannot, as a serving worker; no hint then)."""
        selector = tuple((node_labels or {}).items())
        nodes = [n.capacity for n in self.daemon.nodes.schedulable()
                 if has_labels(n, selector)]
        too_large = too_large_reason(request, nodes) if nodes else None
        spans = multi_node is not None and too_large and request.gpu > 1
        empty = [NodeState(n) for n in nodes] if spans else []
        if empty and is_multi_node(request, empty):  # a gang over several nodes, then?
            config = self.daemon.config
            if not config.multi_node:
                too_large += f"; {config.single_node_reason}" if multi_node else ""
            elif gang_plan(request, empty) is None:
                too_large += (f"; nor could a gang over several nodes hold it (they have "
                              f"{sum(len(n.gpus) for n in nodes)} gpu together)")
            elif not multi_node:
                too_large += ("; a distributed program may run over several nodes, one "
                              "rank per node, if the job asks for it (multi_node)")
            else:
                too_large = None
        if too_large:
            return too_large
        never = beyond_quota(request, self.daemon.config.quotas.get(team))
        if never:
            return f"this job could never run in team {team}: {never}"
        return None

    # -- read -------------------------------------------------------------------------

    def get(self, who: Principal, job_id: int, with_transitions: bool = True) -> Job:
        with self.db.session() as s:
            q = select(Job).where(Job.id == job_id).options(selectinload(Job.dependencies))
            if with_transitions:
                q = q.options(selectinload(Job.transitions))
            job = s.scalars(q).first()
            if job is None:
                raise NotFound(f"job {job_id} not found")
            who.check(READ, job.team, f"job {job_id}")
            return job

    def list(self, who: Principal, state: list[str] | None = None, owner: str | None = None,
             priority: str | None = None, name: str | None = None,
             since: datetime | None = None, limit: int = 100, offset: int = 0,
             team: str | None = None) -> tuple[list[Job], int]:
        q = select(Job)
        teams = who.readable_teams()
        if teams is not None:
            q = q.where(Job.team.in_(sorted(teams)))
        if state:
            bad = [x for x in state if x.upper() not in JobState.__members__]
            if bad:
                raise InvalidRequest(
                    f"unknown state {bad[0]!r}; one of {', '.join(JobState.__members__)}")
            q = q.where(Job.state.in_([x.upper() for x in state]))
        for column, value in ((Job.owner, owner), (Job.priority, priority), (Job.name, name),
                              (Job.team, team)):
            if value:
                q = q.where(column == value)
        if since:
            q = q.where(Job.created_at >= since)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery()))
            rows = s.scalars(
                q.options(selectinload(Job.dependencies)).order_by(Job.id.desc())
                .limit(limit).offset(offset)
            ).all()
            return list(rows), total

    def metrics(self, who: Principal, job_id: int, name: str | None = None,
                limit: int = 10000) -> list[JobMetric]:
        self.get(who, job_id, with_transitions=False)
        q = select(JobMetric).where(JobMetric.job_id == job_id)
        if name:
            q = q.where(JobMetric.name == name)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(JobMetric.id).limit(limit)))

    def log_path(self, who: Principal, job_id: int, stream: str) -> Path:
        if stream not in LOG_STREAMS:
            raise InvalidRequest(f"stream must be one of {', '.join(LOG_STREAMS)}")
        self.get(who, job_id, with_transitions=False)
        return self.daemon.workdir(job_id) / f"{stream}.log"

    # -- change -----------------------------------------------------------------------

    def cancel(self, who: Principal, job_id: int) -> Job:
        """Developers cancel their own jobs; maintainers anyone's in their team."""
        job = self.get(who, job_id, with_transitions=False)
        need = CREATE if job.owner == who.name else MANAGE
        who.check(need, job.team, f"job {job_id}")
        if JobState(job.state).terminal:
            raise Conflict(f"job {job_id} already ended ({job.state})")
        self.daemon.cancel(job_id)
        return self.get(who, job_id)
