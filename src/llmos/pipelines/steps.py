"""Step kinds: what each ``program:`` of a pipeline step means to the engine — its typed
inputs and outputs, how its parameters are checked, how it becomes a kernel job through
the owning service (so a step is checked and submitted exactly as the same verb typed by
hand), how its outputs are read back, and what its cache key covers.

Typed values passed between steps are plain dicts:
- a dataset version ``{"kind": "dataset", "name", "team", "version", "content_hash"}``;
- a model version ``{"kind": "model", "name", "team", "version"}``;
- metrics ``{name: number}``; anything else is a ``value``.

Control steps (``promote``, ``rollout``: ``control.py``) run inside the engine, not as jobs.
"""

from __future__ import annotations

import functools
import hashlib
import stat
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from llmos import __version__
from llmos.data.datasets import IngestRequest
from llmos.errors import LLMOSError
from llmos.kernel import programs
from llmos.kernel.jobs import JobSpec
from llmos.models.imports import ImportRequest, start_import
from llmos.models.registry import parse_ref
from llmos.optimize.service import CompressRequest
from llmos.pipelines.spec import StepSpec
from llmos.security import names
from llmos.security.paths import check_tree
from llmos.security.rbac import Principal
from llmos.store.models import DatasetVersion, Job, ModelVersion
from llmos.train.service import EvaluateRequest, FinetuneRequest

TYPES = ("dataset", "model", "metrics", "value")
STEP_LEVEL = ("resources", "priority", "max_retries", "timeout_s")  # set on the step itself


class StepFailed(Exception):
    """A step cannot go on: its reason (shown on the step)."""


@dataclass
class Call:
    """One step as the engine runs it: resolved inputs and parameters, who runs it."""

    name: str  # "train" or "train[2]"
    spec: StepSpec
    inputs: dict[str, Any]
    params: dict[str, Any]
    who: Principal
    team: str | None
    system: Any  # llmos.system.System
    pipeline: str = ""
    detail: dict = field(default_factory=dict)  # a control step's state between passes


class Kind:
    """The base of every step kind (a plain user program by default)."""

    name = ""
    inputs: dict[str, str] = {}
    required: tuple[str, ...] = ()
    outputs: dict[str, str] = {"result": "value"}
    request: type[BaseModel] | None = None  # the service's request the params fill
    control = False
    cacheable = True

    def outputs_of(self, spec: StepSpec) -> dict[str, str]:
        return self.outputs

    def inputs_of(self, spec: StepSpec) -> dict[str, str]:
        return self.inputs

    def check(self, spec: StepSpec, params: dict, complete: bool) -> None:
        """422-worthy problems with the parameters (``complete``: no reference is left in
        them, so their values can be checked too). Raises ValueError naming the field."""
        if self.request is None:
            return
        fields = set(self.request.model_fields) - set(self.inputs) - set(STEP_LEVEL)
        for key in params:
            if key not in fields:
                raise ValueError(f"params.{key}: unknown parameter of {self.name} (its "
                                 f"parameters: {', '.join(sorted(fields))})")
        if complete:
            self.build(spec, params, {k: "x" for k in self.inputs}, None)

    def build(self, spec: StepSpec, params: dict, inputs: dict, team: str | None):
        """The service's request for this step."""
        body = {**params, **inputs}
        for key in STEP_LEVEL:
            value = getattr(spec, key)
            if value is not None and key in self.request.model_fields:
                body[key] = value
        if "team" in self.request.model_fields and team is not None:
            body.setdefault("team", team)
        try:
            return self.request.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"params.{where}: {err['msg'].removeprefix('Value error, ')}"
                             ) from None

    def code(self, spec: StepSpec) -> str:
        """What the step's code is, for its cache key: llmos's version and the program's
        source file."""
        target = programs.resolve(self.name or spec.program)
        return f"{__version__}:{_source_hash(target)}"

    def fingerprint(self, call: Call) -> dict:
        """What else the cache key covers (the content of files a step reads)."""
        return {}

    def submit(self, call: Call) -> Job:
        raise NotImplementedError

    def collect(self, call: Call, job: Job) -> dict:
        raise NotImplementedError


class ProgramKind(Kind):
    """A user's program (``file.py:function``, ``module:function``) or a registered one:
    its inputs become keyword arguments next to its parameters; its outputs are what it
    returned (``result``) and, for each declared output, that key of what it returned."""

    def outputs_of(self, spec: StepSpec) -> dict[str, str]:
        return {"result": "value", **spec.outputs}

    def inputs_of(self, spec: StepSpec) -> dict[str, str]:
        return {k: "any" for k in spec.inputs}

    def check(self, spec: StepSpec, params: dict, complete: bool) -> None:
        for name, kind in spec.outputs.items():
            if kind not in TYPES:
                raise ValueError(f"outputs.{name}: unknown type {kind!r} (types: "
                                 f"{', '.join(TYPES)})")

    def code(self, spec: StepSpec) -> str:
        return f"{__version__}:{_source_hash(programs.resolve(spec.program))}"

    def job_spec(self, call: Call, after: list[int] = ()) -> JobSpec:
        """The kernel job of this step (the engine submits many at once), waiting in the
        kernel for the jobs ``after``."""
        spec = call.spec
        return JobSpec(program=spec.program, name=f"{call.pipeline} {call.name}"[:200],
                       depends_on=list(after),
                       params={**call.params, **{k: plain(v) for k, v in call.inputs.items()}},
                       priority=spec.priority or "normal", team=call.team,
                       max_retries=spec.max_retries, timeout_s=spec.timeout_s,
                       **({"resources": spec.resources} if spec.resources else {}))

    def submit(self, call: Call) -> Job:
        return call.system.jobs.submit(call.who, self.job_spec(call))

    def collect(self, call: Call, job: Job) -> dict:
        result = job.result
        out = {"result": result}
        for name in call.spec.outputs:
            if not isinstance(result, dict) or name not in result:
                raise StepFailed(f"its program returned no {name!r} (declared in outputs)")
            out[name] = result[name]
        return out


class IngestKind(Kind):
    name = "data.ingest"
    outputs = {"dataset": "dataset"}
    request = IngestRequest

    def fingerprint(self, call: Call) -> dict:
        """The raw files' content: new data means a new run of the step. Only where the
        run may read (checked before anything is looked at)."""
        from llmos.data.readers import expand_sources

        roots = [Path(r) for r in call.system.jobs.read_roots(call.who)]
        try:
            files = expand_sources(list(call.params.get("sources") or []), roots)
        except (OSError, ValueError, RuntimeError) as e:
            raise StepFailed(f"cannot read its sources: {e}") from None
        return {"files": files_fingerprint(files)}

    def submit(self, call: Call) -> Job:
        req = self.build(call.spec, call.params, {}, call.team)
        return call.system.datasets.ingest(call.who, req)

    def collect(self, call: Call, job: Job) -> dict:
        return {"dataset": dataset_of_job(call.system, job)}


class FinetuneKind(Kind):
    name = "train.finetune"
    inputs = {"model": "model", "dataset": "dataset", "tokenizer": "model"}
    required = ("model", "dataset")
    outputs = {"model": "model", "metrics": "metrics"}
    request = FinetuneRequest

    def submit(self, call: Call) -> Job:
        req = self.build(call.spec, call.params, refs_for(call.inputs, call.team), call.team)
        return call.system.train.finetune(call.who, req)

    def collect(self, call: Call, job: Job) -> dict:
        model, metrics = model_of_job(call.system, job)
        return {"model": model, "metrics": _numbers(metrics.get("test") or {})}


class EvaluateKind(Kind):
    name = "train.evaluate"
    inputs = {"model": "model", "dataset": "dataset"}
    required = ("model", "dataset")
    outputs = {"metrics": "metrics"}
    request = EvaluateRequest

    def submit(self, call: Call) -> Job:
        req = self.build(call.spec, call.params, refs_for(call.inputs, call.team), None)
        return call.system.train.evaluate(call.who, req)

    def collect(self, call: Call, job: Job) -> dict:
        return {"metrics": _numbers(job.result or {})}


class CompressKind(Kind):
    name = "optimize.compress"
    inputs = {"model": "model", "dataset": "dataset"}
    required = ("model",)
    outputs = {"model": "model", "metrics": "metrics"}
    request = CompressRequest

    def submit(self, call: Call) -> Job:
        req = self.build(call.spec, call.params, refs_for(call.inputs, call.team), call.team)
        return call.system.compress.compress(call.who, req)

    def collect(self, call: Call, job: Job) -> dict:
        model, metrics = model_of_job(call.system, job)
        return {"model": model, "metrics": _numbers(metrics.get("test") or {})}


class ImportKind(Kind):
    name = "models.import"
    outputs = {"model": "model"}
    request = ImportRequest

    def fingerprint(self, call: Call) -> dict:
        roots = [Path(r) for r in call.system.jobs.read_roots(call.who)]
        try:  # only where the run may read, links checked where they lead
            source = check_tree(str(call.params.get("source", "")), roots)
            files = sorted(p for p in source.rglob("*")) if source.is_dir() else [source]
        except (OSError, ValueError, RuntimeError) as e:
            raise StepFailed(f"cannot read its source: {e}") from None
        return {"files": files_fingerprint(files)}

    def submit(self, call: Call) -> Job:
        req = self.build(call.spec, call.params, {}, call.team)
        return start_import(call.who, req, call.system.jobs)

    def collect(self, call: Call, job: Job) -> dict:
        return {"model": model_of_job(call.system, job)[0]}


BUILTIN: dict[str, Kind] = {k.name: k for k in (IngestKind(), FinetuneKind(), EvaluateKind(),
                                                 ImportKind(), CompressKind())}


def kind_of(program: str) -> Kind:
    from llmos.pipelines.control import CONTROL

    program = program.strip()
    return CONTROL.get(program) or BUILTIN.get(program) or ProgramKind()


# -- typed values --------------------------------------------------------------------------


def dataset_of_job(system, job: Job) -> dict:
    with system.db.session() as s:
        v = s.scalars(select(DatasetVersion).where(DatasetVersion.job_id == job.id)).first()
        if v is None:
            raise StepFailed(f"job {job.id} registered no dataset version")
        return {"kind": "dataset", "name": v.dataset.name, "team": v.dataset.team,
                "version": v.version, "content_hash": v.content_hash}


def model_of_job(system, job: Job) -> tuple[dict, dict]:
    with system.db.session() as s:
        v = s.scalars(select(ModelVersion).where(ModelVersion.job_id == job.id)).first()
        if v is None:
            raise StepFailed(f"job {job.id} registered no model version")
        return ({"kind": "model", "name": v.model.name, "team": v.model.team,
                 "version": v.version}, dict(v.metrics or {}))


def ref_text(value: Any, team: str | None) -> Any:
    """How a service request names a typed value (``NAME:V``, ``team/NAME:V`` for another
    team's); a literal reference (``minilm@champion``) stays as written."""
    if isinstance(value, dict) and value.get("kind") in ("dataset", "model"):
        name, version, owner = value.get("name"), value.get("version"), value.get("team")
        if not (isinstance(name, str) and isinstance(version, int)
                and isinstance(owner, (str, type(None)))):
            raise StepFailed(f"not a {value['kind']} version: {str(value)[:200]}")
        return f"{names.for_job(team, owner, name)}:{version}"
    return value


def refs_for(inputs: dict, team: str | None) -> dict:
    return {k: ref_text(v, team) for k, v in inputs.items()}


def plain(value: Any) -> Any:
    """What a user program receives for a typed value: name, team and version."""
    if isinstance(value, dict) and value.get("kind") in ("dataset", "model"):
        return {k: value[k] for k in ("name", "team", "version") if k in value}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def resolve_model(system, who: Principal, value: Any, team: str | None) -> ModelVersion:
    """The model version a typed value or a literal reference names."""
    text = ref_text(value, team)
    if not isinstance(text, str):
        raise StepFailed(f"not a model: {value!r}")
    name, ref = parse_ref(text)
    return system.registry.version(who, name, ref)


def resolve_dataset(system, who: Principal, value: Any, team: str | None) -> DatasetVersion:
    text = ref_text(value, team)
    if not isinstance(text, str):
        raise StepFailed(f"not a dataset: {value!r}")
    name, _, ref = text.partition(":")
    return system.datasets.version(who, name, ref or "latest")


def content_of(system, who: Principal, kind: str, value: Any, team: str | None) -> Any:
    """What a step's input *is*, for its cache key: a dataset's content hash, a model
    version's file hashes; other values as they are."""
    try:
        if kind == "dataset" or isinstance(value, dict) and value.get("kind") == "dataset":
            return {"dataset": resolve_dataset(system, who, value, team).content_hash}
        if kind == "model" or isinstance(value, dict) and value.get("kind") == "model":
            v = resolve_model(system, who, value, team)
            return {"model": sorted(f["sha256"] for f in v.files)}
    except LLMOSError as e:  # gone, or not this run's to read
        raise StepFailed(str(e)) from None
    if isinstance(value, list):
        return [content_of(system, who, "value", v, team) for v in value]
    return value


HASH_LIMIT = 4 << 30  # bytes of raw files hashed per step; past that: size and mtime


def files_fingerprint(files: list[Path]) -> list:
    """Each regular file's sha256 (its size and modification time once ``HASH_LIMIT``
    bytes were hashed); anything else (a device, a fifo) is refused, never read."""
    out, hashed = [], 0
    for f in files:
        try:
            st = f.stat()
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISDIR(st.st_mode):
                    continue
                raise StepFailed(f"{f} is not a regular file")
            if hashed + st.st_size <= HASH_LIMIT:
                out.append([str(f), _file_hash(f)])
                hashed += st.st_size
            else:
                out.append([str(f), st.st_size, st.st_mtime_ns])
        except OSError as e:
            raise StepFailed(f"cannot read {f}: {e.strerror or e}") from None
    return out


def _numbers(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _source_hash_at(target: str, stamp: tuple) -> str:
    return _source_hash_now(target)


def _source_hash(target: str) -> str:
    """The sha256 of the file defining ``module:function`` or ``file.py:function`` (read
    again only when the file changed)."""
    return _source_hash_at(target, _stamp(target))


def _stamp(target: str) -> tuple:
    where = target.rpartition(":")[0]
    try:
        if where.endswith(".py"):
            st = Path(where).stat()
        else:
            found = programs.find_spec(where)  # never imports the package
            st = Path(found.origin).stat() if found and found.origin else None
    except (OSError, ImportError, ValueError):
        st = None
    return (st.st_mtime_ns, st.st_size, st.st_ino) if st else ()


def _source_hash_now(target: str) -> str:
    where = target.rpartition(":")[0]
    try:
        if where.endswith(".py"):
            return _file_hash(Path(where))
        found = programs.find_spec(where)  # never imports the package
        if found is not None and found.origin and Path(found.origin).is_file():
            return _file_hash(Path(found.origin))
    except (OSError, ImportError, ValueError):
        pass
    return hashlib.sha256(target.encode()).hexdigest()


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

