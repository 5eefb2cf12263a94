"""The job context: the only API a program uses to talk to llmos (its system calls).

    def main(ctx, epochs: int = 3):
        state = ctx.checkpoint.load()
        for epoch in range(state.state["epoch"] if state else 0, epochs):
            ...
            ctx.metric("loss", loss, step=epoch)
            ctx.progress(epoch + 1, epochs)
            if ctx.should_yield():
                ctx.checkpoint.save({"epoch": epoch + 1})
                return

Reports (log lines, progress, metrics) are appended to the job's event file and picked
up by the daemon within a tick; writing them never waits on the daemon or the database.
Artifacts go through the daemon's REST API. This module is imported in every job process,
so it imports nothing heavy at module level.

Checkpoints live in the job's folder; a job whose next attempt may run on another node
(``remote_checkpoints``, set by a remote executor) also stores each one as an artifact
and restores the newest stored one (``checkpoint_artifact``) when its folder lacks it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

EVENTS_FILE = "events.jsonl"


class JobContext:
    def __init__(self, job_id: int, attempt: int, workdir: Path, api_url: str | None = None,
                 api_token: str | None = None, api_ca: str | None = None,
                 read_roots: Iterable[str] = (), remote_checkpoints: bool = False,
                 checkpoint_artifact: int | None = None):
        self.job_id = job_id
        self.attempt = attempt
        self.workdir = Path(workdir)
        # The host folders this job may read, set by the kernel from its submitter's
        # rights ("/" for anywhere); programs that open host paths check them.
        self.read_roots = tuple(Path(r) for r in read_roots)
        self._lock = threading.Lock()
        self._events = open(self.workdir / EVENTS_FILE, "a", encoding="utf-8")
        self._yield = threading.Event()
        self._api = _Api(api_url, api_token, api_ca)
        self.artifacts = Artifacts(self._api, job_id)
        self.checkpoint = Checkpoints(self.workdir / "checkpoints", self,
                                      remote=remote_checkpoints, artifact=checkpoint_artifact)

    # -- reporting -------------------------------------------------------------------

    def log(self, message: str, level: str = "INFO") -> None:
        """A line in the job's log (stderr), with time and level."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sys.stderr.write(f"{stamp} {level.upper()} {message}\n")
        sys.stderr.flush()

    def progress(self, done: float, total: float | None = None, unit: str | None = None,
                 **info: float | int | str) -> None:
        """How far the job is: ``done`` out of ``total`` in ``unit`` (``"bytes"``, ``"steps"``
        ...), with optional named counters shown beside it (``files="3/10", documents=1200``)."""
        self._emit({"type": "progress", "done": float(done),
                    "total": None if total is None else float(total),
                    "unit": unit, "info": info or None})

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        """A named number, optionally at a step (loss, accuracy, samples/s ...)."""
        value = float(value)
        if not name or len(name) > 200:
            raise ValueError("a metric name is 1 to 200 characters")
        self._emit({"type": "metric", "name": name,
                    "value": value if math.isfinite(value) else str(value),
                    "step": None if step is None else int(step)})

    def _emit(self, event: dict) -> None:
        event["t"] = time.time()
        event["attempt"] = self.attempt
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            self._events.write(line)
            self._events.flush()

    def request(self, method: str, path: str, json: Any = None) -> Any:
        """Call the llmos REST API as this job (``path`` such as ``/v1/datasets``) and
        return the decoded JSON; an error response raises RuntimeError with its message."""
        return self._api.send(method, path, json=json).json()

    # -- cooperation with the scheduler ---------------------------------------------

    def should_yield(self) -> bool:
        """True once the kernel asks this job to give its resources back (preemption,
        cancellation, daemon shutdown). A checkpointable job then saves and returns."""
        return self._yield.is_set()

    def _request_yield(self) -> None:
        self._yield.set()

    def close(self) -> None:
        with self._lock:
            self._events.close()


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name


class Checkpoints:
    """Checkpoints kept in the job's folder, so they outlive retries and preemption.

    ``save`` writes into a fresh folder and renames it into place, so a crash mid-save
    leaves the previous checkpoint intact. The newest ``keep`` are kept.

    With ``remote`` (the next attempt may run on another node, whose disk has none of
    them) each checkpoint is also stored as an artifact of kind ``checkpoint``: a tar of
    its folder, ``ckpt-N/<file>``. ``artifact`` is the newest one the daemon knows of;
    ``load`` restores it when this folder does not hold it already (checked strictly: an
    artifact is data another job could have written).
    """

    def __init__(self, root: Path, ctx: JobContext, keep: int = 2, remote: bool = False,
                 artifact: int | None = None):
        self.root = root
        self._ctx = ctx
        self.keep = keep
        self.remote = remote
        self.artifact = artifact
        self._restored = False  # the stored checkpoint is fetched once per context

    def save(self, state: dict, files: dict[str, bytes | str | Path] | None = None) -> int:
        """Save a JSON-able ``state`` and optional files (name -> bytes or source path).

        With remote checkpoints the saved folder is then uploaded; if that fails the
        checkpoint still exists here, but the job could not resume from it on another
        node, so a RuntimeError says so (after the local save, which stays)."""
        self.root.mkdir(parents=True, exist_ok=True)
        latest = self.load()
        step = (latest.step + 1) if latest else 1
        tmp = self.root / f".ckpt-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, content in (files or {}).items():
            if not _safe_file_name(name) or name == "state.json":
                raise ValueError(f"bad checkpoint file name {name!r}")
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                shutil.copyfile(content, tmp / name)
        (tmp / "state.json").write_text(json.dumps(state))
        _fsync_dir(tmp)
        os.replace(tmp, self.root / f"ckpt-{step}")
        _write_atomic(self.root / "LATEST", str(step))
        for old in sorted(self._steps())[: -self.keep]:
            shutil.rmtree(self.root / f"ckpt-{old}", ignore_errors=True)
        if not self.remote:
            self._ctx._emit({"type": "checkpoint", "step": step})
            return step
        try:
            artifact = self._upload(step)
        except Exception as e:
            self._ctx._emit({"type": "checkpoint", "step": step})
            message = (f"checkpoint {step} was saved in the job's folder but could not be "
                       f"stored as an artifact, so another node cannot resume from it: {e}")
            self._ctx.log(message, "ERROR")
            raise RuntimeError(message) from e
        self._ctx._emit({"type": "checkpoint", "step": step, "artifact": artifact})
        return step

    def load(self) -> Checkpoint | None:
        """The newest checkpoint, or None when the job has none yet. With a stored
        checkpoint this folder does not hold, that one is downloaded, checked and
        unpacked first (a RuntimeError when it cannot be: resuming from scratch
        silently would lose the job's progress)."""
        if self.artifact is not None and not self._restored:
            if self._stored() != self.artifact:
                self._restore(self.artifact)
            self._restored = True
        return self._local()

    def _local(self) -> Checkpoint | None:
        try:
            step = int((self.root / "LATEST").read_text())
        except (OSError, ValueError):
            return None
        folder = self.root / f"ckpt-{step}"
        state = json.loads((folder / "state.json").read_text())
        return Checkpoint(step, state, folder)

    def _steps(self) -> list[int]:
        return [int(p.name[5:]) for p in self.root.glob("ckpt-*") if p.name[5:].isdigit()]

    # -- stored as artifacts ---------------------------------------------------------

    def _stored(self) -> int | None:
        """The artifact this folder's checkpoints were last stored as or restored from
        (``STORED``): when it is the daemon's newest, the folder is up to date."""
        try:
            return int(json.loads((self.root / STORED_FILE).read_text())["artifact"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _upload(self, step: int) -> int:
        archive = self.root / f".ckpt-{step}.tar"
        try:
            _pack(self.root / f"ckpt-{step}", archive)
            artifact = self._ctx.artifacts.put(
                archive, name=f"checkpoint-job{self._ctx.job_id}-step{step}",
                kind=CHECKPOINT_KIND)
        finally:
            archive.unlink(missing_ok=True)
        _write_atomic(self.root / STORED_FILE, json.dumps({"step": step, "artifact": artifact}))
        self.artifact = artifact
        return artifact

    def _restore(self, artifact: int) -> None:
        """Download the stored checkpoint ``artifact`` and make it this folder's newest."""
        self.root.mkdir(parents=True, exist_ok=True)
        archive = self.root / ".restore.tar"
        unpacked = self.root / ".restore.tmp"
        shutil.rmtree(unpacked, ignore_errors=True)
        try:
            try:
                self._ctx.artifacts.download(artifact, archive)
            except Exception as e:
                raise RuntimeError(f"could not fetch the job's stored checkpoint (artifact "
                                   f"{artifact}): {e}") from e
            try:
                step = _unpack(archive, unpacked)
            except CheckpointRefused as e:
                raise CheckpointRefused(f"stored checkpoint (artifact {artifact}) refused: "
                                        f"{e}") from None
            # Checkpoints here numbered from this one on belong to another line of
            # attempts (made before the newest stored one): they go.
            for old in self._steps():
                if old >= step:
                    shutil.rmtree(self.root / f"ckpt-{old}")
            os.replace(unpacked, self.root / f"ckpt-{step}")
            _write_atomic(self.root / "LATEST", str(step))
            _write_atomic(self.root / STORED_FILE,
                          json.dumps({"step": step, "artifact": artifact}))
            self._ctx.log(f"restored checkpoint {step} from artifact {artifact}")
        finally:
            for leftover in (archive, archive.with_name(f".{archive.name}.part")):
                leftover.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)


CHECKPOINT_KIND = "checkpoint"
STORED_FILE = "STORED"
MAX_CHECKPOINT_FILES = 10_000
_CKPT_DIR = re.compile(r"^ckpt-([1-9][0-9]{0,17})$")


class CheckpointRefused(RuntimeError):
    """A stored checkpoint that is not what ``save`` writes (a link, a path outside its
    folder, a special file ...): nothing of it is written."""


def _safe_file_name(name: str) -> bool:
    """A checkpoint file is a plain name inside its folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\x00" not in name and len(name.encode()) <= 255)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pack(folder: Path, archive: Path) -> None:
    """An uncompressed tar of ``folder``'s files as ``ckpt-N/<name>``, without owners
    (checkpoints are mostly weights, which do not compress)."""
    import tarfile

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.is_symlink():
                continue
            info = tar.gettarinfo(str(path), arcname=f"{folder.name}/{path.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)


def _unpack(archive: Path, dest: Path) -> int:
    """Unpack a stored checkpoint into the new folder ``dest``; return its step. Every
    member is checked before a byte is written: regular files named ``ckpt-N/<name>``
    (one N), no links, folders, devices or sparse files, no more bytes than the archive
    holds, ``state.json`` a JSON object."""
    import tarfile

    try:
        tar = tarfile.open(archive, "r:")  # uncompressed only: what _pack writes
    except (tarfile.TarError, OSError) as e:
        raise CheckpointRefused(f"not a checkpoint archive ({e})") from None
    with tar:
        try:
            members = _check_members(tar, archive.stat().st_size)
        except tarfile.TarError as e:
            raise CheckpointRefused(f"a damaged archive ({e})") from None
        step = int(_CKPT_DIR.match(members[0].name.split("/")[0]).group(1))
        dest.mkdir()
        for member in members:
            source = tar.extractfile(member)
            # "x": a fresh file in a fresh folder, never through an existing link
            with source, open(dest / member.name.split("/")[1], "xb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
    try:
        state = json.loads((dest / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointRefused(f"its state.json is not JSON ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointRefused("its state.json is not a JSON object")
    return step


def _check_members(tar, archive_size: int) -> list:
    members, names, folders, total = [], set(), set(), 0
    for member in tar:
        if len(members) >= MAX_CHECKPOINT_FILES:
            raise CheckpointRefused(f"more than {MAX_CHECKPOINT_FILES} files")
        if not member.isreg() or member.issparse():
            raise CheckpointRefused(f"{member.name!r} is not a regular file (links, "
                                    "folders and devices are refused)")
        parts = member.name.split("/")
        if len(parts) != 2 or not _CKPT_DIR.match(parts[0]) or not _safe_file_name(parts[1]):
            raise CheckpointRefused(f"{member.name!r} is not a file inside ckpt-N/")
        if folders and parts[0] not in folders:
            raise CheckpointRefused("it must hold exactly one ckpt-N folder")
        if parts[1] in names:
            raise CheckpointRefused(f"{member.name!r} appears twice")
        total += member.size
        if total > archive_size:  # an uncompressed archive holds at least its files' bytes
            raise CheckpointRefused("its files are larger than the archive")
        folders.add(parts[0])
        names.add(parts[1])
        members.append(member)
    if "state.json" not in names:
        raise CheckpointRefused("it has no state.json")
    return members


def _fsync_dir(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


class Artifacts:
    """Read and write artifacts in the store, through the daemon's API."""

    def __init__(self, api: _Api, job_id: int):
        self._api = api
        self._job_id = job_id

    def put(self, data: bytes | str | Path | Callable[[], Iterable[bytes]], name: str,
            kind: str = "file", parents: Iterable[int] = (), sensitive: bool = False) -> int:
        """Store ``data`` (bytes, a file path, or a function that yields the bytes in
        pieces — called again if the upload is retried) as a new artifact; return its id.
        The artifact records this job as its producer; ``sensitive`` ones are encrypted
        at rest."""
        params: dict[str, Any] = {"name": name, "kind": kind, "job_id": self._job_id}
        if sensitive:
            params["sensitive"] = "true"
        if parents:
            params["parents"] = ",".join(str(int(p)) for p in parents)

        def body():
            if isinstance(data, bytes):
                return data
            if callable(data):
                return data()
            f = open(data, "rb")  # closed when exhausted (a retry opens it again)
            return _chunks(f)

        resp = self._api.send("POST", "/v1/artifacts", params=params, content=body)
        return int(resp.json()["id"])

    def get(self, artifact_id: int) -> bytes:
        """The bytes of an artifact (verified against its sha256)."""
        import hashlib

        resp = self._api.send("GET", f"/v1/artifacts/{int(artifact_id)}/content")
        data = resp.content
        expected = resp.headers.get("x-llmos-sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise RuntimeError(f"artifact {artifact_id} arrived corrupted")
        return data

    def download(self, artifact_id: int, dest: str | Path) -> Path:
        """Stream an artifact into the file ``dest``, verifying its sha256; the file appears
        only once complete and verified."""
        import hashlib

        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()
        with self._api.client() as client, client.stream(
                "GET", f"/v1/artifacts/{int(artifact_id)}/content") as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            with open(tmp, "wb") as out:
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            expected = resp.headers.get("x-llmos-sha256")
        if expected and digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"artifact {artifact_id} arrived corrupted")
        os.replace(tmp, dest)
        return dest

    def download_folder(self, files: Iterable[tuple[int, str]], folder: str | Path) -> Path:
        """Artifacts ``(id, relative path)`` laid out in ``folder``, once per job: a resumed
        attempt finds them in place. The folder appears only once every file is verified."""
        folder = Path(folder)
        if (folder / ".complete").exists():
            return folder
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for artifact_id, rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            self.download(artifact_id, tmp / rel)
        (tmp / ".complete").write_text("")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder


def _chunks(f):
    with f:
        while chunk := f.read(1 << 20):
            yield chunk


RETRY_STATUSES = (429, 503)
MAX_TRIES = 6


@dataclass(frozen=True)
class _Api:
    """Where the daemon's API is, and the job's own credentials for it."""

    url: str | None
    token: str | None = None
    ca: str | None = None

    def client(self):
        import httpx

        if not self.url:
            raise RuntimeError("this job has no llmos API to reach")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = httpx.Timeout(30.0, read=600.0)
        if self.url.startswith("unix:"):  # a sandboxed job without a network: the socket
            return httpx.Client(base_url="http://llmos", headers=headers, timeout=timeout,
                                transport=httpx.HTTPTransport(uds=self.url[len("unix:"):]))
        verify = ssl.create_default_context(cafile=self.ca) if self.ca else True
        return httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=timeout)

    def send(self, method: str, path: str, content=None, **kwargs):
        """One request; a 429 or 503 is tried again after its Retry-After (a few times).
        ``content`` may be a function that makes a fresh body for each try. An error
        answer raises RuntimeError with its message."""
        with self.client() as client:
            for attempt in range(MAX_TRIES):
                body = content() if callable(content) else content
                resp = client.request(method, path, content=body, **kwargs)
                if resp.status_code not in RETRY_STATUSES or attempt == MAX_TRIES - 1:
                    break
                time.sleep(min(60.0, float(resp.headers.get("retry-after") or 1)))
            _raise_for(resp)
            return resp


def _raise_for(resp) -> None:
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except Exception:
            message = resp.text[:200]
        raise RuntimeError(f"llmos API: {resp.status_code} {message}")
