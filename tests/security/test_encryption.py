"""Encryption at rest: sealed bytes on disk never hold the plaintext, a wrong key fails
clearly, any change to a sealed blob is caught, and key rotation keeps everything readable."""

from __future__ import annotations

import base64
import os

import pytest

from live import LiveDaemon
from llmos.security.crypto import CHUNK, Cipher, CryptoError, Keyring, generate_key
from llmos.store import ArtifactStore, CorruptArtifact

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
    # Another keyring names sealed blobs differently: the blob is not where it looks.
    with pytest.raises(CorruptArtifact, match="is not the one it was sealed with"):
        other.verify(sha, sealed=True)
    a = ring(tmp_path, "a.json")
    # The same naming key without the blob's key id: the missing key is named.
    lacking = Keyring({"k-other": os.urandom(32)}, "k-other", naming=a.naming)
    with pytest.raises(CryptoError, match="is not in the keyring"):
        ArtifactStore(tmp_path / "store", cipher=Cipher(lambda: lacking)).verify(sha, sealed=True)
    # Same key id, different key bytes: authentication fails, with the reason.
    impostor = Keyring({a.current: os.urandom(32)}, a.current, naming=a.naming)
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
    (tmp_path / "in").mkdir()  # jobs, sandboxed, see host folders under /tmp only as roots
    daemon = LiveDaemon(home, env={"LLMOS_KEY_FILE": str(key_file),
                                   "LLMOS_INGEST_ROOTS": str(tmp_path / "in")}).start()
    try:
        c = daemon.client
        art = c.artifacts.put(SECRET, name="notes.txt", sensitive=True)
        plain = c.artifacts.put(b"public words", name="public.txt")
        assert art["encrypted"] and not plain["encrypted"]
        assert SECRET[:32] not in on_disk(home / "artifacts")
        assert c.artifacts.read(art["id"]) == SECRET

        (tmp_path / "in" / "doc.txt").write_text("a confidential memo about the merger")
        job = c.datasets.ingest("memos", [str(tmp_path / "in")], {}, sensitive=True)
        assert daemon.wait_job(job["id"], timeout=120)["state"] == "SUCCEEDED", \
            c.jobs.logs(job["id"])
        version = c.datasets.version("memos")
        assert all(c.artifacts.get(s["artifact_id"])["encrypted"] for s in version["shards"])
        assert b"merger" not in on_disk(home / "artifacts")
        assert c.datasets.head("memos")[0]["text"] == "a confidential memo about the merger"

        before = Keyring.load(key_file).current
        rotated = c.keys.rotate()
        assert rotated["key_id"] != before and rotated["retired_keys"] == [before]
        assert rotated["reencrypted"] == rotated["artifacts"] == 4  # memo, request, shard, report
        assert c.artifacts.read(art["id"]) == SECRET
        assert c.datasets.head("memos")[0]["text"].endswith("merger")
        # its labels and lineage, sealed in the database, moved to the new key as well
        assert c.datasets.version("memos")["lineage"] == version["lineage"]
    finally:
        daemon.stop()

    # The same store under a wrong key: a clear error, never the data or a traceback.
    wrong = LiveDaemon(home, env={"LLMOS_ENCRYPTION_KEY": generate_key()}).start()
    try:
        resp = wrong.http().get(f"/v1/artifacts/{art['id']}/content")
        assert resp.status_code == 500
        assert resp.json()["error"]["type"] == "data_corruption_error"
        assert "is not the one it was sealed with" in resp.json()["error"]["message"]
        assert wrong.http().get(f"/v1/artifacts/{plain['id']}/content").content == \
            b"public words"
        refused = wrong.http().post("/v1/keys/rotate")
        assert refused.status_code == 409
        assert "rotation needs a key file" in refused.json()["error"]["message"]
    finally:
        wrong.stop()


# -- check values, keyed blob names ------------------------------------------------------------


def _db(tmp_path):
    from llmos.store import open_database

    return open_database(f"sqlite:///{tmp_path / 'llmos.db'}")


def test_nothing_is_sealed_under_a_key_that_fails_its_check(tmp_path):
    from llmos.security.crypto import KeyChecks

    db = _db(tmp_path)
    try:
        keys = ring(tmp_path)
        store = ArtifactStore(tmp_path / "store", Cipher(lambda: keys, KeyChecks(db)))
        sha, _ = store.put_stream([SECRET], sealed=True)  # records the key's check value
        impostor = Keyring({keys.current: os.urandom(32)}, keys.current, naming=keys.naming)
        wrong = ArtifactStore(tmp_path / "store", Cipher(lambda: impostor, KeyChecks(db)))
        with pytest.raises(CryptoError, match=f"key '{keys.current}' from LLMOS_ENCRYPTION_KEY "
                           "is not the key that id named before"):
            wrong.put_stream([b"sealed under the wrong key would be lost"], sealed=True)
        assert [p.name for p in (tmp_path / "store" / "tmp").iterdir()] == []
        assert sum(1 for p in store.sealed.rglob("*") if p.is_file()) == 1
        # A key made by rotation is recorded the first time something is sealed with it.
        keys.add_new_key()
        assert store.reseal(sha)
        checks = KeyChecks(db)
        checks.confirm(keys.current, keys.keys[keys.current], "test")  # matches: no error
        with pytest.raises(CryptoError, match="is not the key that id named before"):
            checks.confirm(keys.current, os.urandom(32), "test")
    finally:
        db.close()


def test_sealed_blobs_are_named_by_a_keyed_hash_not_the_plaintext_sha256(tmp_path):
    import hashlib
    import hmac

    keys = ring(tmp_path)
    store = ArtifactStore(tmp_path / "store", Cipher(lambda: keys))
    sha, _ = store.put_stream([SECRET], sealed=True)
    (blob,) = [p for p in store.sealed.rglob("*") if p.is_file()]
    name = hmac.new(keys.naming, sha.encode(), hashlib.sha256).hexdigest()
    assert blob.parent.name + blob.name == name != sha
    assert not any(sha[2:] in p.name for p in (tmp_path / "store").rglob("*"))
    # The naming key lives with the keys and outlives rotation: names do not move.
    keys.add_new_key()
    assert store.reseal(sha) and store.path(sha, sealed=True) == blob
    assert Keyring.load(tmp_path / "keys.json").naming == keys.naming
    assert b"".join(store.read_verified(sha, sealed=True)) == SECRET


def test_sealed_blobs_of_an_older_store_get_their_keyed_names_once(tmp_path):
    keys = ring(tmp_path)
    store = ArtifactStore(tmp_path / "store", Cipher(lambda: keys))
    shas = [store.put_stream([SECRET + bytes([i])], sealed=True)[0] for i in range(3)]
    for sha in shas:  # as a store from before keyed names held them
        old = store.sealed / sha[:2] / sha[2:]
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(store.path(sha, sealed=True), old)
    assert store.rename_legacy_sealed(lambda: shas) == 3
    assert [b"".join(store.read_verified(s, True)) for s in shas] == [
        SECRET + bytes([i]) for i in range(3)]
    assert not any((store.sealed / s[:2] / s[2:]).exists() for s in shas)
    assert store.rename_legacy_sealed(lambda: shas) == 0  # done once (a marker says so)


def _up(daemon: LiveDaemon):
    """`llmos up` run to its end: a start that is refused exits at once."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "llmos.cli.main", "up", "--port",
                           str(daemon.port)], env=daemon.env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("source", ["key file", "LLMOS_ENCRYPTION_KEY"])
def test_a_wrong_key_for_a_known_id_refuses_the_start(tmp_path, source):
    import json

    home = tmp_path / "home"
    home.mkdir()
    right = generate_key()
    env = {"LLMOS_ENCRYPTION_KEY": right} if source != "key file" else {}
    daemon = LiveDaemon(home, env=env).start()
    try:
        art = daemon.client.artifacts.put(SECRET, name="notes.txt", sensitive=True)
        names = [p.name for p in (home / "artifacts").rglob("*")]
        assert not any(art["sha256"][2:] in n for n in names)  # the store does not name it
        assert daemon.client.artifacts.read(art["id"]) == SECRET
    finally:
        daemon.stop()

    if source == "key file":
        saved = (home / "keys.json").read_text()
        data = json.loads(saved)
        kid = data["current"]
        data["keys"][kid] = generate_key()  # same id, other bytes
        (home / "keys.json").write_text(json.dumps(data))
    else:
        kid = "env"
        daemon.env["LLMOS_ENCRYPTION_KEY"] = generate_key()
    refused = _up(daemon)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    message = " ".join(refused.stderr.split())
    assert f"llmos will not start: key '{kid}' from" in message
    assert "is not the key that id named before" in message and "Put the right key back" in message

    if source == "key file":
        (home / "keys.json").write_text(saved)
    else:
        daemon.env["LLMOS_ENCRYPTION_KEY"] = right
    daemon.start()  # the right key again: it starts, and the data is there
    try:
        assert daemon.client.artifacts.read(art["id"]) == SECRET
        if source == "key file":
            daemon.client.keys.rotate()
            assert daemon.client.artifacts.read(art["id"]) == SECRET
    finally:
        daemon.stop()
