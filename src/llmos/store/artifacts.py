"""Immutable blobs addressed by sha256, on a local folder.

Owns the bytes only: a blob is written once (temporary file, fsync, rename), never
changed, and its hash is checked on every read, so a corrupted blob raises
:class:`CorruptArtifact` instead of handing out wrong data. Artifact *metadata* (name,
kind, producing job, parents) lives in the database (``store/models.py``) and is managed,
role-checked, by the artifact service (``security/artifacts.py``).

A *sealed* blob (a sensitive artifact) is stored encrypted under ``sealed/``, asked for
by the sha256 of its plaintext (checked after decryption) but *named* by the cipher's
keyed hash of it (``Cipher.name_of``): whoever can list the store cannot confirm a
guessed plaintext by its sha256. Sealed blobs of stores from before keyed names are
renamed once (:meth:`ArtifactStore.rename_legacy_sealed`). The store knows no cipher of
its own: the one that seals and opens blobs is handed to it (llmos's composition root
gives it ``security.crypto.Cipher``: AES-256-GCM, keys loaded on first use, so a store
that never seals anything needs no key).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CorruptArtifact(Exception):
    """A blob's bytes no longer match the sha256 it is stored under."""


class ArtifactTooLarge(Exception):
    """An upload went past the configured size limit."""


class NoCipher(Exception):
    """A sealed blob was asked of a store built without a cipher."""


class Cipher(Protocol):
    """What the store needs to seal blobs and open them again."""

    @property
    def current(self) -> str:
        """The id of the key new blobs are sealed with."""

    def seal(self, chunks: Iterable[bytes], out: BinaryIO) -> None:
        """Write ``chunks`` to ``out`` encrypted."""

    def unseal(self, f: BinaryIO) -> Iterator[bytes]:
        """The plaintext of the sealed blob ``f``, chunk by chunk; raises on any change."""

    def key_id_of(self, f: BinaryIO) -> str:
        """The id of the key the sealed blob ``f`` needs (reads its header only)."""

    def name_of(self, sha256: str) -> str:
        """The keyed name (64 hex digits) the sealed blob of plaintext ``sha256`` is
        stored under."""


class ArtifactStore:
    def __init__(self, root: Path, cipher: Cipher | None = None):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.sealed = self.root / "sealed"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._cipher = cipher

    @property
    def cipher(self) -> Cipher:
        if self._cipher is None:
            raise NoCipher("this artifact store was given no cipher: it cannot seal or open "
                           "encrypted blobs")
        return self._cipher

    def path(self, sha256: str, sealed: bool = False) -> Path:
        """Where the blob of plaintext ``sha256`` lives: under its sha256, or, sealed,
        under its keyed name."""
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        if sealed:
            name = self.cipher.name_of(sha256)
            return self.sealed / name[:2] / name[2:]
        return self.blobs / sha256[:2] / sha256[2:]

    def rename_legacy_sealed(self, shas: Callable[[], Iterable[str]]) -> int:
        """Move sealed blobs still named by their plaintext's sha256 (stores from before
        keyed names) to their keyed names; return how many moved. ``shas`` gives the
        plaintext sha256 of every sealed artifact. Done once: a marker file records it;
        safe to repeat after a crash (a blob already at its keyed name only loses its old
        name)."""
        marker = self.sealed / ".keyed-names"
        if marker.exists():
            return 0
        moved = 0
        for sha in shas():
            old = self.sealed / sha[:2] / sha[2:]
            if not old.is_file():
                continue
            new = self.path(sha, sealed=True)
            if new.is_file():
                old.unlink()
                continue
            new.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, new)
            moved += 1
        for folder in self.sealed.glob("*"):  # folders the old names left empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self.sealed.mkdir(parents=True, exist_ok=True)
        marker.write_text("sealed blobs are named by a keyed hash of their plaintext sha256\n")
        return moved

    def exists(self, sha256: str, sealed: bool = False) -> bool:
        return self.path(sha256, sealed).is_file()

    def put_stream(self, chunks: Iterable[bytes], max_bytes: int | None = None,
                   sealed: bool = False) -> tuple[str, int]:
        """Store the bytes of ``chunks`` (encrypted when ``sealed``); return (sha256 of the
        plaintext, size). Atomic and idempotent."""
        digest = hashlib.sha256()
        size = 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ArtifactTooLarge(f"larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                yield chunk

        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                if sealed:
                    self.cipher.seal(counted(), out)
                else:
                    for chunk in counted():
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha, sealed)
            if final.is_file() and self._intact(sha, sealed):
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

    def verify(self, sha256: str, sealed: bool = False) -> None:
        """Check the blob against its hash. Raises on damage or absence (and, for a sealed
        blob, the cipher's error when its key is missing or wrong)."""
        path = self.path(sha256, sealed)
        if not path.is_file():
            if sealed:  # its name is keyed: another keyring names it differently
                raise CorruptArtifact(
                    f"sealed blob {sha256} is not in the artifact store under the name this "
                    "keyring gives it: the key file (or LLMOS_ENCRYPTION_KEY) is not the one "
                    "it was sealed with, or the blob is missing")
            raise CorruptArtifact(f"blob {sha256} is missing from the artifact store")
        if not self._intact(sha256, sealed):
            raise CorruptArtifact(f"blob {sha256} is corrupted: its bytes no longer match its sha256")

    def read_verified(self, sha256: str, sealed: bool = False) -> Iterator[bytes]:
        """Verify the whole blob, then give its (plaintext) bytes chunk by chunk."""
        self.verify(sha256, sealed)
        return self._chunks(sha256, sealed)

    def _chunks(self, sha256: str, sealed: bool) -> Iterator[bytes]:
        with open(self.path(sha256, sealed), "rb") as f:
            if sealed:
                yield from self.cipher.unseal(f)
            else:
                yield from iter(lambda: f.read(CHUNK), b"")

    def _intact(self, sha256: str, sealed: bool) -> bool:
        digest = hashlib.sha256()
        for chunk in self._chunks(sha256, sealed):
            digest.update(chunk)
        return digest.hexdigest() == sha256

    def reseal(self, sha256: str) -> bool:
        """Re-encrypt a sealed blob with the current key (key rotation); True if it
        changed. The new blob replaces the old one only once it verifies."""
        path = self.path(sha256, sealed=True)
        with open(path, "rb") as f:
            if self.cipher.key_id_of(f) == self.cipher.current:
                return False
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="reseal-")
        try:
            with os.fdopen(fd, "wb") as out:
                self.cipher.seal(self._chunks(sha256, True), out)
                out.flush()
                os.fsync(out.fileno())
            digest = hashlib.sha256()
            with open(tmp_name, "rb") as f:
                for chunk in self.cipher.unseal(f):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                raise CorruptArtifact(f"blob {sha256} did not survive re-encryption")
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, path)
            return True
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def sealed_key_ids(self) -> dict[str, int]:
        """How many sealed blobs each key id protects."""
        counts: dict[str, int] = {}
        if self.sealed.is_dir():
            for path in self.sealed.glob("*/*"):
                with open(path, "rb") as f:
                    kid = self.cipher.key_id_of(f)
                counts[kid] = counts.get(kid, 0) + 1
        return counts
