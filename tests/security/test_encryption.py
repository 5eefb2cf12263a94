"""Encryption at rest: sealed bytes on disk never hold the plaintext, a wrong key fails
clearly, any change to a sealed blob is caught, and key rotation keeps everything readable."""

from __future__ import annotations

import base64
import os

import pytest

from live import LiveDaemon
from llmos.security.crypto import CHUNK, Cipher, CryptoError, Keyring, generate_key
from llmos.store import ArtifactStore

SECRET = b"patient 4711: diagnosis confidential; card 4111 1111 1111 1111\n"


def ring(tmp_path, name="keys.json") -> Keyring:
    return Keyring.load(tmp_path / name)


def on_disk(root) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("size", [0, 100, CHUNK, 3 * CHUNK + 17])
def test_sealed_blobs_round_trip_and_hide_the_plaintext(tmp_path, size):
    keys = ring(tmp_path)
    store = ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: keys))
    data = (SECRET * (size // len(SECRET) + 1))[:size]
    sha, n = store.put_stream([data[i:i + 4096] for i in range(0, len(data), 4096)],
                              sealed=True)
    assert n == size
    assert b"".join(store.read_verified(sha, sealed=True)) == data
    assert not store.exists(sha)  # no plaintext copy
    if size:
        assert SECRET[:32] not in on_disk(tmp_path / "store")
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0  # key file is private


def test_a_wrong_or_missing_key_fails_clearly(tmp_path):
    store = ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: ring(tmp_path, "a.json")))
    sha, _ = store.put_stream([SECRET], sealed=True)
    other = ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: ring(tmp_path, "b.json")))
    with pytest.raises(CryptoError, match="is not in the keyring"):
        other.verify(sha, sealed=True)
    # Same key id, different key bytes: authentication fails, with the reason.
    a = ring(tmp_path, "a.json")
    impostor = Keyring({a.current: os.urandom(32)}, a.current)
    with pytest.raises(CryptoError, match="fails authentication"):
        ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: impostor)).verify(sha, sealed=True)
    with pytest.raises(CryptoError, match="not base64"):
        Keyring.load(tmp_path / "c.json", env_key="not base64!")
    with pytest.raises(CryptoError, match="decodes to 16 bytes"):
        Keyring.load(tmp_path / "c.json", env_key=base64.b64encode(os.urandom(16)).decode())


@pytest.mark.parametrize("damage", ["flip", "truncate_chunk", "drop_last_chunk", "header"])
def test_any_change_to_a_sealed_blob_is_caught(tmp_path, damage):
    keys = ring(tmp_path)
    store = ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: keys))
    sha, _ = store.put_stream([os.urandom(2 * CHUNK + 5)], sealed=True)
    path = store.path(sha, sealed=True)
    blob = bytearray(path.read_bytes())
    os.chmod(path, 0o644)
    if damage == "flip":
        blob[len(blob) // 2] ^= 1
    elif damage == "truncate_chunk":
        del blob[-3:]
    elif damage == "drop_last_chunk":
        del blob[-(4 + 5 + 16):]
    else:
        blob[0] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(CryptoError):
        store.verify(sha, sealed=True)


def test_rotation_reencrypts_everything_and_retires_the_old_key(tmp_path):
    keys = ring(tmp_path)
    old = keys.current
    store = ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: keys))
    shas = [store.put_stream([SECRET + bytes([i])], sealed=True)[0] for i in range(5)]
    keys.add_new_key()
    assert sum(store.reseal(sha) for sha in shas) == 5
    assert keys.retire(keep=set(store.sealed_key_ids())) == [old]
    fresh = Keyring.load(tmp_path / "keys.json")  # what a restarted daemon reads
    reopened = ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: fresh))
    assert [b"".join(reopened.read_verified(s, True)) for s in shas] == [
        SECRET + bytes([i]) for i in range(5)]


def test_sensitive_artifacts_and_datasets_through_a_live_daemon(tmp_path):
    key_file = tmp_path / "secret" / "keys.json"
    home = tmp_path / "home"
    home.mkdir()
    daemon = LiveDaemon(home, env={"LLMOS_KEY_FILE": str(key_file)}).start()
    try:
        c = daemon.client
        art = c.artifacts.put(SECRET, name="notes.txt", sensitive=True)
        plain = c.artifacts.put(b"public words", name="public.txt")
        assert art["encrypted"] and not plain["encrypted"]
        assert SECRET[:32] not in on_disk(home / "artifacts")
        assert c.artifacts.read(art["id"]) == SECRET

        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "doc.txt").write_text("a confidential memo about the merger")
        job = c.datasets.ingest("memos", [str(tmp_path / "in")], {}, sensitive=True)
        assert daemon.wait_job(job["id"], timeout=120)["state"] == "SUCCEEDED"
        version = c.datasets.version("memos")
        assert all(c.artifacts.get(s["artifact_id"])["encrypted"] for s in version["shards"])
        assert b"merger" not in on_disk(home / "artifacts")
        assert c.datasets.head("memos")[0]["text"] == "a confidential memo about the merger"

        before = Keyring.load(key_file).current
        rotated = c.keys.rotate()
        assert rotated["key_id"] != before and rotated["retired_keys"] == [before]
        assert rotated["reencrypted"] == rotated["artifacts"] == 3  # memo, shard, report
        assert c.artifacts.read(art["id"]) == SECRET
        assert c.datasets.head("memos")[0]["text"].endswith("merger")
    finally:
        daemon.stop()

    # The same store under a wrong key: a clear error, never the data or a traceback.
    wrong = LiveDaemon(home, env={"LLMOS_ENCRYPTION_KEY": generate_key()}).start()
    try:
        resp = wrong.http().get(f"/v1/artifacts/{art['id']}/content")
        assert resp.status_code == 500
        assert resp.json()["error"]["type"] == "encryption_error"
        assert "is not in the keyring" in resp.json()["error"]["message"]
        assert wrong.http().get(f"/v1/artifacts/{plain['id']}/content").content == \
            b"public words"
        refused = wrong.http().post("/v1/keys/rotate")
        assert refused.status_code == 409
        assert "rotation needs a key file" in refused.json()["error"]["message"]
    finally:
        wrong.stop()
