"""/v1/jobs: submit, list, get, cancel, logs (with follow over server-sent events), metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmos.api.gate import current, needs
from llmos.api.schemas import ERRORS, JobBatch, JobList, JobOut, MetricList, MetricOut
from llmos.kernel.jobfiles import open_read, size_of
from llmos.kernel.jobs import JobSpec, JobState
from llmos.kernel.service import LOG_STREAMS, JobService
from llmos.schema import INT32_MAX, IsoTime
from llmos.security.rbac import Principal

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = PathParam(ge=1, le=INT32_MAX, description="Job id")
Who = Depends(current)
# Submitting or cancelling writes, and the answer is the job: both scopes, checked first.
Submits = needs("write", "read", what="create jobs")
Cancels = needs("write", "read", what="cancel jobs")
MAX_LOG_BYTES = 8 << 20


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


@router.post("", response_model=JobOut, status_code=201, responses=ERRORS)
def submit(spec: JobSpec, request: Request, who: Principal = Submits) -> JobOut:
    """Submit one job; it is PENDING when this returns."""
    return JobOut.of(_jobs(request).submit(who, spec), transitions=True)


@router.post("/batch", response_model=JobList, status_code=201, responses=ERRORS)
def submit_batch(batch: JobBatch, request: Request, who: Principal = Submits) -> JobList:
    """Submit many jobs in one transaction: all are written, or none."""
    jobs = _jobs(request).submit_many(who, batch.jobs)
    return JobList(jobs=[JobOut.of(j) for j in jobs], total=len(jobs))


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(
    request: Request,
    who: Principal = Who,
    state: list[str] | None = Query(default=None, max_length=10),
    owner: str | None = Query(default=None, max_length=200),
    priority: Literal["high", "normal", "low"] | None = None,
    name: str | None = Query(default=None, max_length=200),
    team: str | None = Query(default=None, max_length=100),
    since: IsoTime | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
    offset: int = Query(default=0, ge=0, le=INT32_MAX),
) -> JobList:
    """Jobs you may see, newest first, filtered by state (repeatable), owner, priority,
    name, team, time."""
    jobs, total = _jobs(request).list(who, state, owner, priority, name, since, limit, offset,
                                      team)
    return JobList(jobs=[JobOut.of(j) for j in jobs], total=total)


@router.get("/{job_id:int}", response_model=JobOut, responses=ERRORS)
def get_job(request: Request, job_id: int = JobId, who: Principal = Who) -> JobOut:
    """One job with its whole state history."""
    return JobOut.of(_jobs(request).get(who, job_id), transitions=True)


@router.post("/{job_id:int}/cancel", response_model=JobOut, responses=ERRORS)
def cancel(request: Request, job_id: int = JobId, who: Principal = Cancels) -> JobOut:
    """Cancel: a queued job at once; a running one gets SIGTERM, then SIGKILL after the
    grace period (its state turns CANCELLED when its process is gone)."""
    return JobOut.of(_jobs(request).cancel(who, job_id), transitions=True)


@router.get("/{job_id:int}/metrics", response_model=MetricList, responses=ERRORS)
def metrics(request: Request, job_id: int = JobId, who: Principal = Who,
            name: str | None = Query(default=None, max_length=200),
            limit: int = Query(default=10_000, ge=1, le=100_000)) -> MetricList:
    """Metrics the job reported, oldest first."""
    return MetricList(metrics=[MetricOut.of(m) for m in _jobs(request).metrics(who, job_id, name, limit)])


@router.get("/{job_id:int}/logs", responses={**ERRORS, 200: {"content": {"text/plain": {},
                                                                     "text/event-stream": {}}}})
async def logs(
    request: Request,
    job_id: int = JobId,
    who: Principal = Who,
    stream: Literal["stdout", "stderr"] | None = Query(
        default=None, description="One stream; both when omitted (stdout first)."),
    follow: bool = Query(default=False, description="Stream new lines as server-sent events "
                         "until the job ends."),
    tail: int | None = Query(default=None, ge=1, le=100_000, description="Last N lines only."),
):
    """The job's stdout and stderr. With ``follow``, an event stream: each event is named
    after its stream and carries one line; a final ``end`` event carries the job's state."""
    service = _jobs(request)
    streams = [stream] if stream else list(LOG_STREAMS)
    paths = {s: await run_in_threadpool(service.log_path, who, job_id, s) for s in streams}
    if not follow:
        text = "".join(_read(paths[s], tail) for s in streams)
        return PlainTextResponse(text)
    return StreamingResponse(_follow(request, service, who, job_id, paths, tail),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _read(path: Path, tail: int | None) -> str:
    f = open_read(path)  # the job owns its folder: its "log" may be a planted link
    if f is None:
        return ""
    with f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - MAX_LOG_BYTES))
        data = f.read().decode("utf-8", errors="replace")
    if tail:
        data = "".join(data.splitlines(keepends=True)[-tail:])
    return data


async def _follow(request: Request, service: JobService, who: Principal, job_id: int,
                  paths: dict[str, Path], tail: int | None):
    offsets = {}
    for name, path in paths.items():
        text = _read(path, tail)
        for line in text.removesuffix("\n").split("\n") if text else ():  # keeps \r in lines
            yield _sse(name, line)
        offsets[name] = size_of(path)
    partial = {name: b"" for name in paths}
    while True:
        job = await run_in_threadpool(service.get, who, job_id, False)
        done = JobState(job.state).terminal
        for name, path in paths.items():
            data = _read_from(path, offsets[name])
            offsets[name] += len(data)
            lines = (partial[name] + data).split(b"\n")
            partial[name] = lines.pop()
            for line in lines:
                yield _sse(name, line.decode("utf-8", errors="replace"))
        if done:
            for name, rest in partial.items():
                if rest:
                    yield _sse(name, rest.decode("utf-8", errors="replace"))
            yield _sse("end", json.dumps({"state": job.state, "reason": job.reason}))
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.2)


def _read_from(path: Path, offset: int) -> bytes:
    f = open_read(path)
    if f is None:
        return b""
    with f:
        f.seek(offset)
        return f.read(MAX_LOG_BYTES)


def _sse(event: str, data: str) -> str:
    """One server-sent event. Every line break in ``data`` (a progress bar's carriage
    return too, which SSE clients also read as one) starts a ``data:`` line of its own,
    so a job's log can never end an event or forge another (``event: end``)."""
    payload = "\n".join(f"data: {part}" for part in re.split(r"\r\n|\r|\n", data))
    return f"event: {event}\n{payload}\n\n"
