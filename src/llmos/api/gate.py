"""The gate every request passes: a request id, authentication, and the audit record.

Pure ASGI middleware (artifact uploads stream through untouched). For every route but
``/healthz``:

1. the request gets an id, returned as ``X-Request-ID``;
2. its ``Authorization: Bearer <token>`` is turned into a principal (``request.state``),
   or it is refused with 401 — after repeated failures from one address, with 429 and
   Retry-After before the token is even looked at (``security/throttle.py``), unless it
   is a token that worked recently (an address may be shared with real users and jobs);
3. every state-changing request (POST, PUT, PATCH, DELETE — refused ones too) and every
   failed authentication is appended to the hash-chained audit log, with actor, action
   (method and route), target (the path), outcome (the status code) and the request id,
   committed before the response leaves.

Then the body of a write (:class:`Bodies`, inside the gate, so its refusals are audited
too): at most ``LLMOS_MAX_BODY_MB`` (413 in JSON beyond it, before a route parses a byte;
artifact uploads stream under their own ``LLMOS_MAX_UPLOAD_MB``), and on the
OpenAI-compatible routes read as JSON whatever its ``Content-Type`` (``curl -d`` sends a
form type; vLLM and Ollama read JSON all the same).

Routes read the principal with the :func:`current` dependency and hand it to services,
which decide what it may do.
"""

from __future__ import annotations

import json
import math
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from llmos.errors import Unauthorized
from llmos.security.rbac import Principal
from llmos.serve.openai import PATHS as OPENAI_PATHS
from llmos.serve.openai import error_body

OPEN_PATHS = frozenset({"/healthz"})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOADS = frozenset({"/v1/artifacts"})  # raw bodies, streamed under their own limit

bearer = HTTPBearer(auto_error=False, description="An llmos API token (llmos_...).")


def current(request: Request,
            _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    """The authenticated principal (the gate has already refused requests without one)."""
    return request.state.principal


def install(app: FastAPI) -> None:
    app.add_middleware(Bodies)
    app.add_middleware(Gate)  # added last: the outer one, so it audits what Bodies refuses


class Gate:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        state = scope["app"].state
        request_id = uuid.uuid4().hex
        address = (scope.get("client") or ("unknown", 0))[0]
        token = _bearer(scope)
        refusal = None
        if token is None:
            refusal = (401, "this route needs an API token: send 'Authorization: Bearer "
                       "llmos_...' (llmos login, or LLMOS_TOKEN)", "no token")
        elif (wait := state.throttle.wait_s(address)) > 0 and not state.tokens.known_good(token):
            refusal = (429, f"too many failed authentications from {address}; try again in "
                       f"{math.ceil(wait)} s", "throttled", math.ceil(wait))
        else:
            try:
                principal = await run_in_threadpool(state.tokens.authenticate, token)
            except Unauthorized as e:
                state.throttle.failed(address)
                refusal = (401, e.message, e.message)
        if refusal is not None:
            await _audit(scope, f"anonymous@{address}", refusal[0], request_id,
                         {"auth": refusal[2]}, auth_failed=True)
            return await _refuse(send, request_id, *refusal,
                                 openai=scope["path"] in OPENAI_PATHS)
        scope.setdefault("state", {})["principal"] = principal
        await self._pass(scope, receive, send, principal, request_id)

    async def _pass(self, scope, receive, send, principal: Principal, request_id: str):
        recorded = False
        detail = {"token": principal.token_prefix} if principal.token_prefix else {}

        async def send_with_id(message):
            nonlocal recorded
            if message["type"] == "http.response.start":
                recorded = True
                if scope["method"] in WRITES:
                    await _audit(scope, principal.actor, message["status"], request_id, detail)
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not recorded and scope["method"] in WRITES:  # the app raised before answering
                await _audit(scope, principal.actor, 500, request_id, detail)


class Bodies:
    """Bounded request bodies; JSON on the OpenAI-compatible routes (see the module)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] not in WRITES
                or scope["path"] in UPLOADS):
            return await self.app(scope, receive, send)
        limit = _max_body_mb(scope["app"].state)
        openai = scope["path"] in OPENAI_PATHS
        if openai:
            scope = {**scope, "headers": [*(h for h in scope["headers"]
                                            if h[0] != b"content-type"),
                                          (b"content-type", b"application/json")]}
        too_large = (413, f"the request body is larger than {limit} MB (LLMOS_MAX_BODY_MB)")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit << 20:
            return await _answer(send, *too_large, openai=openai)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await _answer(send, 400, "the request body ended early", openai=openai)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit << 20:
                return await _answer(send, *too_large, openai=openai)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _max_body_mb(state) -> int:
    return state.system.settings.max_body_mb


def _bearer(scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


async def _audit(scope, actor: str, status: int, request_id: str, detail: dict,
                 auth_failed: bool = False) -> None:
    route = scope.get("route")
    template = getattr(route, "path_format", None) or scope["path"]
    action = f"{scope['method']} {template}" if not auth_failed else (
        f"auth failed: {scope['method']} {scope['path']}")
    await run_in_threadpool(scope["app"].state.audit.append, actor, action[:200],
                            scope["path"], str(status), request_id, detail)


async def _refuse(send, request_id: str, status: int, message: str, _why: str,
                  retry_after: int | None = None, openai: bool = False) -> None:
    type_ = "authentication_error" if status == 401 else "rate_limit_error"
    code = "invalid_api_key" if status == 401 else "rate_limit_exceeded"
    headers = [(b"x-request-id", request_id.encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="llmos"'))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await _answer(send, status, message, type_, code, headers, openai)


async def _answer(send, status: int, message: str, type_: str = "invalid_request_error",
                  code: str | None = None, headers: list | None = None,
                  openai: bool = False) -> None:
    """A JSON error sent straight from the middleware, in OpenAI's format on its routes."""
    if openai:
        body = json.dumps(error_body(message, type_, None, code)).encode()
    else:
        body = json.dumps({"error": {"message": message, "type": type_, "code": status}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
