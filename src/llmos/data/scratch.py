"""An ingest's scratch files (the spill file, decompressed inputs, shards before upload):
plain files, or — for a *sensitive* dataset — files sealed as they are written with keys
that exist only in this process's memory.

A job never holds the daemon's encryption keys, so it cannot seal with them; instead each
sealed scratch file gets its own random AES-256 key, kept in the :class:`Scratch` object
and nowhere else. The plaintext of a sensitive document is therefore never on disk: what a
job leaves behind when it fails, is cancelled or is killed (``SIGKILL`` included, when no
clean-up runs) is ciphertext whose key died with the process. ``ingest`` still removes its
scratch folder on every exit; the key is what makes a file missed by that harmless.

Sealed layout: the plaintext is cut into chunks of ``CHUNK`` bytes; chunk *i* is stored at
``i * (CHUNK + 16)`` as AES-GCM ciphertext with its tag, under nonce *i* (unique per key:
one key per file) and associated data that marks the last chunk, so a chunk swapped,
altered or cut short fails to open. Fixed offsets make the file seekable for reading
(Arrow IPC and Parquet read their footers first).
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

CHUNK = 1 << 20
_TAG = 16


class ScratchError(Exception):
    """A sealed scratch file that does not open (altered on disk, or cut short)."""


@dataclass
class _Sealed:
    key: bytes
    size: int = 0
    sha256: str = ""


class Scratch:
    """The scratch files of one ingest, under ``folder``: ``create`` a file, ``open`` it
    for reading (seekable), ``chunks`` of its bytes, ``sha256`` of its content, and
    ``remove``; ``sealed`` ones as described above."""

    def __init__(self, folder: Path, sealed: bool = False):
        self.folder = Path(folder)
        self.sealed = sealed
        self._files: dict[Path, _Sealed] = {}

    def create(self, path: Path) -> BinaryIO:
        """A new file for writing (binary; ``close`` it to finish it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.sealed:
            return open(path, "wb")
        entry = self._files[path] = _Sealed(secrets.token_bytes(32))
        return _SealedWriter(path, entry)  # type: ignore[return-value]

    def open(self, path: Path) -> BinaryIO:
        """The file's content, readable and seekable."""
        path = Path(path)
        if not self.sealed:
            return open(path, "rb")
        entry = self._files.get(path)
        if entry is None:
            raise ScratchError(f"{path.name} was not written by this process")
        return io.BufferedReader(_SealedReader(path, entry), CHUNK)  # type: ignore[return-value]

    def size(self, path: Path) -> int:
        """The size of the content (not of its sealed form)."""
        return self._files[Path(path)].size if self.sealed else Path(path).stat().st_size

    def sha256(self, path: Path) -> str:
        """The sha256 of the content."""
        if self.sealed:
            return self._files[Path(path)].sha256
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 << 20):
                h.update(chunk)
        return h.hexdigest()

    def chunks(self, path: Path) -> Iterator[bytes]:
        """The content, in pieces of about a MB (for an upload)."""
        with self.open(path) as f:
            while piece := f.read(CHUNK):
                yield piece

    def remove(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)
        self._files.pop(Path(path), None)

    def clear(self) -> None:
        """Remove the folder and forget every key."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._files.clear()


def _aead(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


class _SealedWriter(io.RawIOBase):
    def __init__(self, path: Path, entry: _Sealed):
        self._f = open(path, "wb")
        self._entry = entry
        self._aead = _aead(entry.key)
        self._buf = bytearray()
        self._index = 0
        self._pos = 0
        self._hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self._buf += data
        self._pos += len(data)
        self._hash.update(data)
        while len(self._buf) > CHUNK:  # the last chunk is sealed as such at close
            self._seal(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(data)

    def tell(self) -> int:
        return self._pos

    def _seal(self, data: bytes, last: bool) -> None:
        self._f.write(self._aead.encrypt(_nonce(self._index), data, b"last" if last else b""))
        self._index += 1

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._pos:
                self._seal(bytes(self._buf), last=True)
            self._buf.clear()
            self._f.close()
            self._entry.size = self._pos
            self._entry.sha256 = self._hash.hexdigest()
        finally:
            super().close()


class _SealedReader(io.RawIOBase):
    def __init__(self, path: Path, entry: _Sealed):
        self._f = open(path, "rb")
        self._size = entry.size
        self._aead = _aead(entry.key)
        self._chunks = (entry.size + CHUNK - 1) // CHUNK
        expected = entry.size + self._chunks * _TAG
        if os.fstat(self._f.fileno()).st_size != expected:
            self._f.close()
            raise ScratchError(f"{path.name} was changed on disk")
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _chunk(self, index: int) -> bytes:
        if self._cached and self._cached[0] == index:
            return self._cached[1]
        self._f.seek(index * (CHUNK + _TAG))
        sealed = self._f.read(CHUNK + _TAG)
        last = index == self._chunks - 1
        try:
            plain = self._aead.decrypt(_nonce(index), sealed, b"last" if last else b"")
        except Exception:  # cryptography's InvalidTag
            raise ScratchError("a sealed scratch file was changed on disk") from None
        self._cached = (index, plain)
        return plain

    def readinto(self, b) -> int:
        if self._pos >= self._size:
            return 0
        index, start = divmod(self._pos, CHUNK)
        piece = self._chunk(index)[start:start + len(b)]
        b[:len(piece)] = piece
        self._pos += len(piece)
        return len(piece)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()
