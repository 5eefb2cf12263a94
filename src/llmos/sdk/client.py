"""The Python SDK: a thin httpx client over the REST API. The CLI is built on it.

    from llmos.sdk import Client
    llmos = Client()                      # LLMOS_URL, or the local daemon
    job = llmos.jobs.submit("noop")
    llmos.jobs.wait(job["id"])

The token comes from the ``token`` argument, else ``LLMOS_TOKEN``, else the credentials
file that ``llmos login`` writes (see :mod:`llmos.sdk.credentials`).

Every method returns plain JSON-like dicts (what the API returns). Errors raise
:class:`APIError` (the API answered with an error) or :class:`DaemonUnreachable`.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote

import httpx

from llmos.config import get_settings
from llmos.sdk.credentials import find_token
from llmos.sdk.monitor import Monitor
from llmos.sdk.optimize import Optimize
from llmos.sdk.pipeline import Pipelines
from llmos.sdk.security import Audit, Keys, Teams, Tokens, Users
from llmos.sdk.tune import Tune

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class LLMOSClientError(Exception):
    pass


class DaemonUnreachable(LLMOSClientError):
    pass


class APIError(LLMOSClientError):
    def __init__(self, status: int, message: str, type_: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})"


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 verify: str | bool | None = None):
        settings = get_settings()
        self.url = (url or settings.client_url).rstrip("/")
        self.token = token or find_token(self.url)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if verify is None:
            verify = str(settings.ca_bundle.expanduser()) if settings.ca_bundle else True
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify,
                                  timeout=httpx.Timeout(timeout, read=600.0))
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.train = Train(self)
        self.deployments = Deployments(self)
        self.users = Users(self)
        self.teams = Teams(self)
        self.tokens = Tokens(self)
        self.artifacts = Artifacts(self)
        self.datasets = Datasets(self)
        self.keys = Keys(self)
        self.audit = Audit(self)
        self.pipelines = Pipelines(self)
        self.tune = Tune(self)
        self.optimize = Optimize(self)
        self.monitor = Monitor(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise DaemonUnreachable(
                f"cannot reach the llmos daemon at {self.url} ({_why(e)}); "
                "start it with `llmos up` or set LLMOS_URL"
            ) from None
        _check(resp)
        return resp

    @contextmanager
    def stream(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        """A streamed response, its error (if any) already raised as APIError."""
        try:
            with self._http.stream(method, path, **kwargs) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _check(resp)
                yield resp
        except httpx.TransportError as e:
            raise DaemonUnreachable(
                f"lost or cannot reach the llmos daemon at {self.url} ({type(e).__name__})"
            ) from None

    def health(self) -> dict:
        return self.request("GET", "/healthz").json()

    def whoami(self) -> dict:
        """Who this client's token stands for: name, roles per team, scopes."""
        return self.request("GET", "/v1/auth/whoami").json()

    def resources(self) -> dict:
        return self.request("GET", "/v1/resources").json()

    def nodes(self) -> list[dict]:
        return self.request("GET", "/v1/nodes").json()

    def drain(self, node: str, undo: bool = False) -> dict:
        return self.request("POST", f"/v1/nodes/{quote(node, safe='')}/"
                            f"{'undrain' if undo else 'drain'}").json()

    def lineage(self, kind: str, ref: str | int) -> dict:
        """Where a ``deployment``, ``model`` (NAME[:VERSION|@ALIAS]), ``dataset``
        (NAME[:VERSION]) or pipeline ``run`` (its id) came from, as a tree (TEAM/NAME
        works for any NAME)."""
        kinds = {"deployment": "deployments", "model": "models", "dataset": "datasets",
                 "run": "runs"}
        if kind not in kinds:
            raise ValueError(f"kind is one of {', '.join(kinds)}, not {kind!r}")
        path = f"/v1/lineage/{kinds[kind]}/{quote(str(ref), safe='/:@')}"
        return self.request("GET", path).json()


def _why(e: httpx.TransportError) -> str:
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "its TLS certificate is not trusted; set LLMOS_CA_BUNDLE"
    return type(e).__name__


def _check(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    if resp.status_code == 401 and "authorization" not in resp.request.headers:
        raise APIError(401, "this llmos daemon needs an API token: run `llmos login` or set "
                       "LLMOS_TOKEN", "authentication_error")
    try:
        body = resp.json()["error"]
        raise APIError(resp.status_code, body["message"], body.get("type", ""))
    except (ValueError, KeyError, TypeError):
        raise APIError(resp.status_code, resp.text[:300] or resp.reason_phrase) from None


class Jobs:
    def __init__(self, client: Client):
        self._c = client

    def submit(self, program: str, params: dict | None = None, *, name: str | None = None,
               cpu: float | None = None, memory_mb: int | None = None, gpu: int | None = None,
               gpu_memory_mb: int | None = None, gpu_share_mb: int | None = None,
               priority: str = "normal", max_retries: int = 0, timeout_s: float | None = None,
               checkpointable: bool = False, depends_on: Iterable[int] = (),
               team: str | None = None, node_labels: dict[str, str] | None = None,
               group: str | None = None, spread: bool = False,
               anti_affinity: bool = False, multi_node: bool = False) -> dict:
        return self._c.request("POST", "/v1/jobs", json=job_spec(
            program, params, name=name, cpu=cpu, memory_mb=memory_mb, gpu=gpu,
            gpu_memory_mb=gpu_memory_mb, gpu_share_mb=gpu_share_mb, priority=priority,
            max_retries=max_retries, timeout_s=timeout_s, checkpointable=checkpointable,
            depends_on=depends_on, team=team, node_labels=node_labels, group=group,
            spread=spread, anti_affinity=anti_affinity, multi_node=multi_node)).json()

    def submit_many(self, specs: list[dict]) -> list[dict]:
        """Submit specs (see :func:`job_spec`) in one transaction."""
        return self._c.request("POST", "/v1/jobs/batch", json={"jobs": specs}).json()["jobs"]

    def list(self, state: str | list[str] | None = None, owner: str | None = None,
             priority: str | None = None, limit: int = 100, offset: int = 0,
             team: str | None = None) -> dict:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if team:
            params["team"] = team
        if state:
            params["state"] = [state] if isinstance(state, str) else list(state)
        if owner:
            params["owner"] = owner
        if priority:
            params["priority"] = priority
        return self._c.request("GET", "/v1/jobs", params=params).json()

    def get(self, job_id: int) -> dict:
        return self._c.request("GET", f"/v1/jobs/{int(job_id)}").json()

    def cancel(self, job_id: int) -> dict:
        return self._c.request("POST", f"/v1/jobs/{int(job_id)}/cancel").json()

    def metrics(self, job_id: int, name: str | None = None) -> list[dict]:
        params = {"name": name} if name else {}
        return self._c.request("GET", f"/v1/jobs/{int(job_id)}/metrics", params=params).json()["metrics"]

    def logs(self, job_id: int, stream: str | None = None, tail: int | None = None) -> str:
        params: dict[str, Any] = {}
        if stream:
            params["stream"] = stream
        if tail:
            params["tail"] = tail
        return self._c.request("GET", f"/v1/jobs/{int(job_id)}/logs", params=params).text

    def follow(self, job_id: int, stream: str | None = None,
               tail: int | None = None) -> Iterator[tuple[str, str]]:
        """(stream, line) pairs as the job writes them; ends with ("end", state JSON)."""
        params: dict[str, Any] = {"follow": "true"}
        if stream:
            params["stream"] = stream
        if tail:
            params["tail"] = tail
        with self._c.stream("GET", f"/v1/jobs/{int(job_id)}/logs", params=params,
                            timeout=httpx.Timeout(30.0, read=None)) as resp:
            event, data = "message", []
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[6:] if line.startswith("data: ") else line[5:])
                elif line == "" and data:
                    yield event, "\n".join(data)
                    event, data = "message", []

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 0.2) -> dict:
        """Poll until the job ends (or ``timeout`` seconds pass); return it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["state"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout}s")
            time.sleep(poll)


def job_spec(program: str, params: dict | None = None, *, name: str | None = None,
             cpu: float | None = None, memory_mb: int | None = None, gpu: int | None = None,
             gpu_memory_mb: int | None = None, gpu_share_mb: int | None = None,
             priority: str = "normal", max_retries: int = 0,
             timeout_s: float | None = None, checkpointable: bool = False,
             depends_on: Iterable[int] = (), team: str | None = None,
             node_labels: dict[str, str] | None = None, group: str | None = None,
             spread: bool = False, anti_affinity: bool = False,
             multi_node: bool = False) -> dict:
    """The JSON body of a job submission, leaving out what the server defaults."""
    resources = {k: v for k, v in {"cpu": cpu, "memory_mb": memory_mb, "gpu": gpu,
                                   "gpu_memory_mb": gpu_memory_mb,
                                   "gpu_share_mb": gpu_share_mb}.items() if v is not None}
    spec: dict[str, Any] = {"program": program, "params": params or {}, "priority": priority,
                            "max_retries": max_retries, "checkpointable": checkpointable,
                            "depends_on": list(depends_on), "resources": resources}
    for key, value in (("name", name), ("timeout_s", timeout_s), ("team", team),
                       ("node_labels", node_labels or None), ("group", group),
                       ("spread", spread or None), ("anti_affinity", anti_affinity or None),
                       ("multi_node", multi_node or None)):
        if value is not None:
            spec[key] = value
    return spec


class Artifacts:
    def __init__(self, client: Client):
        self._c = client

    def put(self, data: bytes | str | Path, name: str | None = None, kind: str = "file",
            parents: Iterable[int] = (), job_id: int | None = None,
            sensitive: bool = False, team: str | None = None) -> dict:
        """Upload bytes or a file; returns the artifact's metadata. ``sensitive``
        artifacts are encrypted at rest."""
        params: dict[str, Any] = {"kind": kind}
        if team:
            params["team"] = team
        if sensitive:
            params["sensitive"] = "true"
        if parents:
            params["parents"] = ",".join(str(int(p)) for p in parents)
        if job_id:
            params["job_id"] = job_id
        if isinstance(data, bytes):
            params["name"] = name or "data"
            return self._c.request("POST", "/v1/artifacts", params=params, content=data).json()
        path = Path(data)
        params["name"] = name or path.name
        with open(path, "rb") as f:
            return self._c.request("POST", "/v1/artifacts", params=params,
                                   content=iter(lambda: f.read(1 << 20), b"")).json()

    def list(self, kind: str | None = None, job_id: int | None = None, limit: int = 100) -> list[dict]:
        params: dict[str, Any] = {"limit": limit}
        if kind:
            params["kind"] = kind
        if job_id:
            params["job_id"] = job_id
        return self._c.request("GET", "/v1/artifacts", params=params).json()["artifacts"]

    def get(self, artifact_id: int) -> dict:
        return self._c.request("GET", f"/v1/artifacts/{int(artifact_id)}").json()

    def download(self, artifact_id: int, dest: str | Path) -> Path:
        """Write the artifact's bytes to ``dest`` (a file, or a folder to put it in),
        checking its sha256; the file appears only once complete and verified."""
        meta = self.get(artifact_id)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / meta["name"]
        tmp = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()
        with self._c.stream("GET", f"/v1/artifacts/{int(artifact_id)}/content") as resp:
            with open(tmp, "wb") as out:
                for chunk in resp.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != meta["sha256"]:
            tmp.unlink(missing_ok=True)
            raise APIError(500, f"artifact {artifact_id} arrived corrupted (sha256 mismatch)")
        tmp.replace(dest)
        return dest

    def read(self, artifact_id: int) -> bytes:
        resp = self._c.request("GET", f"/v1/artifacts/{int(artifact_id)}/content")
        if hashlib.sha256(resp.content).hexdigest() != resp.headers.get("x-llmos-sha256"):
            raise APIError(500, f"artifact {artifact_id} arrived corrupted (sha256 mismatch)")
        return resp.content


class Datasets:
    def __init__(self, client: Client):
        self._c = client

    def ingest(self, dataset: str, sources: list[str | Path], recipe: dict | str | None = None,
               *, cpu: float = 1, memory_mb: int = 2048, priority: str = "normal",
               sensitive: bool = False, team: str | None = None) -> dict:
        """Start an ingest job (sources are paths on the llmos host); returns the job.
        ``sensitive``: the dataset's shards are encrypted at rest."""
        body = {"dataset": dataset, "sources": [str(s) for s in sources],
                "recipe": recipe or {}, "priority": priority, "sensitive": sensitive,
                "resources": {"cpu": cpu, "memory_mb": memory_mb}}
        if team:
            body["team"] = team
        return self._c.request("POST", "/v1/datasets/ingest", json=body).json()

    def list(self) -> list[dict]:
        return self._c.request("GET", "/v1/datasets").json()["datasets"]

    def get(self, name: str) -> dict:
        return self._c.request("GET", f"/v1/datasets/{quote(name, safe='')}").json()

    def version(self, name: str, version: int | str = "latest") -> dict:
        return self._c.request("GET", f"{_ds(name)}/versions/{version}").json()

    def head(self, name: str, version: int | str = "latest", n: int = 10,
             split: str | None = None) -> list[dict]:
        params: dict[str, Any] = {"n": n}
        if split:
            params["split"] = split
        return self._c.request("GET", f"{_ds(name)}/versions/{version}/head",
                               params=params).json()["rows"]

    def report(self, name: str, version: int | str = "latest") -> dict:
        return self._c.request("GET", f"{_ds(name)}/versions/{version}/report").json()

    def diff(self, name: str, a: int | str, b: int | str, other: str | None = None) -> dict:
        params: dict[str, Any] = {"from": a, "to": b}
        if other:
            params["other"] = other
        return self._c.request("GET", f"{_ds(name)}/diff", params=params).json()


class Models:
    """The model registry (``/v1/registry/models``)."""

    def __init__(self, client: Client):
        self._c = client

    def import_(self, name: str, source: str | Path, *, format: str = "auto",
                dtype: str = "float32", team: str | None = None, cpu: float = 1,
                memory_mb: int = 4096, priority: str = "normal") -> dict:
        """Start importing a Hugging Face folder or a GGUF file (a path on the llmos host)
        as a new version of ``name``; returns the import job."""
        body = {"name": name, "source": str(source), "format": format, "dtype": dtype,
                "priority": priority, "resources": {"cpu": cpu, "memory_mb": memory_mb}}
        if team:
            body["team"] = team
        return self._c.request("POST", "/v1/registry/models/import", json=body).json()

    def list(self) -> list[dict]:
        return self._c.request("GET", "/v1/registry/models").json()["models"]

    def get(self, name: str) -> dict:
        return self._c.request("GET", _model(name)).json()

    def version(self, name: str, ref: int | str = "latest") -> dict:
        """A version by number, 'latest' or alias."""
        return self._c.request("GET", f"{_model(name)}/versions/{ref}").json()

    def card(self, name: str, ref: int | str = "latest") -> str:
        return self._c.request("GET", f"{_model(name)}/versions/{ref}/card").text

    def pull(self, name: str, ref: int | str, dest: str | Path) -> Path:
        """Write a version's files into the new or empty folder ``dest``, each checked
        against its sha256 (``llmos models pull`` adds an ONNX bundle's ``runner.py``)."""
        v = self.version(name, ref)
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise LLMOSClientError(f"{dest} exists and is not an empty folder")
        dest.mkdir(parents=True, exist_ok=True)
        for f in v["files"]:
            target = dest / f["path"]
            if target.resolve().parent != dest.resolve() and \
                    dest.resolve() not in target.resolve().parents:
                raise LLMOSClientError(f"version file {f['path']!r} is outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            self._c.artifacts.download(f["artifact_id"], target)
        return dest

    def set_alias(self, name: str, alias: str, version: int) -> dict:
        return self._c.request("PUT", f"{_model(name)}/aliases/{quote(alias, safe='')}",
                               json={"version": int(version)}).json()

    def remove_alias(self, name: str, alias: str) -> dict:
        return self._c.request("DELETE", f"{_model(name)}/aliases/{quote(alias, safe='')}").json()

    def delete_version(self, name: str, ref: int | str) -> dict:
        return self._c.request("DELETE", f"{_model(name)}/versions/{ref}").json()

    def delete(self, name: str) -> dict:
        return self._c.request("DELETE", _model(name)).json()


class Train:
    """Fine-tuning and evaluation jobs (``/v1/train``, ``/v1/evaluate``)."""

    def __init__(self, client: Client):
        self._c = client

    def finetune(self, recipe: dict | str, model: str, dataset: str, output: str, *,
                 tokenizer: str | None = None, cpu: float = 2, memory_mb: int = 4096,
                 priority: str = "normal", team: str | None = None,
                 validation_split: str | None = "validation",
                 test_split: str | None = "test") -> dict:
        """Start fine-tuning ``model`` (NAME[:VERSION|@ALIAS]) on ``dataset`` (NAME[:VERSION]);
        the result becomes a new version of ``output``. Returns the job."""
        body = {"recipe": recipe, "model": model, "dataset": dataset, "output": output,
                "priority": priority, "resources": {"cpu": cpu, "memory_mb": memory_mb},
                "validation_split": validation_split, "test_split": test_split}
        for key, value in (("tokenizer", tokenizer), ("team", team)):
            if value:
                body[key] = value
        return self._c.request("POST", "/v1/train", json=body).json()

    def evaluate(self, model: str, dataset: str, split: str = "test",
                 fields: dict | None = None, *, cpu: float = 2, memory_mb: int = 4096) -> dict:
        """Start evaluating ``model`` on a dataset split; the metrics land on the version."""
        return self._c.request("POST", "/v1/evaluate", json={
            "model": model, "dataset": dataset, "split": split, "fields": fields or {},
            "resources": {"cpu": cpu, "memory_mb": memory_mb}}).json()


class Deployments:
    """Serving (``/v1/deployments``); call served models with the ``openai`` client."""

    def __init__(self, client: Client):
        self._c = client

    def create(self, model: str, *, name: str | None = None, engine: str | None = None,
               replicas: int | None = None, max_batch: int = 32, max_queue: int = 1024,
               priority: str = "normal",
               pool: str | None = None, cpu: float = 1, memory_mb: int = 3072,
               budget_mb: int | None = None, team: str | None = None,
               min_replicas: int | None = None, max_replicas: int | None = None,
               idle_s: float | None = None,
               node_labels: dict[str, str] | None = None) -> dict:
        """Serve ``model`` (NAME, NAME:VERSION or NAME@ALIAS) as ``name``; with
        ``max_replicas``, autoscaled between ``min_replicas`` and it (0: scale to zero
        after ``idle_s`` without requests)."""
        body = {"model": model, "max_batch": max_batch, "max_queue": max_queue,
                "priority": priority, "cpu": cpu, "memory_mb": memory_mb}
        for key, value in (("name", name), ("engine", engine), ("pool", pool),
                           ("budget_mb", budget_mb), ("team", team), ("replicas", replicas),
                           ("min_replicas", min_replicas), ("max_replicas", max_replicas),
                           ("idle_s", idle_s), ("node_labels", node_labels)):
            if value is not None:
                body[key] = value
        return self._c.request("POST", "/v1/deployments", json=body).json()

    def list(self) -> list[dict]:
        return self._c.request("GET", "/v1/deployments").json()["deployments"]

    def get(self, name: str) -> dict:
        return self._c.request("GET", f"/v1/deployments/{quote(name, safe='')}").json()

    def scale(self, name: str, replicas: int) -> dict:
        return self._c.request("POST", f"/v1/deployments/{quote(name, safe='')}/scale",
                               json={"replicas": int(replicas)}).json()

    def delete(self, name: str) -> dict:
        return self._c.request("DELETE", f"/v1/deployments/{quote(name, safe='')}").json()

    def set_canary(self, name: str, version: int, weight: int,
                   model: str | None = None) -> dict:
        """Send ``weight`` percent of ``name``'s requests to ``version`` of its model."""
        body = {"version": version, "weight": weight}
        if model is not None:
            body["model"] = model
        return self._c.request("POST", f"/v1/deployments/{quote(name, safe='')}/canary",
                               json=body).json()

    def clear_canary(self, name: str) -> dict:
        """Roll back: every request to the deployment's version again."""
        return self._c.request("DELETE",
                               f"/v1/deployments/{quote(name, safe='')}/canary").json()

    def complete_canary(self, name: str) -> dict:
        """The canary's version becomes the deployment's."""
        return self._c.request(
            "POST", f"/v1/deployments/{quote(name, safe='')}/canary/complete").json()


def _model(name: str) -> str:
    return f"/v1/registry/models/{quote(name, safe='')}"


def _ds(name: str) -> str:
    return f"/v1/datasets/{quote(name, safe='')}"


def parse_params(text: str | None) -> dict:
    """Parse a --params JSON object, with a clear error."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--params is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("--params must be a JSON object, like '{\"seconds\": 2}'")
    return value
