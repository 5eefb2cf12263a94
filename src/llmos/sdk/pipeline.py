"""Pipelines in Python: a builder that writes the same dict as the YAML pipeline file, and
the client's ``pipelines`` calls (``/v1/pipelines``).

    from llmos.sdk.pipeline import Pipeline, param
    p = Pipeline("fortunes", params={"lr": param(float, 5e-5)})
    ingest = p.step("ingest", "data.ingest", params={"dataset": "fortunes", "sources": [...]})
    train = p.step("train", "train.finetune",
                   inputs={"dataset": ingest.out("dataset"), "model": "minilm"},
                   params={"recipe": {"learning_rate": p.params.lr}})
    p.trigger(dataset="fortunes-raw")
    run = Client().pipelines.run(p)

``ingest.out("dataset")`` is the text ``${steps.ingest.dataset}`` and ``p.params.lr`` is
``${params.lr}``: references are plain strings, so ``p.to_dict()`` equals what
``yaml.safe_load`` gives for the same pipeline written as YAML. The builder checks only
what it can see (a step or parameter it does not know); the daemon checks the rest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

if TYPE_CHECKING:
    from llmos.sdk.client import Client

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
TYPES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict",
         object: "any"}
_MISSING = object()


class Ref(str):
    """A reference to a parameter, a step's output or a map's element: ``${...}``."""

    @property
    def path(self) -> str:
        """The referenced path, without ``${`` and ``}`` (what ``when:`` expressions use)."""
        return self[2:-1]


def ref(path: str) -> Ref:
    """``ref("steps.train.model")`` is ``"${steps.train.model}"``."""
    return Ref(f"${{{path}}}")


ITEM = ref("item")
"""The element of a ``map`` step's list (``${item}``)."""


def param(type: type | str = object, default: Any = _MISSING, *, required: bool = False,
          description: str | None = None) -> dict:
    """A parameter's declaration: ``param(float, 5e-5)`` is ``{type: float, default: 5e-5}``."""
    kind = type if isinstance(type, str) else TYPES.get(type)
    if kind is None:
        raise ValueError(f"a parameter's type is one of {', '.join(TYPES.values())}, "
                         f"not {type!r}")
    out: dict[str, Any] = {"type": kind}
    if default is not _MISSING:
        out["default"] = default
    if required:
        out["required"] = True
    if description is not None:
        out["description"] = description
    return out


class Params:
    """``p.params.NAME``: a reference to a declared parameter."""

    def __init__(self, names: dict[str, Any]):
        self._names = names

    def __getattr__(self, name: str) -> Ref:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> Ref:
        if name not in self._names:
            known = ", ".join(self._names) or "none"
            raise AttributeError(f"no parameter {name!r} (parameters: {known})")
        return ref(f"params.{name}")


class Step:
    """A step of a :class:`Pipeline`; ``out(NAME)`` refers to one of its outputs."""

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name = name
        self.spec = spec

    def out(self, output: str) -> Ref:
        """``${steps.STEP.OUTPUT}`` (``out("metrics.accuracy")`` reaches inside one)."""
        return ref(f"steps.{self.name}.{output}")

    def __repr__(self) -> str:
        return f"Step({self.name!r}, {self.spec.get('program')!r})"


class Pipeline:
    """A pipeline built in Python; :meth:`to_dict` is the pipeline file's content."""

    def __init__(self, name: str, params: dict[str, Any] | None = None, *,
                 description: str | None = None, overlap: str | None = None):
        self.name = name
        self.description = description
        self.overlap = overlap
        self._params: dict[str, Any] = dict(params or {})
        self.params = Params(self._params)
        self.steps: dict[str, Step] = {}
        self.triggers: list[dict[str, Any]] = []

    def param(self, name: str, type: type | str = object, default: Any = _MISSING,
              **kwargs: Any) -> Ref:
        """Declare one more parameter; returns its reference."""
        self._params[name] = param(type, default, **kwargs)
        return self.params[name]

    def step(self, name: str, program: str, *, inputs: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None, resources: dict[str, Any] | None = None,
             priority: str | None = None, when: str | None = None, map: Any = None,
             cache: bool | None = None, after: list[str | Step] | None = None,
             **more: Any) -> Step:
        """Add a step running ``program``; only what is given is written (the daemon's
        defaults apply to the rest). ``when`` is an expression (a :class:`Ref` stands for
        its path); ``map`` a list, or a reference to one, that ``ITEM`` walks; ``more``:
        any other field of a step (``outputs``, ``max_retries``, ``timeout_s``)."""
        if name in self.steps:
            raise ValueError(f"pipeline {self.name!r} already has a step {name!r}")
        spec: dict[str, Any] = {"program": program}
        if isinstance(when, Ref):
            when = when.path
        for key, value in (("inputs", inputs), ("params", params), ("resources", resources),
                           ("priority", priority), ("when", when), ("map", map),
                           ("cache", cache),
                           ("after", [a.name if isinstance(a, Step) else a
                                      for a in after] if after is not None else None),
                           *more.items()):
            if value is not None:
                spec[key] = value
        self.steps[name] = Step(name, spec)
        return self.steps[name]

    def trigger(self, *, dataset: str | None = None, cron: str | None = None,
                params: dict[str, Any] | None = None) -> None:
        """Start a run on each new version of ``dataset``, or on the ``cron`` schedule."""
        if (dataset is None) == (cron is None):
            raise ValueError("a trigger names exactly one of dataset= or cron=")
        t: dict[str, Any] = {"dataset": dataset} if dataset is not None else {"cron": cron}
        if params:
            t["params"] = params
        self.triggers.append(t)

    def to_dict(self) -> dict[str, Any]:
        """The pipeline file's content (what ``yaml.safe_load`` of it gives)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        if self._params:
            out["params"] = _plain(self._params)
        out["steps"] = {name: _plain(s.spec) for name, s in self.steps.items()}
        if self.triggers:
            out["triggers"] = _plain(self.triggers)
        if self.overlap is not None:
            out["overlap"] = self.overlap
        return out

    def to_yaml(self) -> str:
        """The pipeline file."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    """Plain dicts, lists and strings (a Ref is written as the text it is)."""
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- files ----------------------------------------------------------------------------------


class SpecFileError(ValueError):
    """A pipeline file that cannot be read or is not a YAML mapping."""


def load_file(path: str | Path) -> dict[str, Any]:
    """A pipeline file's content. A step's program written as a relative
    ``file.py:function`` is made absolute from the file's folder (the daemon does not run
    where the file is)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SpecFileError(f"{path} is a folder, not a pipeline file") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{path} is not a text file (UTF-8)") from None
    except OSError as e:
        raise SpecFileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecFileError(f"{path} is not valid YAML: {problem}{where}") from None
    if not isinstance(spec, dict):
        raise SpecFileError(f"{path} must be a YAML mapping with name and steps")
    steps = spec.get("steps")
    if isinstance(steps, dict):
        for step in steps.values():
            if isinstance(step, dict) and isinstance(step.get("program"), str):
                step["program"] = _absolute(step["program"], path.parent)
    return spec


def _absolute(program: str, folder: Path) -> str:
    where, sep, func = program.rpartition(":")
    if sep and where.endswith(".py") and not Path(where).is_absolute():
        return f"{(folder / where).resolve()}:{func}"
    return program


def spec_body(spec: dict | str | Path | Pipeline) -> dict | str:
    """What the API takes as ``spec``: a dict, or YAML text. ``spec`` may be either, a
    :class:`Pipeline`, or the path of a pipeline file (a ``Path``, or a one-line string
    ending in .yaml or .yml)."""
    if isinstance(spec, Pipeline):
        return spec.to_dict()
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec
                                  and spec.strip().endswith((".yaml", ".yml"))):
        return load_file(spec)
    if isinstance(spec, (dict, str)):
        return spec
    raise TypeError(f"a pipeline is a dict, YAML text, a file's path or a Pipeline, "
                    f"not {type(spec).__name__}")


# -- the client's calls ---------------------------------------------------------------------


class Pipelines:
    """``client.pipelines``: validate, run, register (apply) pipelines; list, show,
    cancel, resume and wait for their runs."""

    def __init__(self, client: Client):
        self._c = client

    def validate(self, spec: dict | str | Path | Pipeline, params: dict | None = None,
                 team: str | None = None) -> dict:
        """The plan (every parameter's value, each step and what it needs), nothing run."""
        body: dict[str, Any] = {"spec": spec_body(spec), "params": params or {}}
        if team:
            body["team"] = team
        return self._c.request("POST", "/v1/pipelines/validate", json=body).json()

    def run(self, spec: dict | str | Path | Pipeline, params: dict | None = None,
            no_cache: bool = False, team: str | None = None) -> dict:
        """Start a run (registering the pipeline); returns the run with its steps."""
        body: dict[str, Any] = {"spec": spec_body(spec), "params": params or {},
                                "no_cache": no_cache}
        if team:
            body["team"] = team
        return self._c.request("POST", "/v1/pipelines/runs", json=body).json()

    def apply(self, spec: dict | str | Path | Pipeline, team: str | None = None) -> dict:
        """Register the pipeline and its triggers without running it."""
        body: dict[str, Any] = {"spec": spec_body(spec)}
        if team:
            body["team"] = team
        return self._c.request("POST", "/v1/pipelines", json=body).json()

    def list(self) -> list[dict]:
        return self._c.request("GET", "/v1/pipelines").json()["pipelines"]

    def get(self, name: str) -> dict:
        return self._c.request("GET", _pipeline(name)).json()

    def delete(self, name: str) -> dict:
        return self._c.request("DELETE", _pipeline(name)).json()

    def runs(self, pipeline: str | None = None, state: str | list[str] | None = None,
             limit: int = 100) -> list[dict]:
        """Runs, newest first (without their steps: a count of steps per state)."""
        params: dict[str, Any] = {"limit": limit}
        if pipeline:
            params["pipeline"] = pipeline
        if state:
            params["state"] = [state] if isinstance(state, str) else list(state)
        return self._c.request("GET", "/v1/pipelines/runs", params=params).json()["runs"]

    def get_run(self, run_id: int) -> dict:
        """One run with every step."""
        return self._c.request("GET", f"/v1/pipelines/runs/{int(run_id)}").json()

    run_info = get_run

    def cancel(self, run_id: int) -> dict:
        return self._c.request("POST", f"/v1/pipelines/runs/{int(run_id)}/cancel").json()

    def resume(self, run_id: int) -> dict:
        """Rerun the failed, stopped and cancelled steps and what depends on them."""
        return self._c.request("POST", f"/v1/pipelines/runs/{int(run_id)}/resume").json()

    def wait(self, run_id: int, timeout: float | None = None, poll: float = 0.25) -> dict:
        """Poll until the run ends (or ``timeout`` seconds pass); return it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run["state"] in TERMINAL:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"pipeline run {run_id} still {run['state']} after "
                                   f"{timeout}s")
            time.sleep(poll)


def _pipeline(name: str) -> str:
    return f"/v1/pipelines/{quote(name, safe='')}"
