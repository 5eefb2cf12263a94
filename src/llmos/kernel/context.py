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
"""

from __future__ import annotations

import json
import math
import os
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
                 read_roots: Iterable[str] = ()):
        self.job_id = job_id
        self.attempt = attempt
        self.workdir = Path(workdir)
        # The host folders this job may read, set by the kernel from its submitter's
        # rights ("/" for anywhere); programs that open host paths check them.
        self.read_roots = tuple(Path(r) for r in read_roots)
        self._lock = threading.Lock()
        self._events = open(self.workdir / EVENTS_FILE, "a", encoding="utf-8")
        self._yield = threading.Event()
        self.checkpoint = Checkpoints(self.workdir / "checkpoints", self)
        self._api = _Api(api_url, api_token, api_ca)
        self.artifacts = Artifacts(self._api, job_id)

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
    """

    def __init__(self, root: Path, ctx: JobContext, keep: int = 2):
        self.root = root
        self._ctx = ctx
        self.keep = keep

    def save(self, state: dict, files: dict[str, bytes | str | Path] | None = None) -> int:
        """Save a JSON-able ``state`` and optional files (name -> bytes or source path)."""
        self.root.mkdir(parents=True, exist_ok=True)
        latest = self.load()
        step = (latest.step + 1) if latest else 1
        tmp = self.root / f".ckpt-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, content in (files or {}).items():
            if "/" in name or name in ("", ".", "..", "state.json"):
                raise ValueError(f"bad checkpoint file name {name!r}")
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                shutil.copyfile(content, tmp / name)
        (tmp / "state.json").write_text(json.dumps(state))
        _fsync_dir(tmp)
        os.replace(tmp, self.root / f"ckpt-{step}")
        (self.root / "LATEST.tmp").write_text(str(step))
        os.replace(self.root / "LATEST.tmp", self.root / "LATEST")
        for old in sorted(self._steps())[: -self.keep]:
            shutil.rmtree(self.root / f"ckpt-{old}", ignore_errors=True)
        self._ctx._emit({"type": "checkpoint", "step": step})
        return step

    def load(self) -> Checkpoint | None:
        """The newest checkpoint, or None when the job has none yet."""
        try:
            step = int((self.root / "LATEST").read_text())
        except (OSError, ValueError):
            return None
        folder = self.root / f"ckpt-{step}"
        state = json.loads((folder / "state.json").read_text())
        return Checkpoint(step, state, folder)

    def _steps(self) -> list[int]:
        return [int(p.name[5:]) for p in self.root.glob("ckpt-*") if p.name[5:].isdigit()]


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
