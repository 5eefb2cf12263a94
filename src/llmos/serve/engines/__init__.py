"""Serving engines: requests in, tokens (or embeddings) out, in-process, on their own thread.

The gateway picks an engine by name (``load_engine(model_dir, engine="torch")``), submits
:class:`GenerationRequest` objects and reads each :class:`RequestStream` synchronously or
with ``async for``. Importing this package imports neither torch nor transformers; the
engines themselves load lazily through the registry.
"""

from llmos.serve.engines.base import (
    DEFAULT_ENGINE,
    Classification,
    Completion,
    ContextLengthExceeded,
    DuplicateRequest,
    EncoderEngine,
    EncodeRequest,
    EncodeResult,
    Engine,
    EngineClosed,
    FinishReason,
    GenerationRequest,
    GenerativeEngine,
    ModelLoadError,
    Occupancy,
    QueueFull,
    RequestAborted,
    StreamDelta,
    UnknownEngine,
    Usage,
    available_engines,
    engine_class,
    load_engine,
    register_engine,
    unregister_engine,
)
from llmos.serve.engines.record import Counters, RecordSnapshot, StepRecord
from llmos.serve.engines.stream import EncodeHandle, RequestStream

__all__ = [
    "DEFAULT_ENGINE", "Classification", "Completion", "ContextLengthExceeded", "Counters",
    "DuplicateRequest", "EncodeHandle", "EncodeRequest", "EncodeResult", "EncoderEngine", "Engine",
    "EngineClosed", "FinishReason", "GenerationRequest", "GenerativeEngine", "ModelLoadError",
    "Occupancy", "QueueFull", "RecordSnapshot", "RequestAborted", "RequestStream", "StepRecord",
    "StreamDelta", "UnknownEngine", "Usage", "available_engines", "engine_class", "load_engine",
    "register_engine", "unregister_engine",
]
