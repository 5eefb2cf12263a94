"""Job operations behind every face (REST API, CLI, SDK): submit, list, get, cancel, logs.

Validation happens here, before anything is written: an unknown program, bad parameters,
impossible resources or missing dependencies raise an :mod:`llmos.errors` error and
leave the store untouched.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.kernel import programs
from llmos.kernel.executors import UnknownExecutor, available_executors, executor_class
from llmos.kernel.jobs import JobSpec, JobState, create_job, missing_jobs
from llmos.kernel.resources import too_large_reason
from llmos.store.models import Job, JobMetric

LOG_STREAMS = ("stdout", "stderr")


class JobService:
    def __init__(self, daemon):
        self.daemon = daemon
        self.db = daemon.db
        self.settings = daemon.settings

    # -- submit ------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> Job:
        return self.submit_many([spec])[0]

    def submit_many(self, specs: list[JobSpec]) -> list[Job]:
        """Validate every spec, then write them all in one transaction (or none)."""
        prepared = [self._validate(spec) for spec in specs]
        with self.db.session() as s:
            deps = sorted({d for spec in specs for d in spec.depends_on})
            missing = missing_jobs(s, deps)
            if missing:
                raise NotFound(f"dependency job(s) not found: {', '.join(map(str, missing))}")
            for dep in deps:
                state = s.get(Job, dep).state
                if state in (JobState.FAILED.value, JobState.CANCELLED.value):
                    raise Conflict(f"dependency job {dep} is {state}; this job could never run")
            jobs = [create_job(s, spec, request, executor) for spec, request, executor in prepared]
            s.flush()
            ids = [job.id for job in jobs]
        self.daemon.submitted(ids)
        return [self.get(i) for i in ids]

    def _validate(self, spec: JobSpec):
        try:
            programs.check(spec.program, spec.params)
        except programs.ProgramError as e:
            raise InvalidRequest(str(e)) from None
        executor = spec.executor or self.settings.executor
        try:
            executor_class(executor)
        except UnknownExecutor:
            raise InvalidRequest(
                f"unknown executor {executor!r}; available: {', '.join(available_executors())}"
            ) from None
        request = spec.resources.to_request(self.settings.default_job_memory_mb)
        if request.millicores < 1:
            raise InvalidRequest("cpu must be at least 0.001")
        too_large = too_large_reason(request, [self.daemon.node.capacity])
        if too_large:
            raise InvalidRequest(too_large)
        return spec, request, executor

    # -- read -------------------------------------------------------------------------

    def get(self, job_id: int, with_transitions: bool = True) -> Job:
        with self.db.session() as s:
            q = select(Job).where(Job.id == job_id).options(selectinload(Job.dependencies))
            if with_transitions:
                q = q.options(selectinload(Job.transitions))
            job = s.scalars(q).first()
            if job is None:
                raise NotFound(f"job {job_id} not found")
            return job

    def list(self, state: list[str] | None = None, owner: str | None = None,
             priority: str | None = None, name: str | None = None,
             since: datetime | None = None, limit: int = 100, offset: int = 0,
             ) -> tuple[list[Job], int]:
        q = select(Job)
        if state:
            bad = [x for x in state if x.upper() not in JobState.__members__]
            if bad:
                raise InvalidRequest(
                    f"unknown state {bad[0]!r}; one of {', '.join(JobState.__members__)}")
            q = q.where(Job.state.in_([x.upper() for x in state]))
        if owner:
            q = q.where(Job.owner == owner)
        if priority:
            q = q.where(Job.priority == priority)
        if name:
            q = q.where(Job.name == name)
        if since:
            q = q.where(Job.created_at >= since)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery()))
            rows = s.scalars(
                q.options(selectinload(Job.dependencies)).order_by(Job.id.desc())
                .limit(limit).offset(offset)
            ).all()
            return list(rows), total

    def metrics(self, job_id: int, name: str | None = None, limit: int = 10000) -> list[JobMetric]:
        self.get(job_id, with_transitions=False)
        q = select(JobMetric).where(JobMetric.job_id == job_id)
        if name:
            q = q.where(JobMetric.name == name)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(JobMetric.id).limit(limit)))

    def log_path(self, job_id: int, stream: str) -> Path:
        if stream not in LOG_STREAMS:
            raise InvalidRequest(f"stream must be one of {', '.join(LOG_STREAMS)}")
        self.get(job_id, with_transitions=False)
        return self.daemon.workdir(job_id) / f"{stream}.log"

    # -- change -----------------------------------------------------------------------

    def cancel(self, job_id: int) -> Job:
        job = self.get(job_id, with_transitions=False)
        if JobState(job.state).terminal:
            raise Conflict(f"job {job_id} already ended ({job.state})")
        self.daemon.cancel(job_id)
        return self.get(job_id)
