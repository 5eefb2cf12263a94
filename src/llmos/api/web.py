"""The dashboard's files: ``/`` (the one page) and ``/assets/{path}`` (its scripts,
styles and the vendored charting library) from ``llmos/web/static``.

They need no token (the gate lets GET and HEAD of these paths through): they are the same
static files for everyone and hold no data. Every figure the pages show is fetched by the
browser from the API with the user's own token, so the dashboard sees what that token may
see and nothing more.

What this module guarantees:

- only files inside the static folder are served: a path that climbs out (``..``, an
  absolute path, a link leading outside, a hidden name) is a 404, never a file;
- a fixed content type per extension (others are refused) and ``nosniff``, so nothing is
  read as a script that was not served as one;
- a strict Content-Security-Policy: scripts, styles, images and requests from this origin
  only, no inline script, no framing (clickjacking), no ``<base>`` rewriting;
- ``Cache-Control: no-cache`` with an ETag: a browser revalidates (a 304 when unchanged),
  so an upgraded daemon's pages are never mixed with stale scripts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from llmos.web import STATIC

router = APIRouter(include_in_schema=False)

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/")
def index(request: Request) -> Response:
    """The dashboard's page."""
    return _file(request, STATIC / "index.html")


@router.get("/assets/{path:path}")
def asset(path: str, request: Request) -> Response:
    """A file of the dashboard (scripts, styles, the vendored charting library)."""
    found = _inside(path)
    if found is None:
        return JSONResponse({"error": {"message": f"no asset {path[:200]!r}",
                                       "type": "invalid_request_error", "code": 404}},
                            status_code=404, headers={"X-Content-Type-Options": "nosniff"})
    return _file(request, found)


def _inside(path: str) -> Path | None:
    """The file ``path`` names inside the static folder, or None: nothing outside it
    (``..``, absolute paths, links that lead out), no hidden names, no folders, no
    extension without a known content type."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\x00" in p
                       for p in parts):
        return None
    root = STATIC.resolve()
    try:
        found = root.joinpath(*parts).resolve()
    except (OSError, ValueError):
        return None
    if not found.is_relative_to(root) or not found.is_file() or _type(found) is None:
        return None
    return found


def _type(path: Path) -> str | None:
    return TYPES.get(path.suffix) or TYPES.get("." + path.name.rsplit(".", 1)[-1])


def _file(request: Request, path: Path) -> Response:
    stat = path.stat()
    etag = '"' + hashlib.sha256(f"{stat.st_mtime_ns}-{stat.st_size}-{path.name}".encode()
                                ).hexdigest()[:32] + '"'
    headers = {**HEADERS, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=_type(path), headers=headers)
