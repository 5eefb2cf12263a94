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
into the daemon's Prometheus metrics. Errors are in OpenAI's format.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmos.errors import LLMOSError
from llmos.kernel.jobs import PRIORITY_RANK
from llmos.models.registry import ModelRegistry
from llmos.monitor.metrics import Metrics
from llmos.security.rbac import INFER, Principal
from llmos.serve import openai as oa
from llmos.serve.controller import Controller, Worker, Workers
from llmos.serve.deployments import TASKS, DeploymentService
from llmos.serve.envelope import (
    ChatInput,
    CompletionInput,
    EncodeInput,
    Envelope,
    Versions,
)
from llmos.serve.limits import Limits
from llmos.serve.worker import SECRET_HEADER
from llmos.store.models import Deployment

ROUTE_TASK = {"chat": "generate", "completion": "generate", "embed": "embed",
              "classify": "classify"}
WHAT = {"generate": "text generation (chat and completions)", "embed": "embeddings",
        "classify": "classification"}


class Refused(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        self.response = JSONResponse(oa.error_body(message, type_, param, code), status,
                                     headers=headers)
        self.reason = code or type_


class Gateway:
    def __init__(self, deployments: DeploymentService, registry: ModelRegistry,
                 workers: Workers, controller: Controller, limits: Limits, metrics: Metrics,
                 wait_s: float = 120.0):
        self.deployments, self.registry = deployments, registry
        self.workers, self.controller = workers, controller
        self.limits, self.metrics, self.wait_s = limits, metrics, wait_s
        self._http: httpx.AsyncClient | None = None
        self.versions = Versions(registry)

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None),
                                           limits=httpx.Limits(max_connections=1000))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # -- the routes' one entry point ------------------------------------------------------

    async def serve(self, who: Principal, route: str, body) -> Response:
        started = time.perf_counter()
        name = body.model
        try:
            d = await asyncio.to_thread(self._deployment, who, name, route)
            env = await self._envelope(who, d, route, body)
            worker = await self._pick(d, env.deployment.key)
        except Refused as r:
            self.metrics.requests.labels(name, route, str(r.response.status_code)).inc()
            self.metrics.rejected.labels(name, r.reason).inc()
            return r.response
        path = (f"/generate/{route}" if ROUTE_TASK[route] == "generate"
                else f"/encode/{ROUTE_TASK[route]}")
        for _ in range(3):
            try:
                if env.stream:
                    return await self._stream(worker, path, env, route, started, body)
                return await self._once(worker, path, env, route, started)
            except httpx.ConnectError as e:  # it never reached the worker: gone (a crash)
                lost = e
                self.workers.forget({worker.job_id})  # it registers again if it lives
                self.controller.wake()
                try:
                    worker = await self._pick(d, env.deployment.key)
                except Refused as r:
                    return r.response
        return self._lost(name, route, lost)

    # -- steps -----------------------------------------------------------------------------

    def _deployment(self, who: Principal, name: str, route: str) -> Deployment:
        try:
            d = self.deployments.get(who, name, need=INFER)
        except LLMOSError as e:
            if e.status == 404:
                raise Refused(404, f"The model `{name}` does not exist or you do not have "
                              "access to it.", param="model", code="model_not_found") from None
            raise Refused(e.status, e.message, "permission_error") from None
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
        return d

    async def _envelope(self, who: Principal, d: Deployment, route: str, body) -> Envelope:
        unsupported = oa.check_supported(body)
        if unsupported:
            raise Refused(400, unsupported)
        ref = await asyncio.to_thread(self.versions.ref, d)
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
        env = Envelope(request_id=uuid.uuid4().hex, priority=PRIORITY_RANK[who.priority],
                       tenant=who.name, deployment=ref, request=request)
        if ROUTE_TASK[route] == "generate":
            env.max_tokens, env.stream, env.include_usage = body.limit(route), body.stream, True
            env.response_id = oa.new_id("chatcmpl" if route == "chat" else "cmpl")
        return env

    async def _pick(self, d: Deployment, key: str) -> Worker:
        """A ready worker of the deployment's pool: one with the model loaded, else the
        least busy; waits (bounded) while the pool's workers start."""
        deadline = time.monotonic() + self.wait_s
        while True:
            workers = self.workers.of_pool(d.pool)
            if workers:
                def rank(w: Worker) -> tuple:
                    loaded = any(m.get("key") == key for m in w.stats.get("resident", []))
                    return (not loaded, w.inflight)
                return min(workers, key=rank)
            problem = self.controller.problems.get(d.pool)
            if problem or time.monotonic() > deadline:
                why = problem or self.controller.waiting.get(d.pool) or "still starting"
                raise Refused(503, f"deployment {d.name} has no ready worker: {why}",
                              "server_error", code="no_worker", headers={"Retry-After": "5"})
            self.controller.wake()
            await asyncio.sleep(0.1)

    # -- forwarding --------------------------------------------------------------------------

    async def _once(self, w: Worker, path: str, env: Envelope, route: str,
                    started: float) -> Response:
        name = env.deployment.name
        w.inflight += 1
        try:
            resp = await self.http().post(w.url + path, content=env.model_dump_json(),
                                          headers=_headers(w))
        except httpx.ConnectError:
            raise
        except httpx.TransportError as e:
            return self._lost(name, route, e)
        finally:
            w.inflight -= 1
        self.metrics.requests.labels(name, route, str(resp.status_code)).inc()
        self.metrics.latency.labels(name, route).observe(time.perf_counter() - started)
        data = resp.json()
        usage = data.get("usage") or {}
        self.metrics.prompt_tokens.labels(name).inc(usage.get("prompt_tokens", 0))
        self.metrics.completion_tokens.labels(name).inc(usage.get("completion_tokens", 0))
        headers = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
        return JSONResponse(data, resp.status_code, headers=headers)

    async def _stream(self, w: Worker, path: str, env: Envelope, route: str, started: float,
                      body) -> Response:
        name = env.deployment.name
        w.inflight += 1
        try:
            upstream = await self.http().send(
                self.http().build_request("POST", w.url + path, content=env.model_dump_json(),
                                          headers=_headers(w)), stream=True)
        except httpx.TransportError as e:
            w.inflight -= 1
            if isinstance(e, httpx.ConnectError):
                raise
            return self._lost(name, route, e)
        if upstream.status_code != 200:
            data = json.loads(await upstream.aread())
            await upstream.aclose()
            w.inflight -= 1
            self.metrics.requests.labels(name, route, str(upstream.status_code)).inc()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
            return JSONResponse(data, upstream.status_code, headers=headers)
        self.metrics.requests.labels(name, route, "200").inc()
        return StreamingResponse(self._relay(w, upstream, name, route, started,
                                             body.include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _relay(self, w: Worker, upstream: httpx.Response, name: str, route: str,
                     started: float, client_wants_usage: bool):
        """The worker's chunks, as they come. Cancelled when the client disconnects: closing
        the upstream response makes the worker abort the request."""
        last = None
        try:
            async for line in upstream.aiter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.perf_counter()
                payload = line[6:]
                if payload != "[DONE]":
                    chunk = json.loads(payload)
                    if "usage" in chunk and not chunk.get("choices"):
                        self._count(name, chunk["usage"])
                        if not client_wants_usage:
                            continue
                    elif _has_text(chunk):
                        if last is None:
                            self.metrics.ttft.labels(name).observe(now - started)
                        else:
                            self.metrics.itl.labels(name).observe(now - last)
                        last = now
                yield line + "\n\n"
        finally:
            w.inflight -= 1
            await upstream.aclose()
            self.metrics.latency.labels(name, route).observe(time.perf_counter() - started)

    def _count(self, name: str, usage: dict) -> None:
        self.metrics.prompt_tokens.labels(name).inc(usage.get("prompt_tokens", 0))
        self.metrics.completion_tokens.labels(name).inc(usage.get("completion_tokens", 0))

    def _lost(self, name: str, route: str, e: Exception) -> Response:
        self.metrics.requests.labels(name, route, "502").inc()
        return JSONResponse(oa.error_body(f"the serving worker of {name} did not answer "
                                          f"({type(e).__name__}); retry", "server_error"), 502,
                            headers={"Retry-After": "2"})

    # -- /v1/models --------------------------------------------------------------------------

    def models(self, who: Principal) -> dict:
        data = [{"id": d.name, "object": "model", "created": int(d.created_at.timestamp()),
                 "owned_by": d.team or d.owner}
                for d in self.deployments.list(who, need=INFER)]
        return {"object": "list", "data": data}


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
