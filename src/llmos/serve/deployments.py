"""Deployments and serving pools: what is served, under which name, by which engine, on
which workers. Every face (API, CLI, SDK) goes through this service.

A deployment names a model version (``NAME``, ``NAME:3`` or ``NAME@production``) and serves
it as ``name`` in the OpenAI API. It runs in a *pool*: one or more serving workers (kernel
service jobs, see ``serve.controller``) that share a memory budget and host every
deployment of the pool, loading models on demand. A pool is created by the first
deployment that names it (default: the deployment's own name) with that deployment's cpu
and memory. Deploying again under the same name, or moving the alias it follows, switches
its version while requests in flight finish on the old one (and ends a canary rollout).

A canary rollout sends a share of a deployment's requests to another version of the same
registry model (:meth:`DeploymentService.set_canary`) until it is completed (that version
becomes the deployment's, pinned to its number) or rolled back; the gateway splits the
traffic and counts how each version answers (``serve.canary``).

A deployment either has a fixed ``replicas`` or autoscales (``max_replicas`` set) between
``min_replicas`` and ``max_replicas`` from its load (``serve.autoscale``), down to zero
after ``idle_s`` without a request when ``min_replicas`` is 0; ``replicas`` is then the
count it starts with. ``node_labels`` keep its workers on nodes with those labels
(zone=edge); the deployments of one pool share workers, so they agree on them.

A deployment belongs to a team: viewers see it and call it (with an ``inference`` token),
developers deploy, maintainers scale and remove. Deployment and pool names are unique
within their team (``security/names.py``): clients write ``team/name`` when a bare name is
in several of their teams, and a pool is known by its team and name together
(:func:`pool_key`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator, model_validator
from sqlalchemy import select

from llmos.config import parse_labels
from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.kernel.jobs import PRIORITY_RANK, PriorityClass
from llmos.models.registry import ModelRegistry, check_model_name, parse_ref
from llmos.schema import INT32_MAX, RequestBody
from llmos.security import names
from llmos.security.rbac import CREATE, MANAGE, READ, SYSTEM, Need, Principal
from llmos.store.db import Database
from llmos.store.models import Deployment, ServingPool, utcnow

log = logging.getLogger("llmos.serve")

# What each kind of model is served as, and by which engines, at which route.
TASKS = {"causal_lm": "generate", "encoder": "embed", "sequence_classification": "classify"}
ROUTES = {"generate": "/v1/chat/completions", "embed": "/v1/embeddings",
          "classify": "/v1/classify"}
ENGINES = {"generate": ("torch", "llamacpp"), "embed": ("encoder", "onnx"),
           "classify": ("encoder", "onnx")}
DEFAULT_ENGINE = {"generate": "torch", "embed": "encoder", "classify": "encoder"}
ONNX_FILE = "model.onnx"  # a version holding it is an ONNX edge bundle: the onnx engine's
RUNTIME_MB = 700  # a worker's own memory (Python, torch, the HTTP server), outside the budget
DEFAULT_IDLE_S = 300.0  # min_replicas 0: idle this long before scaling to zero


class DeployRequest(RequestBody):
    model: str = Field(min_length=1, max_length=200,
                       description="NAME, NAME:VERSION or NAME@ALIAS (an alias is followed); "
                       "TEAM/NAME... for a model of a given team.")
    name: str | None = Field(default=None, min_length=1, max_length=200,
                             description="The name clients use (default: the model's); "
                             "TEAM/NAME deploys in that team.")
    engine: str | None = Field(default=None, min_length=1, max_length=50)
    replicas: int = Field(default=1, ge=1, le=64)
    max_batch: int = Field(default=32, ge=1, le=1024)
    max_queue: int = Field(default=1024, ge=1, le=100_000,
                           description="Requests waiting for a batch slot; more get 429.")
    priority: PriorityClass = "normal"
    pool: str | None = Field(default=None, min_length=1, max_length=200,
                             description="Share workers and their memory with this pool's "
                             "deployments (default: a pool of its own).")
    cpu: float = Field(default=1, gt=0, le=4096, description="Per worker of a new pool.")
    memory_mb: int = Field(default=3072, ge=256, le=INT32_MAX,
                           description="Per worker of a new pool.")
    gpu: int = Field(default=0, ge=0, le=64)
    budget_mb: int | None = Field(default=None, ge=64, le=INT32_MAX,
                                  description="Memory for resident models (default: the "
                                  "worker's memory less its own runtime).")
    team: str | None = Field(default=None, min_length=1, max_length=100)
    min_replicas: int | None = Field(default=None, ge=0, le=64,
                                     description="Autoscaling: fewest workers (0: scale to "
                                     "zero after idle_s without requests).")
    max_replicas: int | None = Field(default=None, ge=1, le=64,
                                     description="Autoscaling: most workers (set it to "
                                     "autoscale; replicas is then the starting count).")
    idle_s: float | None = Field(default=None, gt=0, le=7 * 86400,
                                 description="With min_replicas 0: scale to zero after this "
                                 "many seconds without a request (default 300).")
    node_labels: dict[str, str] = Field(default_factory=dict, max_length=16,
                                        description="Run its workers only on nodes with all "
                                        "these labels (zone=edge).")

    @field_validator("node_labels", mode="before")
    @classmethod
    def _labels(cls, value):
        """A dict, or ``"k=v,k2=v2"``, or a list of ``k=v``."""
        if not isinstance(value, (dict, str, list)):
            raise ValueError("node_labels is an object of key: value labels")
        return parse_labels(value)

    @model_validator(mode="after")
    def _bounds(self) -> DeployRequest:
        """min_replicas <= replicas <= max_replicas (replicas, when not given, starts at
        min_replicas, at least 1)."""
        if self.min_replicas is None and self.max_replicas is None:
            if self.idle_s is not None:
                raise ValueError("idle_s applies to an autoscaled deployment: set "
                                 "max_replicas and min_replicas 0")
            return self
        if self.max_replicas is None:
            raise ValueError("max_replicas: set it to autoscale (min_replicas was given)")
        low = 0 if self.min_replicas is None else self.min_replicas
        if "replicas" not in self.model_fields_set:
            self.replicas = min(max(1, low), self.max_replicas)
        if low > self.max_replicas:
            raise ValueError(f"min_replicas ({low}) must be <= max_replicas "
                             f"({self.max_replicas})")
        if not low <= self.replicas <= self.max_replicas:
            raise ValueError(f"replicas ({self.replicas}) must be between min_replicas "
                             f"({low}) and max_replicas ({self.max_replicas})")
        if self.idle_s is not None and low != 0:
            raise ValueError("idle_s applies only with min_replicas 0 (scale to zero)")
        self.min_replicas = low
        if low == 0 and self.idle_s is None:
            self.idle_s = DEFAULT_IDLE_S
        return self


class ScaleRequest(RequestBody):
    replicas: int = Field(ge=1, le=64)


class CanaryRequest(RequestBody):
    version: int = Field(ge=1, le=INT32_MAX, description="A version number of the registry "
                         "model the deployment serves.")
    weight: int = Field(ge=1, le=99, description="The percent of requests it gets.")
    model: str | None = Field(default=None, min_length=1, max_length=200,
                              description="The registry model (NAME or NAME:VERSION), when "
                              "given: refused unless it is the one the deployment serves.")


Task = Literal["generate", "embed", "classify"]


def pool_key(team: str | None, pool: str) -> str:
    """How the controller, the gateway and the workers' registry know a pool: two teams
    may each have a pool of the same name."""
    return names.qualified(team, pool)


class DeploymentService:
    def __init__(self, db: Database, registry: ModelRegistry, on_change=lambda: None):
        self.db = db
        self.registry = registry
        self.on_change = on_change  # wakes the serving controller
        # Why a worker with these resources could never start in a team (or None): the
        # serving controller, which submits the workers, installs its check here.
        self.never_starts: Callable[[str, float, int, int], str | None] | None = None
        # Told a deployment's id when its canary is set, cleared or completed: the gateway
        # installs its reset of the canary's counts here.
        self.on_canary: Callable[[int], None] = lambda deployment_id: None

    def deploy(self, who: Principal, req: DeployRequest) -> Deployment:
        """Create a deployment, or point an existing one (same name) at a new version."""
        model, ref = parse_ref(req.model)
        version = self.registry.version(who, model, ref)
        task = _task(model, version)
        engine = req.engine or default_engine(version, task)
        _check_engine(model, version, task, engine)
        with self.db.session() as s:
            # The deployment's team: its qualifier or the asked one, else the caller's team
            # that has the name, else the model's (when the caller is in it).
            team, name, existing = names.for_create(
                s, who, Deployment, "deployment", req.name or names.split(model)[1],
                asked=req.team, default=version.model.team)
            check_model_name(name)
            if existing is not None:
                return self._update(s, who, existing, req, ref, version, engine)
            pool = self._pool(s, who, req, name, team)
            _check_labels(s, req.node_labels, pool.name, team, name)
            d = Deployment(name=name, team=team, owner=who.name, model=version.model.name,
                           ref=ref, version_id=version.id, engine=engine, replicas=req.replicas,
                           max_batch=req.max_batch, max_queue=req.max_queue,
                           priority=req.priority, pool=pool.name,
                           min_replicas=req.min_replicas, max_replicas=req.max_replicas,
                           idle_s=req.idle_s, node_labels=req.node_labels or None,
                           created_at=utcnow(), updated_at=utcnow())
            s.add(d)
        self.on_change()
        return self.get(who, names.qualified(team, name))

    def _update(self, s, who, d: Deployment, req: DeployRequest, ref: str, version,
                engine: str) -> Deployment:
        who.check(READ, d.team, f"deployment {d.name}")
        who.check(CREATE, d.team, f"deployment {d.name}")
        if req.pool is not None and names.split(req.pool)[1] != d.pool:
            raise Conflict(f"deployment {d.name} runs in pool {d.pool}; remove it to move it")
        d.model, d.ref, d.version_id, d.engine = version.model.name, ref, version.id, engine
        d.canary_version_id, d.canary_weight = None, 0  # a new version ends a rollout
        d.replicas, d.max_batch, d.priority = req.replicas, req.max_batch, req.priority
        d.max_queue = req.max_queue
        _check_labels(s, req.node_labels, d.pool, d.team, d.name)
        d.min_replicas, d.max_replicas, d.idle_s = req.min_replicas, req.max_replicas, req.idle_s
        d.node_labels = req.node_labels or None  # workers started from now on
        d.updated_at = utcnow()
        s.flush()
        name = names.qualified(d.team, d.name)
        s.commit()
        self.on_canary(d.id)
        self.on_change()
        return self.get(who, name)

    def _pool(self, s, who: Principal, req: DeployRequest, name: str, team: str) -> ServingPool:
        """The deployment's pool: one of its own team (another team's pool of the same name
        is another pool), created when new."""
        asked, pool_name = names.split(req.pool or name)
        if asked is not None and asked != team:
            raise InvalidRequest(f"a deployment of team {team} runs in a pool of team {team}, "
                                 f"not {asked}")
        check_model_name(pool_name)
        pool = s.scalars(select(ServingPool).where(ServingPool.name == pool_name,
                                                   ServingPool.team == team)).first()
        if pool is not None:
            return pool
        budget = req.budget_mb or max(64, req.memory_mb - RUNTIME_MB)
        if budget > req.memory_mb:
            raise InvalidRequest(f"budget_mb ({budget}) cannot exceed memory_mb "
                                 f"({req.memory_mb})")
        never = self.never_starts and self.never_starts(team, req.cpu, req.memory_mb, req.gpu)
        if never:
            raise InvalidRequest(f"deployment {name} could never start a worker: {never}")
        pool = ServingPool(name=pool_name, team=team, owner=who.name, cpu=req.cpu,
                           memory_mb=req.memory_mb, gpu=req.gpu, budget_mb=budget,
                           created_at=utcnow())
        s.add(pool)
        s.flush()
        return pool

    # -- reading ----------------------------------------------------------------------------

    def list(self, who: Principal, need: Need = READ) -> list[Deployment]:
        """The deployments ``who`` may read (or, with ``need=INFER``, call: an
        inference-only token lists the models it can call and nothing else)."""
        q = select(Deployment).order_by(Deployment.name)
        teams = who.readable_teams() if need is READ else None
        if teams is not None:
            q = q.where(Deployment.team.in_(sorted(teams)))
        with self.db.session() as s:
            found = list(s.scalars(q))
        return found if need is READ else [d for d in found if who.can(need, d.team)]

    def get(self, who: Principal, name: str, need: Need = READ) -> Deployment:
        """The deployment named ``name`` (bare, or ``team/name``) in a team ``who`` sees;
        another team's is not found, exactly as a missing one."""
        with self.db.session() as s:
            d = names.find(s, who, Deployment, "deployment", name)
            who.check(need, d.team, f"deployment {name!r}")
            return d

    def pool(self, team: str | None, name: str) -> ServingPool | None:
        with self.db.session() as s:
            return s.scalars(select(ServingPool).where(ServingPool.name == name,
                                                       ServingPool.team == team)).first()

    def pools(self) -> list[ServingPool]:
        with self.db.session() as s:
            return list(s.scalars(select(ServingPool)))

    def all(self) -> list[Deployment]:
        return self.list(SYSTEM)

    # -- changing ----------------------------------------------------------------------------

    def scale(self, who: Principal, name: str, replicas: int) -> Deployment:
        d = self.get(who, name)
        who.check(MANAGE, d.team, f"deployment {name}")
        if d.max_replicas:
            raise Conflict(f"deployment {name} autoscales between {d.min_replicas} and "
                           f"{d.max_replicas} replicas; deploy it again with other bounds")
        with self.db.session() as s:
            row = s.get(Deployment, d.id)
            row.replicas, row.updated_at = replicas, utcnow()
        self.on_change()
        return self.get(who, names.qualified(d.team, d.name))

    # -- canary rollouts ---------------------------------------------------------------------

    def set_canary(self, who: Principal, name: str, version: int, weight: int,
                   model: str | None = None) -> Deployment:
        """Send ``weight`` percent (1 to 99) of ``name``'s requests to version ``version`` of
        the registry model it serves (``model``, when given, must be that model); the rest
        go to its version. Setting it again restarts the counts of both."""
        d = self.get(who, name)
        who.check(MANAGE, d.team, f"deployment {name}")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 99:
            raise InvalidRequest(f"canary weight must be a whole percent from 1 to 99, not "
                                 f"{weight!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidRequest(f"canary version must be a version number, not {version!r}")
        stable = self.registry.version_by_id(d.version_id)
        served = names.qualified(stable.model.team, stable.model.name)
        if model is not None:
            asked, number = _model_and_number(model)
            if number is not None and number != version:
                raise InvalidRequest(f"model {model!r} names version {number}, not {version}")
            if asked not in (stable.model.name, served):
                raise InvalidRequest(f"deployment {d.name} serves model {stable.model.name}; "
                                     f"its canary is a version of that model, not of {asked}")
        canary = self.registry.version(who, served, str(version))
        if canary.id == d.version_id:
            raise InvalidRequest(f"deployment {d.name} already serves {stable.model.name}:"
                                 f"{canary.version}; a canary is another version")
        task = _task(stable.model.name, canary)
        if task != TASKS.get(stable.task):
            raise InvalidRequest(f"{stable.model.name}:{canary.version} is a {canary.task} "
                                 f"model; deployment {d.name} serves {stable.task}")
        _check_engine(stable.model.name, canary, task, d.engine)
        return self._canary(who, d, canary.id, weight)

    def clear_canary(self, who: Principal, name: str) -> Deployment:
        """Roll back: every request goes to the deployment's version again (nothing to do
        when it has no canary)."""
        d = self.get(who, name)
        who.check(MANAGE, d.team, f"deployment {name}")
        if d.canary_version_id is None:
            return d
        return self._canary(who, d, None, 0)

    def complete_canary(self, who: Principal, name: str) -> Deployment:
        """Promote: the canary becomes the deployment's version (pinned to its number; an
        alias it followed no longer moves it), and takes every request."""
        d = self.get(who, name)
        who.check(MANAGE, d.team, f"deployment {name}")
        if d.canary_version_id is None:
            raise Conflict(f"deployment {d.name} has no canary to complete")
        canary = self.registry.version_by_id(d.canary_version_id)
        return self._canary(who, d, None, 0, ref=str(canary.version), version_id=canary.id)

    def _canary(self, who: Principal, d: Deployment, canary_id: int | None, weight: int,
                **changes) -> Deployment:
        with self.db.session() as s:
            row = s.get(Deployment, d.id)
            row.canary_version_id, row.canary_weight = canary_id, weight
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
        self.on_canary(d.id)
        self.on_change()
        return self.get(who, names.qualified(d.team, d.name))

    def delete(self, who: Principal, name: str) -> Deployment:
        """Stop serving ``name``; a pool left with no deployment is removed with its workers."""
        d = self.get(who, name)
        who.check(MANAGE, d.team, f"deployment {name}")
        self.on_canary(d.id)
        with self.db.session() as s:
            s.delete(s.get(Deployment, d.id))
            s.flush()
            left = s.scalars(select(Deployment).where(Deployment.pool == d.pool,
                                                      Deployment.team == d.team)).first()
            if left is None:
                pool = s.scalars(select(ServingPool).where(ServingPool.name == d.pool,
                                                           ServingPool.team == d.team)).first()
                if pool is not None:
                    s.delete(pool)
        self.on_change()
        return d

    def follow_aliases(self) -> list[str]:
        """Re-resolve deployments that follow an alias or 'latest'; returns the names whose
        version changed (a hot update: new requests go to the new version)."""
        changed = []
        for d in self.all():
            if d.ref.isdigit():
                continue
            try:  # the model of the version it serves (names are per team)
                model = self.registry.version_by_id(d.version_id).model
                v = self.registry.version(SYSTEM, names.qualified(model.team, model.name),
                                          d.ref)
            except NotFound:
                continue  # the alias was removed: keep serving what it pointed at
            try:  # an alias moved to a version this engine cannot load: keep the old one
                _check_engine(model.name, v, _task(model.name, v), d.engine)
            except InvalidRequest as e:
                log.warning("deployment %s keeps version %s: %s", d.name, d.version_id, e)
                continue
            if v.id != d.version_id:
                with self.db.session() as s:
                    row = s.get(Deployment, d.id)
                    row.version_id, row.updated_at = v.id, utcnow()
                changed.append(d.name)
        return changed


def _task(model: str, version) -> str:
    """What a version would be served as, if llmos serves it at all."""
    task = TASKS.get(version.task)
    if task is None:
        raise InvalidRequest(f"{model}:{version.version} is a {version.task} model; llmos "
                             f"serves {', '.join(TASKS)} models")
    if not version.info.get("tokenizer_files"):
        raise InvalidRequest(f"{model}:{version.version} has no tokenizer; it cannot be "
                             "served")
    return task


def _has_file(version, predicate: Callable[[str], bool]) -> bool:
    return any(predicate(f["path"]) for f in version.info.get("files", []))


def _is_onnx(version) -> bool:
    return _has_file(version, lambda path: path == ONNX_FILE)


def default_engine(version, task: str) -> str:
    """The engine a deployment of ``version`` gets when it names none: ``onnx`` for an ONNX
    bundle, else the task's default."""
    if task in ("embed", "classify") and _is_onnx(version):
        return "onnx"
    if task == "generate" and _gguf_export(version):
        return "llamacpp"  # its weights are the .gguf file alone
    return DEFAULT_ENGINE[task]


def _check_engine(model: str, version, task: str, engine: str) -> None:
    if engine not in ENGINES[task]:
        raise InvalidRequest(f"engine {engine!r} cannot serve {task}; use "
                             f"{' or '.join(ENGINES[task])}")
    if engine == "onnx" and _is_onnx(version) and not _has_file(
            version, lambda path: path == "manifest.json"):
        raise InvalidRequest(f"{model}:{version.version} holds {ONNX_FILE} but no "
                             "manifest.json: the onnx engine serves bundles made by llmos "
                             "(llmos models compress, method: onnx)")
    if engine == "onnx" and not _is_onnx(version):
        raise InvalidRequest(f"{model}:{version.version} holds no {ONNX_FILE}; the onnx engine "
                             "serves versions exported to ONNX (method: onnx)")
    if engine != "onnx" and _is_onnx(version):
        raise InvalidRequest(f"{model}:{version.version} is an ONNX bundle ({ONNX_FILE}); "
                             "serve it with the onnx engine")
    if engine == "llamacpp" and not _has_file(version, lambda path: path.endswith(".gguf")):
        raise InvalidRequest(f"{model}:{version.version} holds no GGUF file; the llamacpp "
                             "engine serves versions imported from GGUF")
    if engine in ("torch", "encoder") and _gguf_export(version):
        raise InvalidRequest(f"{model}:{version.version} is a GGUF export (its weights are "
                             f"the .gguf file alone); serve it with the llamacpp engine")


def _gguf_export(version) -> bool:
    """A version whose weights are one .gguf file (optimize's GGUF export); a GGUF import
    keeps safetensors beside its file."""
    return (_has_file(version, lambda path: path.endswith(".gguf"))
            and not _has_file(version, lambda path: path.endswith(".safetensors")))


def _model_and_number(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:N`` (``TEAM/`` in front allowed) -> (name, number or None)."""
    name, _, number = text.partition(":")
    if number and not number.isdigit():
        raise InvalidRequest(f"bad model version {text!r}: NAME or NAME:NUMBER")
    return name, int(number) if number else None


def _check_labels(s, labels: dict, pool: str, team: str | None, name: str) -> None:
    """The deployments of a pool share its workers, hence their nodes: the same labels."""
    other = s.scalars(select(Deployment).where(Deployment.pool == pool, Deployment.team == team,
                                               Deployment.name != name)).first()
    if other is not None and (other.node_labels or {}) != (labels or {}):
        theirs = ",".join(f"{k}={v}" for k, v in (other.node_labels or {}).items()) or "none"
        raise InvalidRequest(f"pool {pool} runs on nodes with labels {theirs} (deployment "
                             f"{other.name}); deploy {name} with the same node_labels or in "
                             "another pool")


def rank(priority: str) -> int:
    return PRIORITY_RANK[priority]
