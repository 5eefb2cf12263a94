"""What the gateway calls: the engine interface, its plain request/result data, its errors, and
the registry of engines by name.

An engine turns requests into tokens (or embeddings) in-process. It knows nothing about HTTP,
tenants' API tokens, the store or residency; it is handed a model folder, a device and a dtype.
Engines run their work on their own thread: ``submit`` is thread-safe and returns at once, and
each request's output can be consumed synchronously or as an async iterator
(see :mod:`llmos.serve.engines.stream`).

Built-in engines: ``"torch"`` (causal LMs, continuous batching; the default) and ``"encoder"``
(BERT-like embeddings and classification). Others (``"llamacpp"``, ``"vllm"`` on GPU machines)
register the same way: the ``engines`` kind of :mod:`llmos.extensions` (the ``llmos.engines``
entry-point group), or in-process through :func:`register_engine`.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from llmos import extensions
from llmos.errors import Conflict, InvalidRequest, LLMOSError

if TYPE_CHECKING:
    from llmos.serve.engines.record import RecordSnapshot
    from llmos.serve.engines.stream import EncodeHandle, RequestStream


# --------------------------------------------------------------------------- errors

class QueueFull(LLMOSError):
    """The engine's waiting queue is full; the gateway answers 429."""

    status = 429
    type = "rate_limit_error"


class ContextLengthExceeded(InvalidRequest):
    """prompt + max_tokens does not fit the model's context."""


class DuplicateRequest(Conflict):
    """A request with this id is already waiting or running in the engine."""


class EngineClosed(LLMOSError):
    status = 503
    type = "server_error"


class RequestAborted(LLMOSError):
    """An encoder request was aborted before it ran (generation streams end with ``abort``)."""

    status = 499
    type = "aborted"


class ModelLoadError(InvalidRequest):
    """The model folder cannot be served (missing files, unsafe format, wrong architecture)."""


class UnknownEngine(InvalidRequest):
    pass


# --------------------------------------------------------------------------- data

class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # aborted (client gone) or the engine closed
    ERROR = "error"  # the engine failed on this request; see StreamDelta.error


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request, already tokenized (the gateway applies chat templates)."""

    request_id: str
    prompt_token_ids: Sequence[int]
    max_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()  # besides the model's end-of-sequence tokens
    priority: int = 0  # higher is admitted first
    tenant: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_token_ids", tuple(int(t) for t in self.prompt_token_ids))
        object.__setattr__(self, "stop", _as_str_tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not isinstance(self.request_id, str) or not self.request_id:
            raise InvalidRequest("request_id must be a non-empty string")
        if not self.prompt_token_ids:
            raise InvalidRequest(f"request {self.request_id}: the prompt has no tokens")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequest(f"request {self.request_id}: max_tokens must be an integer >= 1, "
                                 f"got {self.max_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InvalidRequest(f"request {self.request_id}: temperature must be >= 0, "
                                 f"got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise InvalidRequest(f"request {self.request_id}: top_p must be in (0, 1], "
                                 f"got {self.top_p!r}")
        if any(not s for s in self.stop):
            raise InvalidRequest(f"request {self.request_id}: stop strings must not be empty")


def _as_str_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StreamDelta:
    """New output of one request. The last delta of a stream carries ``finish_reason`` and
    ``usage`` (and ``error`` when the reason is ``error``); it may carry tokens too."""

    request_id: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str | None = None


@dataclass(frozen=True)
class Completion:
    """A whole stream, gathered."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    usage: Usage
    error: str | None = None


@dataclass(frozen=True)
class Occupancy:
    waiting: int  # requests queued, not yet admitted
    running: int  # requests in the running batch (for encoders: split across steps)


@dataclass(frozen=True)
class EncodeRequest:
    """Texts to embed or classify. ``truncate`` cuts inputs longer than the model's maximum
    sequence length (as sentence-transformers does); otherwise they are refused."""

    request_id: str
    inputs: Sequence[str]
    priority: int = 0
    tenant: str = "default"
    truncate: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", _as_str_tuple(self.inputs))
        if not isinstance(self.request_id, str) or not self.request_id:
            raise InvalidRequest("request_id must be a non-empty string")
        if not self.inputs:
            raise InvalidRequest(f"request {self.request_id}: no inputs")
        if not all(isinstance(s, str) for s in self.inputs):
            raise InvalidRequest(f"request {self.request_id}: every input must be a string")


@dataclass(frozen=True)
class Classification:
    label: str  # the most probable label
    score: float
    scores: dict[str, float]  # every label's probability


@dataclass(frozen=True)
class EncodeResult:
    request_id: str
    usage: Usage
    embeddings: list[list[float]] | None = None  # task "embed": one vector per input
    classifications: list[Classification] | None = None  # task "classify": one per input


# --------------------------------------------------------------------------- interface

class Engine(ABC):
    """What every engine offers: load, abort, close, memory footprint, record of its work."""

    name: ClassVar[str]
    task: str  # "generate", "embed" or "classify"

    @classmethod
    @abstractmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
             **options: Any) -> Engine:
        """Load a Hugging Face model folder (safetensors only, memory-mapped) and start."""

    @abstractmethod
    def abort(self, request_id: str) -> bool:
        """End a waiting or running request with ``abort``; its batch slot frees at the next
        step. False when the engine does not know the id (finished already, or never seen)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the engine thread, end every open request with ``abort``, free the model.
        Idempotent."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the engine holds now on its device: weights, buffers and caches."""

    @abstractmethod
    def occupancy(self) -> Occupancy:
        """How many requests wait and run right now."""

    @abstractmethod
    def record(self) -> RecordSnapshot:
        """A consistent copy of the engine's record (recent steps, counters, time to first
        token per request)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GenerativeEngine(Engine):
    task = "generate"
    max_context: int  # positions the model accepts: prompt + max_tokens must fit

    @abstractmethod
    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request (thread-safe, returns at once). Raises ContextLengthExceeded,
        InvalidRequest, DuplicateRequest, QueueFull or EngineClosed."""

    @abstractmethod
    def chat_prompt(self, messages: list[dict[str, Any]], *,
                    add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``messages`` under the model's chat template (a helper for the gateway)."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of a plain prompt (for /v1/completions), special tokens as the model's
        tokenizer adds them."""

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> Completion:
        """Submit and wait for the whole completion."""
        return self.submit(request).result(timeout)


class EncoderEngine(Engine):
    labels: list[str] | None  # classification labels, in id order; None for embeddings

    @abstractmethod
    def submit(self, request: EncodeRequest) -> EncodeHandle:
        """Queue texts to encode (thread-safe, returns at once)."""

    def encode(self, request: EncodeRequest, timeout: float | None = None) -> EncodeResult:
        return self.submit(request).result(timeout)


# --------------------------------------------------------------------------- registry

# Built-in engines ("torch", "encoder", "llamacpp") register under the "llmos.engines" entry
# points in pyproject.toml, the same registry as third-party engines.
DEFAULT_ENGINE = "torch"


def register_engine(name: str, engine: type[Engine] | str, *, replace: bool = False) -> None:
    """Register an engine class (or a lazy ``"module:Class"`` path) under ``name``."""
    try:
        extensions.engines.register(name, engine, replace=replace)
    except extensions.ExtensionConflict as e:
        raise Conflict(str(e)) from None


def unregister_engine(name: str) -> None:
    extensions.engines.unregister(name)


def available_engines() -> list[str]:
    return extensions.engines.names()


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as ``name`` (in-process registrations, then the
    ``llmos.engines`` entry points, built-ins among them)."""
    try:
        return extensions.engines.load(name)
    except extensions.UnknownExtension as e:
        raise UnknownEngine(str(e)) from None


def load_engine(model_dir: str | Path, *, engine: str = DEFAULT_ENGINE, device: str = "auto",
                dtype: str = "auto", **options: Any) -> Engine:
    """Load ``model_dir`` into the engine registered as ``engine`` and start it."""
    return engine_class(engine).load(model_dir, device=device, dtype=dtype, **options)
