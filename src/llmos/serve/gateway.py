"""The gateway: the daemon's OpenAI-compatible front door for served models.

For each request it finds the deployment named by ``model`` (one the caller may use, with
an ``inference`` token), applies the token's and the team's request-rate limits, picks a
ready worker of the deployment's pool (one that has the model loaded, then the least busy),
and forwards the request as a typed envelope (:mod:`llmos.serve.envelope`) with what the
worker needs: the version's folder and engine, and the caller's priority class and tenant
name, which the engine's admission uses. Streams
are relayed chunk by chunk; when the client goes away the upstream stream is closed, and
the worker aborts the request in its engine.

It measures what users feel — time to first token, inter-token latency, tokens, status —
into the daemon's Prometheus metrics, each series labelled with the deployment's team (a
request refused before a deployment is found counts for the caller's team), so that
``/metrics`` shows every caller only its teams' series. Errors are in OpenAI's format.

``model`` is a deployment name, bare or ``team/name`` (needed only when the caller has
deployments of that name in several teams). Every answer names the exact model version that
gave it, as ``model:version``: in the ``x-llmos-model-version`` header and in the body's
``model``. A deployment with a canary sends its share of requests to the canary version
(``serve.canary`` chooses, and counts how each version answers: :meth:`Gateway.canary_stats`).

Availability: a request to a pool with no ready worker (scaled to zero, or its workers
lost or being replaced) wakes the serving controller, which starts one, and waits for it
up to ``serve_cold_start_s``; past that it gets a 503 saying the deployment is starting,
with a Retry-After — never a hang. Failover: a request that cannot reach its worker (the
connection is refused or times out: the worker or its node is gone) is retried once
(``RETRIES``) on another ready worker of the pool, and the gone worker is forgotten; a
stream is retried only before any byte of it was sent (which is the only time a connection
fails), and a request that reached a worker is never sent twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmos.errors import LLMOSError, NotFound
from llmos.kernel.jobs import PRIORITY_RANK
from llmos.models.registry import ModelRegistry
from llmos.monitor.metrics import Metrics
from llmos.security import names
from llmos.security.rbac import INFER, Principal
from llmos.serve import openai as oa
from llmos.serve.canary import Canaries, Route
from llmos.serve.controller import Controller, Worker, Workers
from llmos.serve.deployments import TASKS, DeploymentService, pool_key
from llmos.serve.envelope import (
    ChatInput,
    CompletionInput,
    EncodeInput,
    Envelope,
    ModelRef,
    Versions,
)
from llmos.serve.limits import Limits
from llmos.serve.worker import SECRET_HEADER
from llmos.store.models import Deployment

ROUTE_TASK = {"chat": "generate", "completion": "generate", "embed": "embed",
              "classify": "classify"}
WHAT = {"generate": "text generation (chat and completions)", "embed": "embeddings",
        "classify": "classification"}
log = logging.getLogger("llmos.serve")
VERSION_HEADER = "x-llmos-model-version"  # model:version, of every answer
RETRIES = 1  # extra attempts of a request that could not reach its worker
# No answer came back, and the caller has seen nothing yet: the worker could not be reached,
# or its connection dropped before a response (a kept-alive connection to a worker that
# just died reads as ReadError / RemoteProtocolError). Safe to send once more elsewhere.
UNREACHED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
             httpx.RemoteProtocolError)


class Refused(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        self.response = JSONResponse(oa.error_body(message, type_, param, code), status,
                                     headers=headers)
        self.reason = code or type_
        self.deployment: Deployment | None = None  # when refused once it was found


class Gateway:
    def __init__(self, deployments: DeploymentService, registry: ModelRegistry,
                 workers: Workers, controller: Controller, limits: Limits, metrics: Metrics,
                 wait_s: float | None = None):
        self.deployments, self.registry = deployments, registry
        self.workers, self.controller = workers, controller
        self.limits, self.metrics = limits, metrics
        # how long a request waits for a pool's first ready worker (a cold start)
        self.wait_s = controller.tuning.cold_start_s if wait_s is None else wait_s
        self._http: httpx.AsyncClient | None = None
        self.versions = Versions(registry)
        self.canaries = Canaries()
        deployments.on_canary = self.canaries.reset  # a rollout set, ended: counted afresh

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            # a short connect timeout: a worker on a node that died fails over quickly
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0, read=None),
                                           limits=httpx.Limits(max_connections=1000))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # -- the routes' one entry point ------------------------------------------------------

    async def serve(self, who: Principal, route: str, body) -> Response:
        started = time.perf_counter()
        name, team = body.model, _caller_team(who)
        try:
            d = await asyncio.to_thread(self._deployment, who, name, route)
            name, team = d.name, d.team or ""  # counted as its team's from here on
            self.workers.arrived(pool_key(d.team, d.pool))  # not idle: no scale to zero
            env, where = await self._envelope(who, d, route, body)
        except Refused as r:
            return self._refused(r, team, name, route)
        resp = await self._forward(d, env, where, route, started, body, team, name)
        resp.headers[VERSION_HEADER] = env.deployment.served_as
        if not isinstance(resp, StreamingResponse):  # a stream is counted as it ends
            self.canaries.record(where, resp.status_code, time.perf_counter() - started)
        return resp

    async def _forward(self, d: Deployment, env: Envelope, where: Route, route: str,
                       started: float, body, team: str, name: str) -> Response:
        """The answer of a worker of the deployment's pool, once more on another if the
        first could not be reached."""
        try:
            worker = await self._pick(d, env.deployment.key)
        except Refused as r:
            return self._refused(r, team, name, route)
        path = (f"/generate/{route}" if ROUTE_TASK[route] == "generate"
                else f"/encode/{ROUTE_TASK[route]}")
        gone: set[str] = set()  # the addresses that did not answer
        while True:
            try:
                if env.stream:
                    return await self._stream(worker, path, env, where, route, started, body)
                return await self._once(worker, path, env, route, started)
            except UNREACHED as e:  # no answer from the worker: gone (a crash, a lost node)
                gone.add(worker.url)  # a new attempt of its job has another address
                self.workers.lost(worker)  # it registers again if it lives
                self.controller.wake()
                log.warning("pool %s: worker job %s is unreachable (%s)%s", worker.pool,
                            worker.job_id, type(e).__name__,
                            "; retrying on another worker" if len(gone) <= RETRIES else "")
                if len(gone) > RETRIES:
                    return self._lost(team, name, route, e)
                try:  # once more, on another worker (or the first one to start)
                    worker = await self._pick(d, env.deployment.key, avoid=gone)
                except Refused as r:
                    return self._refused(r, team, name, route)

    def _refused(self, r: Refused, team: str, name: str, route: str) -> Response:
        if r.deployment is not None:
            name, team = r.deployment.name, r.deployment.team or ""
        self.metrics.requests.labels(team, name, route, str(r.response.status_code)).inc()
        self.metrics.rejected.labels(team, name, r.reason).inc()
        return r.response

    # -- steps -----------------------------------------------------------------------------

    def _deployment(self, who: Principal, name: str, route: str) -> Deployment:
        """The deployment ``model`` names (bare or team/name), if ``who`` may call it on
        this route now."""
        d = self._find(who, name)
        try:
            self._admit(who, d, route)
        except Refused as r:
            r.deployment = d  # counted in its team's series
            raise
        return d

    def _find(self, who: Principal, name: str) -> Deployment:
        try:
            return self.deployments.get(who, name, need=INFER)
        except LLMOSError as e:
            if e.status == 404:
                raise Refused(404, f"The model `{name}` does not exist or you do not have "
                              "access to it.", param="model", code="model_not_found") from None
            if e.status == 409:  # a bare name of several of the caller's teams
                raise Refused(409, e.message, param="model", code="model_ambiguous") from None
            raise Refused(e.status, e.message, "permission_error") from None

    def _admit(self, who: Principal, d: Deployment, route: str) -> None:
        """Refuse a route the deployment does not serve, or a caller over its rate."""
        name = d.name
        task = ROUTE_TASK[route]
        served = TASKS.get(self.versions.info(d.version_id)["task"])
        if served != task:
            raise Refused(400, f"`{name}` serves {WHAT[served]}, not {WHAT[task]}",
                          param="model", code="wrong_model_type")
        limited = self.limits.check(who.token_id, who.rate_limit_rps, d.team)
        if limited is not None:
            wait, which = limited
            raise Refused(429, f"rate limit reached: {which}; retry after {wait:g} s",
                          "rate_limit_error", code="rate_limit_exceeded",
                          headers={"Retry-After": str(max(1, round(wait + 0.499)))})

    async def _envelope(self, who: Principal, d: Deployment, route: str,
                        body) -> tuple[Envelope, Route]:
        """The request as its worker gets it, for the version it goes to (the deployment's,
        or its canary's)."""
        unsupported = oa.check_supported(body)
        if unsupported:
            raise Refused(400, unsupported)
        if route == "chat":
            try:
                request = ChatInput(**_sampling(body), messages=body.plain_messages())
            except ValueError as e:
                raise Refused(400, str(e), param="messages") from None
        elif route == "completion":
            request = CompletionInput(**_sampling(body), prompt=body.prompt)
        else:
            request = EncodeInput(input=body.input,
                                  encoding_format=getattr(body, "encoding_format", "float"))
        where, ref = await asyncio.to_thread(self._route, d)  # a request that goes somewhere
        env = Envelope(request_id=uuid.uuid4().hex, priority=PRIORITY_RANK[who.priority],
                       tenant=who.name, deployment=ref, request=request)
        if ROUTE_TASK[route] == "generate":
            env.max_tokens, env.stream, env.include_usage = body.limit(route), body.stream, True
            env.response_id = oa.new_id("chatcmpl" if route == "chat" else "cmpl")
        return env, where

    def _route(self, d: Deployment) -> tuple[Route, ModelRef]:
        where = self.canaries.route(d.id, d.version_id, d.canary_version_id, d.canary_weight,
                                    self._number)
        return where, self.versions.ref(d, where.version_id)

    def _number(self, version_id: int) -> int:
        return self.versions.info(version_id)["version"]

    def canary_stats(self, deployment_id: int) -> dict:
        """How each version of the deployment answered since its canary was last set:
        ``{"stable": {...}, "canary": {...} or None}``, each with ``version`` (its number),
        ``requests``, ``errors`` (5xx answers, or no answer from a worker), ``error_rate``
        and ``p50_s`` / ``p95_s`` latency (until the last byte; None before any answer)."""
        with self.deployments.db.session() as s:
            d = s.get(Deployment, deployment_id)
            if d is None:
                raise NotFound(f"deployment {deployment_id} not found")
            ids = (d.version_id, d.canary_version_id, d.canary_weight)
        return self.canaries.stats(deployment_id, *ids, self._number)

    async def _pick(self, d: Deployment, key: str, avoid: set[str] = frozenset()) -> Worker:
        """A ready worker of the deployment's pool (not at an address of ``avoid``): one
        with the model loaded, else the least busy. With none, the controller is woken to start one
        (a cold start) and the request waits for it, at most ``wait_s``."""
        pool = pool_key(d.team, d.pool)
        worker = self._ready(pool, key, avoid)
        if worker is not None:
            return worker
        scaled_to_zero = self.controller.scaling.get(pool, {}).get("desired") == 0
        deadline = time.monotonic() + self.wait_s
        self.workers.waiting(pool, 1)  # counted as load: the controller starts a worker
        self.controller.wake()  # now, not at its next period (then it passes every 2 s)
        try:
            while True:
                problem = self.controller.problems.get(pool)
                if problem:
                    raise Refused(503, f"deployment {d.name} has no ready worker: {problem}",
                                  "server_error", code="no_worker",
                                  headers={"Retry-After": "30"})
                if time.monotonic() > deadline:
                    raise self._starting(d, pool, scaled_to_zero)
                await asyncio.sleep(0.1)
                worker = self._ready(pool, key, avoid)
                if worker is not None:
                    return worker
        finally:
            self.workers.waiting(pool, -1)

    def _ready(self, pool: str, key: str, avoid: set[str]) -> Worker | None:
        workers = [w for w in self.workers.of_pool(pool) if w.url not in avoid]

        def rank(w: Worker) -> tuple:
            loaded = any(m.get("key") == key for m in w.stats.get("resident", []))
            return (not loaded, w.inflight)
        return min(workers, key=rank) if workers else None

    def _starting(self, d: Deployment, pool: str, scaled_to_zero: bool) -> Refused:
        """The 503 of a request that waited its bound for a worker: the deployment is
        starting; the client retries (Retry-After) rather than waiting on a hung call."""
        if scaled_to_zero:
            what = "was scaled to zero after being idle; a worker is starting"
        else:
            what = "has no ready worker: its replicas are starting or being replaced"
        why = self.controller.waiting.get(pool)
        return Refused(503, f"deployment {d.name} {what}{f' ({why})' if why else ''}; "
                       f"retry shortly", "server_error", code="deployment_starting",
                       headers={"Retry-After": str(max(1, round(self.wait_s / 3 + 0.499)))})

    # -- forwarding --------------------------------------------------------------------------

    async def _once(self, w: Worker, path: str, env: Envelope, route: str,
                    started: float) -> Response:
        team, name = _team_of(w), env.deployment.name
        w.inflight += 1
        try:
            resp = await self.http().post(w.url + path, content=env.model_dump_json(),
                                          headers=_headers(w))
        except UNREACHED:
            raise
        except httpx.TransportError as e:
            return self._lost(team, name, route, e)
        finally:
            w.inflight -= 1
        self.metrics.requests.labels(team, name, route, str(resp.status_code)).inc()
        self.metrics.latency.labels(team, name, route).observe(time.perf_counter() - started)
        self.workers.ended(w.pool, time.perf_counter() - started)
        data = resp.json()
        self._count(team, name, data.get("usage") or {})
        headers = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
        return JSONResponse(data, resp.status_code, headers=headers)

    async def _stream(self, w: Worker, path: str, env: Envelope, where: Route, route: str,
                      started: float, body) -> Response:
        team, name = _team_of(w), env.deployment.name
        w.inflight += 1
        try:
            upstream = await self.http().send(
                self.http().build_request("POST", w.url + path, content=env.model_dump_json(),
                                          headers=_headers(w)), stream=True)
        except httpx.TransportError as e:
            w.inflight -= 1
            if isinstance(e, UNREACHED):
                raise
            return self._lost(team, name, route, e)
        if upstream.status_code != 200:
            data = json.loads(await upstream.aread())
            await upstream.aclose()
            w.inflight -= 1
            self.metrics.requests.labels(team, name, route, str(upstream.status_code)).inc()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
            return JSONResponse(data, upstream.status_code, headers=headers)
        self.metrics.requests.labels(team, name, route, "200").inc()
        return StreamingResponse(self._relay(w, upstream, where, team, name, route, started,
                                             body.include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _relay(self, w: Worker, upstream: httpx.Response, where: Route, team: str,
                     name: str, route: str, started: float, client_wants_usage: bool):
        """The worker's chunks, as they come. Cancelled when the client disconnects: closing
        the upstream response makes the worker abort the request."""
        last = None
        status = 499  # the client went away: not the version's fault
        try:
            async for line in upstream.aiter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.perf_counter()
                payload = line[6:]
                if payload != "[DONE]":
                    chunk = json.loads(payload)
                    if "usage" in chunk and not chunk.get("choices"):
                        self._count(team, name, chunk["usage"])
                        if not client_wants_usage:
                            continue
                    elif _has_text(chunk):
                        if last is None:  # a stream's latency, for autoscaling: its TTFT
                            self.metrics.ttft.labels(team, name).observe(now - started)
                            self.workers.ended(w.pool, now - started)
                        else:
                            self.metrics.itl.labels(team, name).observe(now - last)
                        last = now
                yield line + "\n\n"
            status = 200
        except httpx.TransportError:
            status = 502  # the worker's stream broke off
            raise
        finally:
            w.inflight -= 1
            await upstream.aclose()
            took = time.perf_counter() - started
            self.metrics.latency.labels(team, name, route).observe(took)
            self.canaries.record(where, status, took if status == 200 else None)

    def _count(self, team: str, name: str, usage: dict) -> None:
        self.metrics.prompt_tokens.labels(team, name).inc(usage.get("prompt_tokens", 0))
        self.metrics.completion_tokens.labels(team, name).inc(
            usage.get("completion_tokens", 0))

    def _lost(self, team: str, name: str, route: str, e: Exception) -> Response:
        self.metrics.requests.labels(team, name, route, "502").inc()
        return JSONResponse(oa.error_body(f"the serving worker of {name} did not answer "
                                          f"({type(e).__name__}); retry", "server_error"), 502,
                            headers={"Retry-After": "2"})

    # -- /v1/models --------------------------------------------------------------------------

    def models(self, who: Principal) -> dict:
        """The deployments ``who`` may call, by the id to send as ``model``: the bare name,
        or ``team/name`` for a name the caller has in several teams."""
        found = self.deployments.list(who, need=INFER)
        count = Counter(d.name for d in found)
        data = [{"id": d.name if count[d.name] == 1 else names.qualified(d.team, d.name),
                 "object": "model", "created": int(d.created_at.timestamp()),
                 "owned_by": d.team or d.owner}
                for d in found]
        return {"object": "list", "data": data}


def _team_of(w: Worker) -> str:
    """The team of a worker's pool (its key is team/name)."""
    return w.pool.rpartition("/")[0]


def _caller_team(who: Principal) -> str:
    """Whose series a request refused before any deployment was found counts in: the
    caller's one team; "" (administrators only) when that is not one team."""
    if who.team or who.home:
        return who.team or who.home
    return next(iter(who.roles)) if len(who.roles) == 1 else ""


def _headers(w: Worker) -> dict[str, str]:
    return {SECRET_HEADER: w.secret, "content-type": "application/json"}


def _sampling(body) -> dict:
    return {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
            "stop": body.stop or []}


def _has_text(chunk: dict) -> bool:
    for c in chunk.get("choices") or []:
        if c.get("text") or (c.get("delta") or {}).get("content"):
            return True
    return False
