"""Every error the API returns is JSON: {"error": {"message", "type", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from llmos.errors import DataCorrupted, LLMOSError, TooManyRequests, Unauthorized
from llmos.security.crypto import CryptoError
from llmos.serve.openai import PATHS as OPENAI_PATHS
from llmos.serve.openai import error_body
from llmos.store.artifacts import CorruptArtifact

log = logging.getLogger("llmos.api")


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": status}},
                        status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            return "malformed JSON in the request body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (one route each, so Starlette's own
    Allow header names only the first)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods - {"HEAD"})


def install(app: FastAPI) -> None:
    @app.exception_handler(LLMOSError)
    async def _llmos(request: Request, exc: LLMOSError):
        headers = None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": 'Bearer realm="llmos"'}
        elif isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return error_response(exc.status, exc.message, exc.type, headers)

    @app.exception_handler(CorruptArtifact)
    async def _corrupt(request: Request, exc: CorruptArtifact):
        log.error("integrity failure: %s", exc)
        return error_response(DataCorrupted.status, str(exc), DataCorrupted.type)

    @app.exception_handler(CryptoError)
    async def _crypto(request: Request, exc: CryptoError):
        # The server's keys do not open a blob (a wrong or missing key): the operator's
        # problem, said plainly, never a traceback.
        log.error("encryption at rest: %s", exc)
        return error_response(500, f"encrypted artifact unreadable: {exc}", "encryption_error")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message = _describe(exc)
        if request.url.path in OPENAI_PATHS:  # OpenAI's format: a 400 naming the parameter
            param = next((str(e["loc"][1]) for e in exc.errors()
                          if len(e.get("loc", ())) > 1 and e["loc"][0] == "body"), None)
            return JSONResponse(error_body(message, param=param), status_code=400)
        status = 400 if message.startswith("malformed JSON") else 422
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            message = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
            headers = {"Allow": ", ".join(allowed)}
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        if request.url.path in OPENAI_PATHS:
            return JSONResponse(error_body(message, type_), exc.status_code, headers=headers)
        return error_response(exc.status_code, message, type_, headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; see the daemon log", "internal_error")
