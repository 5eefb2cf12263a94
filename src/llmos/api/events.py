"""/v1/events (the event log, as JSON or a server-sent-event stream) and /v1/alerts (the
rules in force, what fires, loading new rules).

Visibility is the jobs API's: a reader sees the events of the teams it may read
(administrators: all), ``node`` events whatever its teams, and events without a team
(security alerts, node memory) only as an administrator. The filter is part of the
database query (``monitor/events.py``), so another team's events — their ids included —
never reach this process's answer.

The stream holds no thread while it waits: it reads in the threadpool for a moment,
then awaits the event log's wake-up (after a commit in this process) or one second (for
other processes), sends ``: keep-alive`` every 15 s, and ends when the client goes, when
its token is revoked, or when the server shuts down (``EventLog.close``, called as soon as
the server begins to stop, so an open dashboard does not hold up ``llmos down``).
``Last-Event-ID`` (or ``since``) resumes after the last event seen.

Streams are bounded: at most ``MAX_STREAMS_PER_TOKEN`` open per token and
``MAX_STREAMS`` per process (429 beyond, in JSON). Idle streams share one reader of the
newest id (``EventLog.newest``: one query per second in all); a stream queries for its
own rows only when there is something newer than its cursor. Each stream still reads its
rows itself when events arrive (the team filter is in its query), so that cost grows
with the number of streams; the caps bound it.

A token without the ``read`` scope is refused (403) here and on ``/v1/alerts``.
"""

from __future__ import annotations

import json
import threading
import time

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmos.api.gate import current
from llmos.api.schemas import ERRORS
from llmos.errors import Forbidden, InvalidRequest, TooManyRequests, Unauthorized
from llmos.monitor.events import EventLog, visible_teams
from llmos.monitor.kinds import KINDS, parse_kinds
from llmos.security.rbac import Principal

router = APIRouter(tags=["monitor"])
Who = Depends(current)
KEEP_ALIVE_S = 15.0
RECHECK_S = 2.0  # how often a long stream checks its token again (a cache hit)
MAX_RULES_BYTES = 1 << 20
MAX_STREAMS_PER_TOKEN = 4
MAX_STREAMS = 256


class OpenStreams:
    """How many event streams are open, per token and in all (one per app)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_token: dict[str, int] = {}
        self.total = 0

    def take(self, token: str) -> None:
        """Count one more stream of ``token``, or raise TooManyRequests."""
        with self._lock:
            if self.by_token.get(token, 0) >= MAX_STREAMS_PER_TOKEN:
                raise TooManyRequests(f"this token has {MAX_STREAMS_PER_TOKEN} event streams "
                                      "open already (the most one token may hold); close "
                                      "one first", retry_after=5)
            if self.total >= MAX_STREAMS:
                raise TooManyRequests(f"the daemon has {MAX_STREAMS} event streams open (its "
                                      "limit); try again later", retry_after=5)
            self.by_token[token] = self.by_token.get(token, 0) + 1
            self.total += 1

    def give(self, token: str) -> None:
        with self._lock:
            left = self.by_token.get(token, 0) - 1
            if left > 0:
                self.by_token[token] = left
            else:
                self.by_token.pop(token, None)
            self.total = max(0, self.total - 1)


class _CountedStream(StreamingResponse):
    """A stream that gives its place back when it ends, however it ends."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _streams(request: Request) -> OpenStreams:
    state = request.app.state
    if getattr(state, "event_streams", None) is None:
        state.event_streams = OpenStreams()
    return state.event_streams


def _token_key(who: Principal) -> str:
    if who.token_id is not None:
        return f"token {who.token_id}"
    return f"{who.name}/{who.job_id or ''}/{who.token_prefix or ''}"


def _require_read(who: Principal, what: str) -> None:
    if "read" not in who.scopes:
        raise Forbidden(f"this token lacks the 'read' scope needed to read {what}")


def _log(request: Request) -> EventLog:
    return request.app.state.system.events


def _kinds(kind: str | None) -> list[str] | None:
    try:
        return parse_kinds(kind)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


@router.get("/v1/events", responses={**ERRORS, 200: {"content": {
    "application/json": {}, "text/event-stream": {}}}})
async def events(
    request: Request,
    who: Principal = Who,
    kind: str | None = Query(default=None, max_length=200,
                             description=f"Comma-separated kinds: {', '.join(KINDS)}."),
    subject: str | None = Query(default=None, max_length=200,
                                description="A job's id, or a deployment's, model's, "
                                "dataset's, node's or alert rule's name."),
    since: int | None = Query(default=None, ge=0, le=2**53,
                              description="Only events after this id."),
    limit: int = Query(default=100, ge=1, le=1000),
    # Not in the OpenAPI schema (the docstring says it): a schema-driven client or fuzzer
    # would otherwise open endless streams.
    follow: bool = Query(default=False, include_in_schema=False),
):
    """Changes of jobs, deployments, models, datasets and nodes, and alerts firing and
    resolving, oldest first. Without ``since``: the newest ``limit``. ``next``: the id to
    pass as ``since`` to read on (with ``since``, other teams' events are passed over: an
    empty list with a ``next`` beyond ``since`` means more remains to be scanned).

    With ``follow=true`` (or ``Accept: text/event-stream``): a server-sent-event stream of
    new events (``id``, ``event``: the kind, ``data``: the event's JSON) from ``since``, or
    the ``Last-Event-ID`` header, or now; a ``: keep-alive`` comment every 15 s."""
    _require_read(who, "events")
    kinds = _kinds(kind)
    teams, public = visible_teams(who)
    log = _log(request)
    wants_stream = follow or "text/event-stream" in request.headers.get("accept", "")
    if not wants_stream:
        if since is None:
            found = await run_in_threadpool(log.recent, kinds, subject, teams, public, limit)
            return {"events": found, "next": found[-1]["id"] if found else 0}
        found, cursor = await run_in_threadpool(log.read, since, kinds, subject, teams,
                                                public, limit)
        # "next": where to read on (ids of other teams' events passed over included)
        return {"events": found, "next": cursor}
    if log.closed:
        raise TooManyRequests("the daemon is shutting down", retry_after=5)
    resume = request.headers.get("last-event-id", "").strip()
    if resume.isascii() and resume.isdigit() and int(resume) <= 2**53:
        since = int(resume)
    if since is None:
        since = await run_in_threadpool(log.latest_id)
    streams, key = _streams(request), _token_key(who)
    streams.take(key)
    return _CountedStream(_stream(request, log, since, kinds, subject, who),
                          lambda: streams.give(key), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(request: Request, log: EventLog, cursor: int, kinds, subject,
                  who: Principal):
    """The stream's body. Its token is checked again every ``RECHECK_S``: a token revoked
    (or a membership removed) while the stream is open stops (or narrows) it."""
    teams, public = visible_teams(who)
    yield ": stream open\n\n"  # the headers and a first byte leave at once
    sent = checked = time.monotonic()
    while not log.closed:
        if await request.is_disconnected():
            return
        if time.monotonic() - checked >= RECHECK_S:
            who = await _recheck(request)
            if who is None:
                return
            teams, public = visible_teams(who)
            checked = time.monotonic()
        seq = log.seq  # read before the query: a commit after it wakes the wait below
        found = []
        if await run_in_threadpool(log.newest) > cursor:
            found, cursor = await run_in_threadpool(log.read, cursor, kinds, subject, teams,
                                                    public, 100)
        for e in found:
            yield f"id: {e['id']}\nevent: {e['kind']}\ndata: {json.dumps(e)}\n\n"
        if found:
            sent = time.monotonic()
            continue
        if time.monotonic() - sent >= KEEP_ALIVE_S:
            yield ": keep-alive\n\n"
            sent = time.monotonic()
        await log.wait_async(seq)


async def _recheck(request: Request) -> Principal | None:
    """The stream's principal now, or None when its token no longer authenticates."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    try:
        return await run_in_threadpool(request.app.state.tokens.authenticate, token)
    except Unauthorized:
        return None


# -- alerts -----------------------------------------------------------------------------------


@router.get("/v1/alerts", responses=ERRORS)
def alerts(request: Request, who: Principal = Who) -> dict:
    """The alert rules in force and what fires now (of your teams; administrators: all).
    Rules' parameters (which may name another team's deployment) are shown to
    administrators only; others see each rule's name, kind and severity."""
    _require_read(who, "alerts")
    engine = request.app.state.system.alerts
    teams, _ = visible_teams(who)
    rules = engine.describe()
    if teams is not None:  # not an unrestricted administrator
        rules = [{k: r[k] for k in ("name", "kind", "severity", "for_s", "webhook")}
                 for r in rules]
    return {"rules": rules, "firing": engine.firing(teams)}


@router.put("/v1/alerts/rules", responses=ERRORS)
async def load_rules(request: Request, who: Principal = Who) -> dict:
    """Replace the alert rules (system administrators; the body is the YAML file). A
    malformed file is refused with 422 naming the rule and the field; the rules in force
    stay."""
    who.require_admin("loading alert rules")
    body = await request.body()
    if len(body) > MAX_RULES_BYTES:
        raise InvalidRequest("alert rules: the file is larger than 1 MB")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("alert rules: the body is not UTF-8 text") from None
    engine = request.app.state.system.alerts
    rules = await run_in_threadpool(engine.load, text)
    return {"rules": rules}

