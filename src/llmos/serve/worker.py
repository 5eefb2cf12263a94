"""The ``serve.worker`` program: a service job that hosts a pool's deployments.

It listens on 127.0.0.1 (a port of its own), answering only the daemon (which knows its
secret), for requests the gateway forwards — each a typed :class:`~llmos.serve.envelope.Envelope`
naming the deployment, the model version's folder and engine — and for preloads (a model
to load into free room before a request needs it). It loads models on demand under the
pool's memory budget (:mod:`llmos.serve.residency`), runs them on their engines
and answers in the OpenAI format, streaming over server-sent events. It registers its
address and a secret with the daemon through its job context, and sends a heartbeat with
its resident models, occupancy and load/unload events every ``HEARTBEAT_S``.

A client that disconnects mid-stream is aborted in its engine at once (its batch slot is
free at the next step). Asked to stop, the worker finishes the requests in flight (up to
``DRAIN_S``), unloads its models and exits.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from llmos.errors import LLMOSError
from llmos.serve import openai as oa
from llmos.serve.engines import (
    ContextLengthExceeded,
    EncodeRequest,
    GenerationRequest,
    QueueFull,
    load_engine,
)
from llmos.serve.envelope import Envelope, ModelRef
from llmos.serve.residency import ModelSpec, Residency

HEARTBEAT_S = 2.0
DRAIN_S = 30.0
SECRET_HEADER = "x-llmos-worker-secret"


def fetching_loader(ctx):
    """Load a model into an engine, its files first fetched through the job's API (once
    per worker: they stay in its folder while it runs). The worker is a sandboxed job: the
    store's folder is out of its sight."""
    def load(spec: ModelSpec):
        if spec.files:
            ctx.artifacts.download_folder(spec.files, spec.folder)
        return load_engine(spec.folder, engine=spec.engine, **spec.options)

    return load


def spec_of(ref: ModelRef, models: Path) -> ModelSpec:
    """The model a forwarded request (or a preload) names, to be fetched under ``models``."""
    options = ({"max_batch": ref.max_batch, "max_queue": ref.max_queue}
               if ref.engine in ("torch", "encoder", "onnx") else {})
    return ModelSpec(key=ref.key, deployment=ref.name, version=ref.version,
                     folder=models / f"version-{ref.version_id}", engine=ref.engine,
                     options=options, size_bytes=ref.size_bytes, priority=ref.priority_rank,
                     files=tuple((int(a), p) for a, p in ref.files))


async def _parse(request: Request, model: type):
    """The request's typed body, or a 400 (the gateway and the worker out of step)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        why = e.errors()[0]["msg"]
        return JSONResponse(oa.error_body(f"not a valid {model.__name__}: {why}"), 400)


def create_worker_app(residency: Residency, secret: str, models: Path = Path("models")
                      ) -> FastAPI:
    """The worker's HTTP face; the models it loads are fetched under ``models``."""
    app = FastAPI(title="llmos serving worker", openapi_url=None, docs_url=None)
    app.state.inflight = 0
    app.state.preloads = set()  # their tasks (held until done)

    @app.middleware("http")
    async def check_secret(request: Request, call_next):
        if not secrets.compare_digest(request.headers.get(SECRET_HEADER, ""), secret):
            return JSONResponse(oa.error_body("not the daemon", "authentication_error"), 401)
        return await call_next(request)

    @app.post("/load")
    async def preload(request: Request):
        """Load a model now if it fits in free room (the first request then finds it
        loaded); answers at once, the load goes on."""
        ref = await _parse(request, ModelRef)
        if isinstance(ref, JSONResponse):
            return ref
        task = asyncio.create_task(_preload(residency, spec_of(ref, models), ref))
        app.state.preloads.add(task)
        task.add_done_callback(app.state.preloads.discard)
        return JSONResponse({"accepted": True}, 202)

    @app.post("/generate/{kind}")
    async def generate(kind: str, request: Request):
        env = await _parse(request, Envelope)
        if isinstance(env, JSONResponse):
            return env
        lease = await _lease(residency, env, models)
        if isinstance(lease, JSONResponse):
            return lease
        try:
            body, engine = env.request, lease.engine
            prompt = (engine.chat_prompt(body.messages) if kind == "chat"
                      else engine.tokenize(body.prompt))
            gen = GenerationRequest(
                request_id=env.request_id, prompt_token_ids=prompt,
                max_tokens=env.max_tokens, temperature=body.temperature,
                top_p=body.top_p, seed=body.seed, stop=body.stop or (),
                priority=env.priority, tenant=env.tenant)
            stream = engine.submit(gen)
        except ContextLengthExceeded as e:
            lease.release()
            return JSONResponse(oa.error_body(e.message, param="messages" if kind == "chat"
                                              else "prompt", code="context_length_exceeded"), 400)
        except QueueFull as e:
            lease.release()
            return JSONResponse(oa.error_body(e.message, "rate_limit_error"), 429,
                                headers={"Retry-After": "1"})
        except Exception as e:  # noqa: BLE001 - a template or tokenizer refusing the input
            lease.release()
            return JSONResponse(oa.error_body(f"cannot prepare the prompt: {e}"), 400)
        if not env.stream:
            try:
                completion = await stream.aresult()
            finally:
                lease.release()
            make = oa.chat_response if kind == "chat" else oa.completion_response
            return JSONResponse(make(env.response_id, env.deployment.served_as, completion))
        return StreamingResponse(_stream(kind, env, stream, lease), media_type="text/event-stream")

    @app.post("/encode/{task}")
    async def encode(task: str, request: Request):
        env = await _parse(request, Envelope)
        if isinstance(env, JSONResponse):
            return env
        lease = await _lease(residency, env, models)
        if isinstance(lease, JSONResponse):
            return lease
        try:
            handle = lease.engine.submit(EncodeRequest(env.request_id, env.request.input,
                                                       env.priority, env.tenant))
            result = await handle
        except QueueFull as e:
            return JSONResponse(oa.error_body(e.message, "rate_limit_error"), 429,
                                headers={"Retry-After": "1"})
        except LLMOSError as e:
            return JSONResponse(oa.error_body(e.message), 400)
        finally:
            lease.release()
        name = env.deployment.served_as  # the exact version that answered
        if task == "embed":
            return JSONResponse(oa.embedding_response(
                name, result.embeddings, result.usage, env.request.encoding_format))
        return JSONResponse(oa.classify_response(name, result.classifications, result.usage))

    @app.get("/stats")
    async def stats():
        return stats_of(residency)

    return app


async def _current(residency: Residency, spec: ModelSpec, ref: ModelRef) -> None:
    """A request for a deployment's version retires the deployment's other versions (they
    unload once their requests in flight end: a hot update drops nothing) — all but those
    it routes to now (``ref.current``: its version and a canary's, both kept loaded)."""
    keep = {spec.key, *ref.current}
    mine = [r for r in residency.resident.values() if r.spec.deployment == spec.deployment]
    for r in mine:
        if r.spec.key in keep:
            r.superseded = False  # routed to again (a canary set once more)
    stale = [r for r in mine if r.spec.key not in keep]
    if any(not r.superseded for r in stale):
        for r in stale:
            r.superseded = True
        await residency.sweep()


async def _lease(residency: Residency, env: Envelope, models: Path):
    """The engine of the request's deployment, loaded and leased (or an error response)."""
    spec = spec_of(env.deployment, models)
    await _current(residency, spec, env.deployment)
    return await _acquire(residency, spec)


async def _preload(residency: Residency, spec: ModelSpec, ref: ModelRef) -> None:
    await _current(residency, spec, ref)
    try:
        await residency.preload(spec)
    except Exception:  # noqa: BLE001 - the first request meets (and reports) the error
        pass


async def _acquire(residency: Residency, spec: ModelSpec):
    try:
        return await residency.acquire(spec)
    except LLMOSError as e:
        return JSONResponse(oa.error_body(e.message, "server_error"), e.status,
                            headers={"Retry-After": "5"} if e.status == 503 else None)
    except Exception as e:  # noqa: BLE001 - the folder cannot be loaded by this engine
        return JSONResponse(oa.error_body(f"cannot load {spec.deployment}: {e}",
                                          "server_error"), 503, headers={"Retry-After": "5"})


async def _stream(kind: str, env: Envelope, stream, lease):
    """SSE chunks of one generation; if the client goes away, the request is aborted in its
    engine (the generator is cancelled, and ``finally`` runs)."""
    rid, name, created = env.response_id, env.deployment.served_as, int(time.time())
    finished = False
    try:
        if kind == "chat":
            yield oa.chat_chunk(rid, name, created, {"role": "assistant", "content": ""})
        async for delta in stream:
            reason = None
            if delta.finish_reason is not None:
                reason = "length" if delta.finish_reason.value == "length" else "stop"
                finished = True
            if delta.text or reason:
                yield (oa.chat_chunk(rid, name, created,
                                     {"content": delta.text} if delta.text else {}, reason)
                       if kind == "chat" else
                       oa.completion_chunk(rid, name, created, delta.text, reason))
            if reason is not None:
                if env.include_usage:
                    make = oa.chat_chunk if kind == "chat" else oa.completion_chunk
                    yield make(rid, name, created, {} if kind == "chat" else "", None,
                               delta.usage)
                yield oa.DONE
                return
    finally:
        if not finished:
            stream.abort()
        lease.release()


def stats_of(residency: Residency) -> dict[str, Any]:
    return {"resident": residency.snapshot(), "loading": residency.loading(),
            "used_bytes": residency.used_bytes(),
            "budget_bytes": residency.budget, "loads": residency.loads,
            "evictions": residency.evictions, "events": list(residency.events)[-50:],
            "records": _records(residency)}


def _records(residency: Residency) -> dict[str, Any]:
    out = {}
    for r in residency.resident.values():
        try:
            rec = r.engine.record()
        except Exception:  # noqa: BLE001 - closed meanwhile
            continue
        c = rec.counters
        steps = list(rec.steps)[-200:]
        out[r.spec.key] = {"steps": c.steps, "tokens": c.tokens, "max_batch_seen": c.max_batch_seen,
                           "last_batch": steps[-1].batch_size if steps else 0,
                           "recent_batches": [s.batch_size for s in steps]}
    return out


# -- the program ----------------------------------------------------------------------------


def worker(ctx, pool: str, budget_mb: int, keep_alive_s: float = 300.0) -> dict:
    """Serve pool ``pool`` until the kernel asks this job to stop."""
    import uvicorn

    secret = secrets.token_urlsafe(32)
    residency = Residency(budget_mb << 20, fetching_loader(ctx), keep_alive_s=keep_alive_s)
    app = create_worker_app(residency, secret, Path(ctx.workdir) / "models")
    config = uvicorn.Config(app, host="127.0.0.1", port=0,
                            log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=int(DRAIN_S))
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # the job's own handlers stay in charge
    loop_box: dict = {}
    thread = threading.Thread(target=_serve, args=(server, residency, loop_box), daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the serving worker's HTTP server did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    ctx.log(f"serving pool {pool!r} on {url} with a {budget_mb} MB model budget")
    try:
        _heartbeats(ctx, pool, url, secret, residency, loop_box["loop"])
    finally:
        server.should_exit = True  # finish what is in flight, then unload (see _serve)
        thread.join(timeout=DRAIN_S + 30)
    return {"pool": pool, "loads": residency.loads, "evictions": residency.evictions}


def _heartbeats(ctx, pool: str, url: str, secret: str, residency: Residency, loop) -> None:
    """Register, then report every HEARTBEAT_S until asked to stop. A daemon that is away
    (restarting) is waited for; one that no longer knows this job ends it."""
    path = f"/v1/serving/workers/{ctx.job_id}"
    failing_since = None
    stats: dict = {}
    while True:
        try:
            ctx.request("PUT", path, json={"pool": pool, "url": url, "secret": secret,
                                           "stats": stats})
            failing_since = None
        except Exception as e:  # noqa: BLE001 - the daemon restarting, or gone for good
            if "401" in str(e) or "404" in str(e):
                raise
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > 120:
                raise RuntimeError(f"the daemon has not answered for 120 s: {e}") from None
        if ctx.should_yield():
            return
        time.sleep(HEARTBEAT_S)
        asyncio.run_coroutine_threadsafe(residency.sweep(), loop).result(timeout=120)
        stats = stats_of(residency)


def _serve(server, residency: Residency, loop_box: dict) -> None:
    async def main():
        loop_box["loop"] = asyncio.get_running_loop()
        try:
            await server.serve()
        finally:
            await residency.close()

    asyncio.run(main())
