"""Artifacts with their metadata: put, describe, list, read (verified).

Bytes go to the content-addressed :class:`ArtifactStore`; the row (name, kind, size,
producing job, parents) to the database. A row is written only after its blob is safely
stored, so a failed upload leaves nothing behind.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from llmos.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from llmos.store.artifacts import ArtifactStore, ArtifactTooLarge
from llmos.store.db import Database
from llmos.store.models import Artifact, ArtifactParent, Job

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-@ ]{0,254}$")
_KIND = re.compile(r"^[a-z][a-z0-9_.\-]{0,99}$")


def check_name(name: str) -> str:
    """Artifact names are plain file names: no folders, no '..', no control characters."""
    if not _NAME.match(name or "") or ".." in name:
        raise InvalidRequest(
            f"bad artifact name {name!r}: use letters, digits, '.', '_', '-', '+', '@' and "
            "spaces, no folders"
        )
    return name


class ArtifactService:
    def __init__(self, db: Database, store: ArtifactStore, max_bytes: int):
        self.db = db
        self.store = store
        self.max_bytes = max_bytes

    def put(self, chunks: Iterable[bytes], name: str, kind: str = "file",
            job_id: int | None = None, parents: list[int] | None = None,
            sensitive: bool = False) -> Artifact:
        """Store an artifact; a ``sensitive`` one is encrypted at rest (AES-256-GCM)."""
        check_name(name)
        if not _KIND.match(kind or ""):
            raise InvalidRequest(f"bad artifact kind {kind!r}: lower-case letters and digits")
        parents = sorted(set(parents or []))
        with self.db.session() as s:  # check references before taking any bytes
            self._check_refs(s, job_id, parents)
        try:
            sha, size = self.store.put_stream(chunks, max_bytes=self.max_bytes,
                                              sealed=sensitive)
        except ArtifactTooLarge:
            raise PayloadTooLarge(
                f"artifact larger than the upload limit of {self.max_bytes >> 20} MB") from None
        with self.db.session() as s:
            self._check_refs(s, job_id, parents)
            art = Artifact(sha256=sha, name=name, kind=kind, size=size, job_id=job_id,
                           encrypted=sensitive)
            s.add(art)
            s.flush()
            for p in parents:
                s.add(ArtifactParent(artifact_id=art.id, parent_id=p))
        return self.get(art.id)

    @staticmethod
    def _check_refs(s, job_id: int | None, parents: list[int]) -> None:
        if job_id is not None and s.get(Job, job_id) is None:
            raise NotFound(f"job {job_id} not found")
        if parents:
            found = set(s.scalars(select(Artifact.id).where(Artifact.id.in_(parents))))
            missing = [p for p in parents if p not in found]
            if missing:
                raise NotFound(f"parent artifact(s) not found: {', '.join(map(str, missing))}")

    def get(self, artifact_id: int) -> Artifact:
        with self.db.session() as s:
            art = s.scalars(
                select(Artifact).where(Artifact.id == artifact_id)
                .options(selectinload(Artifact.parent_links))
            ).first()
            if art is None:
                raise NotFound(f"artifact {artifact_id} not found")
            return art

    def list(self, kind: str | None = None, job_id: int | None = None, name: str | None = None,
             limit: int = 100, offset: int = 0) -> list[Artifact]:
        q = select(Artifact).options(selectinload(Artifact.parent_links))
        if kind:
            q = q.where(Artifact.kind == kind)
        if job_id is not None:
            q = q.where(Artifact.job_id == job_id)
        if name:
            q = q.where(Artifact.name == name)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(Artifact.id.desc()).limit(limit).offset(offset)))

    def open(self, artifact_id: int) -> tuple[Artifact, Iterator[bytes]]:
        """The artifact and its bytes; the blob is verified before the first byte is given."""
        art = self.get(artifact_id)
        return art, self.store.read_verified(art.sha256, sealed=art.encrypted)

    def rotate_keys(self) -> dict:
        """Seal every encrypted artifact with a fresh key, then retire the old keys."""
        ring = self.store.keyring
        if ring.path is None:
            raise Conflict("the encryption key comes from LLMOS_ENCRYPTION_KEY; rotation needs "
                           "a key file (unset it, or set LLMOS_KEY_FILE)")
        new = ring.add_new_key()
        with self.db.session() as s:
            shas = sorted(set(s.scalars(select(Artifact.sha256).where(Artifact.encrypted))))
        changed = sum(self.store.reseal(sha) for sha in shas)
        retired = ring.retire(keep=set(self.store.sealed_key_ids()))
        return {"key_id": new, "reencrypted": changed, "artifacts": len(shas),
                "retired_keys": retired}
