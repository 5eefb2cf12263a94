"""What the daemon's gateway sends a serving worker: one typed envelope, shared by both
sides (the gateway builds and serialises it, the worker parses it; a field renamed on one
side is renamed on the other).

- :class:`ModelRef` names the model a request is for (a deployment's version, engine and
  batch limits: what a worker needs to load it, under its residency key). The gateway sends
  one with every request; the controller sends one alone to preload a model. During a
  canary rollout a deployment serves two versions: a request names the one it goes to, and
  ``current`` names both, so that a worker keeps both loaded.
- :class:`Envelope` is one forwarded request: who asks (priority, tenant), the model, and
  the request itself (chat messages, a prompt, or texts to encode) with its sampling.

:class:`Versions` turns a deployment into its :class:`ModelRef` (version rows are
immutable, so what a version's files and size are is cached). Owns no HTTP.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from llmos.kernel.jobs import PRIORITY_RANK
from llmos.models.registry import ModelRegistry
from llmos.store.models import Deployment


class ModelRef(BaseModel):
    """One deployment's model as a worker loads it."""

    name: str  # the deployment
    model: str  # the registry model it serves
    version_id: int
    version: int  # the registry's number (shown to people)
    task: str  # the registry's task (causal_lm, encoder, sequence_classification)
    # The version's files as (artifact id, path in its folder): a worker is a sandboxed
    # job and fetches them through the API, never from the store's folder.
    files: list[tuple[int, str]]
    engine: str
    max_batch: int
    max_queue: int
    size_bytes: int
    priority_rank: int  # the deployment's class: 0 low, 1 normal, 2 high
    # The keys of every version the deployment routes to now (its version, and a canary's):
    # a worker retires the deployment's other resident versions.
    current: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        """One resident unit of a worker: the same version with other limits is another."""
        return _key(self.version_id, self.engine, self.max_batch, self.max_queue)

    @property
    def served_as(self) -> str:
        """The exact version that answers, as responses name it: ``model:version``."""
        return f"{self.model}:{self.version}"


def _key(version_id: int, engine: str, max_batch: int, max_queue: int) -> str:
    return f"{version_id}:{engine}:{max_batch}:{max_queue}"


class Sampling(BaseModel):
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)


class ChatInput(Sampling):
    kind: Literal["chat"] = "chat"
    messages: list[dict[str, str]]


class CompletionInput(Sampling):
    kind: Literal["completion"] = "completion"
    prompt: str


class EncodeInput(BaseModel):
    kind: Literal["encode"] = "encode"
    input: list[str]
    encoding_format: Literal["float", "base64"] = "float"


class Envelope(BaseModel):
    """One request the gateway forwards to a worker."""

    request_id: str
    priority: int  # the caller's class rank (the engine's admission orders by it)
    tenant: str  # the caller's name (the engine's fair share)
    deployment: ModelRef
    request: ChatInput | CompletionInput | EncodeInput = Field(discriminator="kind")
    # generation only:
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    response_id: str | None = None


class Versions:
    """Deployments as :class:`ModelRef` (a version's files are looked up once, then cached)."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self._cache: dict[int, dict[str, Any]] = {}

    def info(self, version_id: int) -> dict[str, Any]:
        v = self._cache.get(version_id)
        if v is None:
            row = self.registry.version_by_id(version_id)
            v = {"version": row.version, "task": row.task, "size_bytes": row.size_bytes,
                 "model": row.model.name,
                 "files": [(int(f["artifact_id"]), f["path"]) for f in row.files]}
            self._cache[version_id] = v
        return v

    def ref(self, d: Deployment, version_id: int | None = None) -> ModelRef:
        """The deployment's version as a worker loads it, or ``version_id`` (its canary)."""
        vid = d.version_id if version_id is None else version_id
        v = self.info(vid)
        current = [_key(i, d.engine, d.max_batch, d.max_queue)
                   for i in (d.version_id, d.canary_version_id) if i is not None]
        return ModelRef(name=d.name, model=v["model"], version_id=vid, version=v["version"],
                        task=v["task"], files=v["files"], engine=d.engine,
                        max_batch=d.max_batch, max_queue=d.max_queue,
                        size_bytes=v["size_bytes"], priority_rank=PRIORITY_RANK[d.priority],
                        current=current)
