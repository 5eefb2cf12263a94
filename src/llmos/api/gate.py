"""The gate every request passes: a request id, authentication, and the audit record.

Pure ASGI middleware (artifact uploads stream through untouched). For every route but
``/healthz`` and reads of the dashboard's static files (``/``, ``/assets/...``: no data):

1. the request gets an id, returned as ``X-Request-ID``;
2. its ``Authorization: Bearer <token>`` is turned into a principal (``request.state``),
   or it is refused with 401 — after repeated failures from one address (or with one
   token prefix from it), with 429 and Retry-After instead (``security/throttle.py``).
   The token is looked up first: a valid token is always served and never counts as a
   failure, so a flood of bad tokens cannot keep out the users and jobs that share its
   address (a proxy, 127.0.0.1);
3. every state-changing request (POST, PUT, PATCH, DELETE — refused ones too; not a
   serving worker's successful heartbeat), every read of a sensitive artifact, every use
   of administrator power and every failed authentication is appended to the keyed audit
   chain, with actor, action (method and route), target (the path), outcome (the status
   code), the request id and what a 201 created, committed before the response leaves.

It also feeds the security alerts (``app.state.signals``, ``monitor/signals.py``): each
refused token with its address, each token with the address it came from (the
connection's, never a client-sent header such as X-Forwarded-For), each artifact
download, and the teams an administrator token read objects of (noted by
``security.rbac``).

Then the body of a write (:class:`Bodies`, inside the gate, so its refusals are audited
too): at most ``LLMOS_MAX_BODY_MB`` (413 in JSON beyond it, before a route parses a byte;
artifact uploads stream under their own ``LLMOS_MAX_UPLOAD_MB``), and on the
OpenAI-compatible routes read as JSON whatever its ``Content-Type`` (``curl -d`` sends a
form type; vLLM and Ollama read JSON all the same).

Routes read the principal with the :func:`current` dependency and hand it to services,
which decide what it may do. A route that changes something names every scope it needs
with :func:`needs` (e.g. ``write`` to create a job and ``read`` to answer with it), so
a token short of one is refused before anything is written — never "created, then 403".
"""

from __future__ import annotations

import json
import math
import re
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from llmos.errors import Unauthorized
from llmos.security import audit as audit_policy
from llmos.security.rbac import Principal
from llmos.security.tokens import SHOWN
from llmos.serve.openai import PATHS as OPENAI_PATHS
from llmos.serve.openai import error_body

OPEN_PATHS = frozenset({"/healthz"})
# The dashboard's static files (api/web.py): the same for everyone, no data; read only.
OPEN_PAGES = ("/", "/assets/")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOADS = frozenset({"/v1/artifacts"})  # raw bodies, streamed under their own limit
DOWNLOAD = re.compile(r"^/v1/artifacts/\d+/content$")  # counted for the security alerts

bearer = HTTPBearer(auto_error=False, description="An llmos API token (llmos_...).")


def current(request: Request,
            _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    """The authenticated principal (the gate has already refused requests without one)."""
    return request.state.principal


def needs(*scopes: str, what: str = "do this"):
    """A route dependency: the principal, once its token holds every one of ``scopes`` —
    checked before the route's body runs, so a refusal comes before any side effect.
    ``what`` completes the refusal's message ("... needed to create jobs")."""

    def principal(request: Request,
                  _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        who: Principal = request.state.principal
        who.require_scopes(scopes, what)
        return who

    return Depends(principal)


def install(app: FastAPI) -> None:
    app.add_middleware(Bodies)
    app.add_middleware(Gate)  # added last: the outer one, so it audits what Bodies refuses


class Gate:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or _page(scope):
            return await self.app(scope, receive, send)
        state = scope["app"].state
        request_id = uuid.uuid4().hex
        address = (scope.get("client") or ("unknown", 0))[0]
        token = _bearer(scope)
        refusal = None
        if token is None:
            refusal = (401, "this route needs an API token: send 'Authorization: Bearer "
                       "llmos_...' (llmos login, or LLMOS_TOKEN)", "no token")
        else:
            try:  # a valid token is served whatever the address's failures
                principal = await run_in_threadpool(state.tokens.authenticate, token)
            except Unauthorized as e:
                refusal = _failed(state.throttle, address, token[:SHOWN], e.message)
        signals = getattr(state, "signals", None)  # monitor/signals.py: security alerts
        if refusal is not None:
            if signals is not None and token is not None:  # a token presented, and wrong
                signals.auth_failed(address)
            await _audit(scope, f"anonymous@{address}", refusal[0], request_id,
                         {"auth": refusal[2]}, auth_failed=True)
            return await _refuse(send, request_id, *refusal,
                                 openai=scope["path"] in OPENAI_PATHS)
        scope.setdefault("state", {})["principal"] = principal
        if signals is not None:
            signals.token_used(_token_name(principal), address)
        await self._pass(scope, receive, send, principal, request_id)

    async def _pass(self, scope, receive, send, principal: Principal, request_id: str):
        """Run the route, and record it in the audit log before the response leaves when
        ``security.audit.should_record`` says so (writes, reads of sensitive artifacts,
        uses of administrator power; not a serving worker's heartbeat). The start of a
        201 is held until its (JSON) body is there, so the record names what was made."""
        recorded = False
        detail = {"token": principal.token_prefix} if principal.token_prefix else {}
        notes = audit_policy.begin_request()  # services note sensitive reads, admin power
        held = None

        answered = 500

        async def record(status: int, created=None) -> None:
            nonlocal recorded, answered
            recorded, answered = True, status
            if audit_policy.should_record(scope["method"], _action(scope), status, notes):
                extra = audit_policy.notes_detail(notes)
                if created:
                    extra["created"] = created
                await _audit(scope, principal.actor, status, request_id, {**detail, **extra})

        async def send_with_id(message):
            nonlocal held
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
                if message["status"] == 201 and scope["method"] in WRITES:
                    held = message
                    return
                await record(message["status"])
            elif held is not None:
                start, held = held, None
                body = b"" if message.get("more_body") else message.get("body", b"")
                await record(201, audit_policy.created_ids(body) if body else None)
                await send(start)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not recorded:  # the app raised before answering
                await record(500)
            _signal(scope, principal, notes, answered)


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


def _failed(throttle, address: str, prefix: str, reason: str) -> tuple:
    """The refusal of a token that did not authenticate: 401 with its reason, or, while
    this address (or this token prefix from it) must wait, 429 with Retry-After and no
    reason. Only answered failures count: one that waits adds nothing to the wait."""
    wait = throttle.wait_s(address, prefix)
    if wait > 0:
        return (429, f"too many failed authentications from {address}; try again in "
                f"{math.ceil(wait)} s", "throttled", math.ceil(wait))
    throttle.failed(address, prefix)
    return (401, reason, reason)


def _page(scope) -> bool:
    """A read of the dashboard's page or one of its assets (no token: they hold no data)."""
    path = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (
        path == OPEN_PAGES[0] or path.startswith(OPEN_PAGES[1]))


def _token_name(principal: Principal) -> str:
    """How the security signals name a token: its shown prefix, never the secret."""
    return principal.token_prefix or f"user {principal.name}"


def _signal(scope, principal: Principal, notes, status: int) -> None:
    """Tell the security signals (``monitor/signals.py``) of an artifact download and
    of the teams an administrator token read objects of (noted by ``security.rbac``)."""
    signals = getattr(scope["app"].state, "signals", None)
    if signals is None:
        return
    token = _token_name(principal)
    if (scope["method"] == "GET" and status == 200
            and DOWNLOAD.match(scope["path"]) is not None):
        signals.downloaded(token)
    if notes.teams:
        signals.admin_read(token, sorted(notes.teams))


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


def _action(scope) -> str:
    """How the audit log names a request: its method and route template."""
    template = getattr(scope.get("route"), "path_format", None) or scope["path"]
    return f"{scope['method']} {template}"


async def _audit(scope, actor: str, status: int, request_id: str, detail: dict,
                 auth_failed: bool = False) -> None:
    action = _action(scope) if not auth_failed else (
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
