"""/v1/artifacts: upload (raw request body), list, metadata, download (verified)."""

from __future__ import annotations

from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmos.api.gate import current, needs
from llmos.api.schemas import ERRORS, ArtifactList, ArtifactOut
from llmos.errors import InvalidRequest, PayloadTooLarge
from llmos.security.artifacts import ArtifactService
from llmos.schema import INT32_MAX
from llmos.security.rbac import Principal

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])
ArtifactId = PathParam(ge=1, le=INT32_MAX, description="Artifact id")
Who = Depends(current)


def _artifacts(request: Request) -> ArtifactService:
    return request.app.state.artifacts


def _ids(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidRequest("parents must be comma-separated artifact ids") from None
    if any(i < 1 or i > INT32_MAX for i in ids):
        raise InvalidRequest("artifact ids are positive integers")
    return ids


@router.post("", response_model=ArtifactOut, status_code=201, responses=ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}}}})
async def upload(
    request: Request,
    who: Principal = needs("write", "read", what="upload artifacts"),
    name: str = Query(min_length=1, max_length=255),
    kind: str = Query(default="file", min_length=1, max_length=100),
    job_id: int | None = Query(default=None, ge=1, le=INT32_MAX),
    parents: str | None = Query(default=None, max_length=10_000,
                                description="Comma-separated parent artifact ids."),
    sensitive: bool = Query(default=False,
                            description="Encrypt at rest (AES-256-GCM) with the server's key."),
    team: str | None = Query(default=None, min_length=1, max_length=100,
                             description="The team it belongs to (default: yours)."),
) -> ArtifactOut:
    """Store the request body as a new immutable artifact (the token needs ``write`` to
    upload and ``read`` for the answer, checked before a byte is taken)."""
    service = _artifacts(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > service.max_bytes:
        raise PayloadTooLarge(f"artifact larger than the upload limit of "
                              f"{service.max_bytes >> 20} MB")
    body = request.stream()

    def chunks():
        while True:
            try:
                chunk = anyio.from_thread.run(body.__anext__)
            except StopAsyncIteration:
                return
            if chunk:
                yield chunk

    art = await run_in_threadpool(service.put, who, chunks(), name, kind, job_id,
                                  _ids(parents), sensitive, team)
    return ArtifactOut.of(art)


@router.get("", response_model=ArtifactList, responses=ERRORS)
def list_artifacts(
    request: Request,
    who: Principal = Who,
    kind: str | None = Query(default=None, max_length=100),
    job_id: int | None = Query(default=None, ge=1, le=INT32_MAX),
    name: str | None = Query(default=None, max_length=255),
    limit: int = Query(default=100, ge=1, le=10_000),
    offset: int = Query(default=0, ge=0, le=INT32_MAX),
) -> ArtifactList:
    """Artifacts, newest first."""
    arts = _artifacts(request).list(who, kind, job_id, name, limit, offset)
    return ArtifactList(artifacts=[ArtifactOut.of(a) for a in arts])


@router.get("/{artifact_id:int}", response_model=ArtifactOut, responses=ERRORS)
def get_artifact(request: Request, artifact_id: int = ArtifactId,
                 who: Principal = Who) -> ArtifactOut:
    """An artifact's metadata and lineage (producing job, parents)."""
    return ArtifactOut.of(_artifacts(request).get(who, artifact_id))


@router.get("/{artifact_id:int}/content", responses={**ERRORS, 200: {
    "content": {"application/octet-stream": {}}}})
def download(request: Request, artifact_id: int = ArtifactId,
             who: Principal = Who) -> StreamingResponse:
    """The artifact's bytes, checked against its sha256 before the first byte is sent."""
    art, chunks = _artifacts(request).open(who, artifact_id)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={
        "Content-Length": str(art.size),
        "X-LLMOS-SHA256": art.sha256,
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(art.name)}",
    })


keys_router = APIRouter(prefix="/v1/keys", tags=["keys"])


@keys_router.post("/rotate", responses=ERRORS)
def rotate_keys(request: Request,
                who: Principal = needs("admin", what="rotate encryption keys")) -> dict:
    """Make a fresh encryption key current, re-encrypt every encrypted artifact with it,
    then retire the keys nothing needs any more (system administrators)."""
    return _artifacts(request).rotate_keys(who)
