"""Immutable blobs addressed by sha256, on a local folder.

Owns the bytes only: a blob is written once (temporary file, fsync, rename), never
changed, and its hash is checked on every read, so a corrupted blob raises
:class:`CorruptArtifact` instead of handing out wrong data. Artifact *metadata* (name,
kind, producing job, parents) lives in the database (``store/models.py``) and is managed
by ``store/artifact_service.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CorruptArtifact(Exception):
    """A blob's bytes no longer match the sha256 it is stored under."""


class ArtifactTooLarge(Exception):
    """An upload went past the configured size limit."""


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.blobs / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_stream(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        """Store the bytes of ``chunks``; return (sha256, size). Atomic and idempotent."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise ArtifactTooLarge(f"larger than the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.is_file() and self._matches(final, sha):
                os.unlink(tmp_name)  # same content already stored
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o444)
                os.replace(tmp_name, final)
            return sha, size
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_stream([data])

    def put_file(self, src: Path) -> tuple[str, int]:
        with open(src, "rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK), b""))

    def verify(self, sha256: str) -> int:
        """Check the blob against its hash; return its size. Raises on damage or absence."""
        path = self.path(sha256)
        if not path.is_file():
            raise CorruptArtifact(f"blob {sha256} is missing from the artifact store")
        if not self._matches(path, sha256):
            raise CorruptArtifact(f"blob {sha256} is corrupted: its bytes no longer match its sha256")
        return path.stat().st_size

    def open_verified(self, sha256: str) -> BinaryIO:
        """Verify the whole blob, then return it opened for reading."""
        self.verify(sha256)
        return open(self.path(sha256), "rb")

    @staticmethod
    def _matches(path: Path, sha256: str) -> bool:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest() == sha256
