"""The artifact service: put, describe, list and read (verified) artifacts, each call
checked against the principal's role.

Bytes go to the store's content-addressed :class:`ArtifactStore`; the row (name, kind,
size, producing job, parents) to the database. A row is written only after its blob is
safely stored, so a failed upload leaves nothing behind.

An artifact belongs to a team (its uploader's, or its producing job's); every operation
takes the principal asking and checks its role there (viewers read, developers upload,
system administrators rotate keys). The store below knows nothing of roles; this service
is the only way the rest of llmos reaches artifacts.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from llmos.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from llmos.security.audit import note_read
from llmos.security.crypto import Cipher
from llmos.security.rbac import CREATE, READ, Principal
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
        self._resealers: list[Callable[[], set[str]]] = []

    def on_rotate(self, reseal: Callable[[], set[str]]) -> None:
        """Register a service that seals values with the store's cipher outside blobs (a
        sensitive dataset's labels in the database): on key rotation, ``reseal`` seals
        them again under the new current key and returns the key ids they still need,
        so no key is retired while something sealed under it remains."""
        self._resealers.append(reseal)

    def put(self, who: Principal, chunks: Iterable[bytes], name: str, kind: str = "file",
            job_id: int | None = None, parents: list[int] | None = None,
            sensitive: bool = False, team: str | None = None) -> Artifact:
        """Store an artifact in ``team`` (default: the producing job's, else the caller's);
        a ``sensitive`` one is encrypted at rest (AES-256-GCM)."""
        check_name(name)
        if not _KIND.match(kind or ""):
            raise InvalidRequest(f"bad artifact kind {kind!r}: lower-case letters and digits")
        parents = sorted(set(parents or []))
        with self.db.session() as s:  # check references before taking any bytes
            team = self._check_refs(s, who, job_id, parents, team)
        try:
            sha, size = self.store.put_stream(chunks, max_bytes=self.max_bytes,
                                              sealed=sensitive)
        except ArtifactTooLarge:
            raise PayloadTooLarge(
                f"artifact larger than the upload limit of {self.max_bytes >> 20} MB") from None
        with self.db.session() as s:
            self._check_refs(s, who, job_id, parents, team)
            art = Artifact(sha256=sha, name=name, kind=kind, size=size, job_id=job_id,
                           encrypted=sensitive, team=team, owner=who.name)
            s.add(art)
            s.flush()
            for p in parents:
                s.add(ArtifactParent(artifact_id=art.id, parent_id=p))
        return self.get(who, art.id)

    @staticmethod
    def _check_refs(s, who: Principal, job_id: int | None, parents: list[int],
                    team: str | None) -> str:
        """The team the new artifact goes to, once its job and parents are readable."""
        if job_id is not None:
            job = s.get(Job, job_id)
            if job is None or not who.can(READ, job.team):
                raise NotFound(f"job {job_id} not found")
            if team is not None and team != job.team:
                raise InvalidRequest(f"job {job_id} runs in team {job.team}; its artifacts "
                                     f"belong there, not to team {team}")
            team = job.team
        team = who.home_team(team, CREATE, "artifacts")
        if parents:
            rows = s.execute(select(Artifact.id, Artifact.team)
                             .where(Artifact.id.in_(parents))).all()
            found = {i for i, t in rows if who.can(READ, t)}
            missing = [p for p in parents if p not in found]
            if missing:
                raise NotFound(f"parent artifact(s) not found: {', '.join(map(str, missing))}")
        return team

    def get(self, who: Principal, artifact_id: int) -> Artifact:
        with self.db.session() as s:
            art = s.scalars(
                select(Artifact).where(Artifact.id == artifact_id)
                .options(selectinload(Artifact.parent_links))
            ).first()
            if art is None:
                raise NotFound(f"artifact {artifact_id} not found")
            who.check(READ, art.team, f"artifact {artifact_id}")
            return art

    def list(self, who: Principal, kind: str | None = None, job_id: int | None = None,
             name: str | None = None, limit: int = 100, offset: int = 0) -> list[Artifact]:
        q = select(Artifact).options(selectinload(Artifact.parent_links))
        teams = who.readable_teams()
        if teams is not None:
            q = q.where(Artifact.team.in_(sorted(teams)))
        if kind:
            q = q.where(Artifact.kind == kind)
        if job_id is not None:
            q = q.where(Artifact.job_id == job_id)
        if name:
            q = q.where(Artifact.name == name)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(Artifact.id.desc()).limit(limit).offset(offset)))

    def open(self, who: Principal, artifact_id: int) -> tuple[Artifact, Iterator[bytes]]:
        """The artifact and its bytes; the blob is verified before the first byte is given."""
        art = self.get(who, artifact_id)
        if art.encrypted:  # every read of a sensitive artifact's content is audited
            note_read(f"artifact {art.id}")
        return art, self.store.read_verified(art.sha256, sealed=art.encrypted)

    def rename_legacy_sealed(self) -> int:
        """Give sealed blobs of a store from before keyed names their keyed names (once;
        at start, by the composition root)."""
        def shas() -> list[str]:
            with self.db.session() as s:
                return sorted(set(s.scalars(select(Artifact.sha256)
                                            .where(Artifact.encrypted))))
        return self.store.rename_legacy_sealed(shas)

    def rotate_keys(self, who: Principal) -> dict:
        """Seal every encrypted artifact with a fresh key, then retire the old keys."""
        who.require_admin("rotating encryption keys")
        cipher: Cipher = self.store.cipher  # the composition root hands the store this one
        ring = cipher.keyring
        if ring.path is None:
            raise Conflict("the encryption key comes from LLMOS_ENCRYPTION_KEY; rotation needs "
                           "a key file (unset it, or set LLMOS_KEY_FILE)")
        new = ring.add_new_key()
        with self.db.session() as s:
            shas = sorted(set(s.scalars(select(Artifact.sha256).where(Artifact.encrypted))))
        changed = sum(self.store.reseal(sha) for sha in shas)
        needed = set(self.store.sealed_key_ids())
        for reseal in self._resealers:
            needed |= reseal()
        retired = ring.retire(keep=needed)
        return {"key_id": new, "reencrypted": changed, "artifacts": len(shas),
                "retired_keys": retired}
