"""Encryption at rest: AES-256-GCM over fixed-size chunks, so blobs of any size stream.

An encrypted blob is a header and a sequence of sealed chunks::

    b"LLMOSENC1" | key-id length (1 byte) | key id (ASCII) | nonce prefix (7 bytes)
    then per chunk: ciphertext length (4 bytes, big-endian) | ciphertext with its 16-byte tag

Chunk *i* is sealed with the nonce ``prefix | i (4 bytes) | last (1 byte)`` and the header
as associated data (the STREAM construction of Hoang, Reyhanitabar, Rogaway & Vizár, 2015):
a chunk changed, dropped, reordered or moved to another blob fails its tag, and a blob
cut short lacks its ``last`` chunk. Keys are 32 random bytes, named by an id so that a key
can be rotated while blobs sealed with the old one are still being re-encrypted.

This module owns the format, the keyring and the :class:`Cipher` the composition root
hands the artifact store; the store decides what to seal.

Two more secrets live with the keys, never in the database:

* a *naming key* (in the key file; derived from the key when it comes from
  ``LLMOS_ENCRYPTION_KEY``): a sealed blob is stored under ``HMAC(naming key, sha256 of its
  plaintext)``, so listing the store does not let anyone confirm a guessed plaintext;
* *check values* go the other way: the database keeps, per key id, an HMAC of a constant
  under that key (:class:`KeyChecks`), so a wrong key for a known id is refused at start
  and nothing is ever sealed under a key that fails its check (data sealed under a wrong
  key would be lost the day the right key came back).

:func:`secret_file` makes and reads the small 0600 files of other secrets (the audit
chain's HMAC key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import struct
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

MAGIC = b"LLMOSENC1"
CHUNK = 1 << 20
_TAG = 16
_CHECK = b"llmos key check v1"  # what a check value MACs
_NAMING = b"llmos sealed blob names v1"  # derives a naming key where none is stored


class CryptoError(Exception):
    """A key that is missing, malformed or wrong; the message says which and what to do."""


class Keyring:
    """Named 256-bit keys and the one new blobs are sealed with.

    From ``LLMOS_ENCRYPTION_KEY`` (base64 of 32 bytes; id ``env``), or from a key file:
    ``{"current": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}, "naming": "<base64>"}``
    (created with mode 0600 on first use when neither is given).

    ``naming`` is the key sealed blobs are named with. It never changes with rotation;
    a keyring without one (the environment's, or a key file from before it existed)
    derives it from its current key, and a key file keeps it from its next save on.
    """

    def __init__(self, keys: dict[str, bytes], current: str, path: Path | None = None,
                 naming: bytes | None = None):
        if current not in keys:
            raise CryptoError(f"the current key {current!r} is not in the keyring")
        for kid, key in keys.items():
            if len(key) != 32:
                raise CryptoError(f"key {kid!r} is {len(key)} bytes; AES-256 keys are 32 bytes")
        self.keys = keys
        self.current = current
        self.path = path
        self.naming = naming or hmac.new(keys[current], _NAMING, hashlib.sha256).digest()

    @property
    def source(self) -> str:
        """Where the keys come from, for messages."""
        return str(self.path) if self.path is not None else "LLMOS_ENCRYPTION_KEY"

    def name_of(self, sha256: str) -> str:
        """The name a sealed blob of plaintext ``sha256`` is stored under (keyed)."""
        return hmac.new(self.naming, sha256.encode(), hashlib.sha256).hexdigest()

    @classmethod
    def load(cls, key_file: Path, env_key: str | None = None) -> Keyring:
        if env_key:
            return cls({"env": _b64(env_key, "LLMOS_ENCRYPTION_KEY")}, "env")
        key_file = Path(key_file).expanduser()
        if not key_file.exists():
            kid = _new_id()
            ring = cls({kid: secrets.token_bytes(32)}, kid, key_file)
            ring.save()
            return ring
        try:
            data = json.loads(key_file.read_text())
            keys = {kid: _b64(v, f"key {kid!r} in {key_file}") for kid, v in data["keys"].items()}
            naming = _b64(data["naming"], f"the naming key in {key_file}") \
                if data.get("naming") else None
            return cls(keys, data["current"], key_file, naming)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CryptoError(f"cannot read the key file {key_file}: {e}") from None

    def save(self) -> None:
        if self.path is None:
            raise CryptoError("this keyring comes from LLMOS_ENCRYPTION_KEY; rotation needs a "
                            "key file (LLMOS_KEY_FILE)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"current": self.current,
                       "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
                       "naming": base64.b64encode(self.naming).decode()},
                      f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add_new_key(self) -> str:
        """A fresh key becomes current (old ones stay until nothing needs them)."""
        if self.path is None:
            self.save()  # raises: env keyrings cannot rotate
        kid = _new_id()
        while kid in self.keys:
            kid = _new_id()
        self.keys[kid] = secrets.token_bytes(32)
        self.current = kid
        self.save()
        return kid

    def retire(self, keep: set[str]) -> list[str]:
        """Drop every key not in ``keep`` (nor current); return the ids dropped."""
        gone = [k for k in self.keys if k not in keep and k != self.current]
        for k in gone:
            del self.keys[k]
        if gone:
            self.save()
        return gone


def check_value(key: bytes) -> str:
    """A key's check value: an HMAC of a constant under it (reveals nothing of the key)."""
    return hmac.new(key, _CHECK, hashlib.sha256).hexdigest()


class KeyChecks:
    """The check value of every key id ever used, kept in the database (``key_checks``).

    The first use of an id records its value; every later use must match it. The keys
    stay outside the database; a check value only tells a right key from a wrong one.
    """

    def __init__(self, db):
        self.db = db

    def confirm(self, key_id: str, key: bytes, source: str) -> None:
        """Record ``key_id``'s check value on first use; raise CryptoError, saying what to
        do, when ``key`` is not the key that id named before."""
        from sqlalchemy.exc import IntegrityError

        from llmos.store.models import KeyCheck

        value = check_value(key)
        for _ in range(2):  # a concurrent first use of the same id: read what it wrote
            try:
                with self.db.session() as s:
                    row = s.get(KeyCheck, key_id)
                    if row is None:
                        s.add(KeyCheck(key_id=key_id, check_value=value))
                        return
                    known = row.check_value
                break
            except IntegrityError:
                continue
        else:
            raise CryptoError(f"cannot record the check value of key {key_id!r}")
        if not hmac.compare_digest(known, value):
            raise CryptoError(
                f"key {key_id!r} from {source} is not the key that id named before (its "
                "check value differs from the one recorded when it was first used): what "
                f"was sealed under {key_id!r} cannot be opened with it, and nothing may be "
                f"sealed with it. Put the right key back in {source}")


class Cipher:
    """Seals and opens blobs with a keyring loaded on first use, so a store that never
    seals anything needs (and creates) no key.

    With ``checks``, every key of the keyring is confirmed against its recorded check
    value when the keyring loads, and the current key again before anything is sealed
    (a key added by rotation is recorded then), so nothing is sealed under a wrong key.
    """

    def __init__(self, load: Callable[[], Keyring], checks: KeyChecks | None = None):
        self._load = load
        self._keyring: Keyring | None = None
        self._checks = checks
        self._confirmed: dict[str, bytes] = {}

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            ring = self._load()
            for kid, key in ring.keys.items():
                self._confirm(ring, kid, key)
            self._keyring = ring
        return self._keyring

    def _confirm(self, ring: Keyring, kid: str, key: bytes) -> None:
        if self._checks is None or self._confirmed.get(kid) == key:
            return
        self._checks.confirm(kid, key, ring.source)
        self._confirmed[kid] = key

    @property
    def current(self) -> str:
        return self.keyring.current

    def name_of(self, sha256: str) -> str:
        """The keyed name of the sealed blob whose plaintext has ``sha256``."""
        return self.keyring.name_of(sha256)

    def seal(self, chunks: Iterable[bytes], out: BinaryIO) -> None:
        ring = self.keyring
        self._confirm(ring, ring.current, ring.keys[ring.current])
        seal(chunks, ring, out)

    def unseal(self, f: BinaryIO) -> Iterator[bytes]:
        return unseal(f, self.keyring)

    @staticmethod
    def key_id_of(f: BinaryIO) -> str:
        return key_id_of(f)


def keyring_of(settings) -> Keyring:
    """The keyring llmos's settings name: LLMOS_ENCRYPTION_KEY, else the key file."""
    secret = settings.encryption_key.get_secret_value() if settings.encryption_key else None
    return Keyring.load(settings.key_path, secret)


def secret_file(path: Path) -> bytes:
    """The 32-byte secret in ``path`` (base64), made with mode 0600 (whatever the umask)
    on first use. For secrets kept beside the encryption keys, e.g. the audit chain's
    HMAC key."""
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, base64.b64encode(secrets.token_bytes(32)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a secret another process made meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    try:
        return _b64(path.read_text().strip(), f"the secret in {path}")
    except OSError as e:
        raise CryptoError(f"cannot read {path}: {e.strerror}") from None


def _b64(text: str, what: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise CryptoError(f"{what} is not base64") from None
    if len(key) != 32:
        raise CryptoError(f"{what} decodes to {len(key)} bytes; AES-256 needs 32")
    return key


def _new_id() -> str:
    return time.strftime("k%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(2)


def generate_key() -> str:
    """A new key, base64 (for LLMOS_ENCRYPTION_KEY)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


# -- sealing and opening ---------------------------------------------------------------------


def seal(chunks: Iterable[bytes], ring: Keyring, out: BinaryIO) -> None:
    """Write ``chunks`` (any sizes) to ``out`` encrypted with the current key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kid = ring.current.encode()
    header = MAGIC + bytes([len(kid)]) + kid + secrets.token_bytes(7)
    aead = AESGCM(ring.keys[ring.current])
    out.write(header)
    index = 0
    pending = b""
    for piece in _rechunk(chunks):
        if pending:
            _write_chunk(out, aead, header, index, pending, last=False)
            index += 1
        pending = piece
    _write_chunk(out, aead, header, index, pending, last=True)


def _rechunk(chunks: Iterable[bytes]) -> Iterator[bytes]:
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= CHUNK:
            yield bytes(buf[:CHUNK])
            del buf[:CHUNK]
    if buf:
        yield bytes(buf)


def _nonce(header: bytes, index: int, last: bool) -> bytes:
    return header[-7:] + struct.pack(">IB", index, 1 if last else 0)


def _write_chunk(out: BinaryIO, aead, header: bytes, index: int, data: bytes, last: bool) -> None:
    sealed = aead.encrypt(_nonce(header, index, last), data, header)
    out.write(struct.pack(">I", len(sealed)))
    out.write(sealed)


def key_id_of(f: BinaryIO) -> str:
    """The id of the key a sealed blob needs (reads only its header)."""
    return _read_header(f)[1]


def _read_header(f: BinaryIO) -> tuple[bytes, str]:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise CryptoError("not an llmos encrypted blob")
    n = f.read(1)
    kid = f.read(n[0]) if n else b""
    prefix = f.read(7)
    if not n or len(kid) != n[0] or len(prefix) != 7:
        raise CryptoError("the encrypted blob's header is cut short")
    return MAGIC + n + kid + prefix, kid.decode("ascii", "replace")


def unseal(f: BinaryIO, ring: Keyring) -> Iterator[bytes]:
    """The plaintext of a sealed blob, chunk by chunk. Raises CryptoError for a missing or
    wrong key, and for any change to the blob."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header, kid = _read_header(f)
    key = ring.keys.get(kid)
    if key is None:
        raise CryptoError(f"the blob was encrypted with key {kid!r}, which is not in the keyring "
                        "(wrong key file or LLMOS_ENCRYPTION_KEY?)")
    aead = AESGCM(key)
    index = 0
    while True:
        size = f.read(4)
        if len(size) < 4:
            raise CryptoError("the encrypted blob is cut short (no final chunk)")
        (n,) = struct.unpack(">I", size)
        sealed = f.read(n)
        if len(sealed) != n or n < _TAG:
            raise CryptoError("the encrypted blob is cut short")
        peek = f.read(1)
        last = not peek
        try:
            data = aead.decrypt(_nonce(header, index, last), sealed, header)
        except InvalidTag:
            raise CryptoError(f"chunk {index} of the encrypted blob fails authentication: "
                            f"the key {kid!r} is wrong or the blob was altered") from None
        yield data
        if last:
            return
        f.seek(-1, os.SEEK_CUR)
        index += 1
