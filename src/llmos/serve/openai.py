"""The OpenAI wire format: request bodies (validated by the gateway before anything is
forwarded), response objects and stream chunks (built by the serving worker), and errors.

Only what llmos serves is accepted: a parameter it would silently ignore (``n`` > 1,
``logprobs``, tools) is refused with a 400 naming it, as a strict OpenAI-compatible server
should. Owns no HTTP and no engine: plain data in, plain dicts out.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmos.serve.engines import Classification, Completion, FinishReason, Usage

DEFAULT_MAX_TOKENS = {"chat": 512, "completion": 16}
# The routes that speak this format (their errors too).
PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                   "/v1/classify", "/v1/models"})


class _Body(BaseModel):
    # Unknown fields are tolerated (clients send vendor extras such as "user"); known ones
    # llmos cannot honour are refused in ``check_supported``.
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200)


class _Sampling(_Body):
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=128)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def limit(self, kind: str) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS[kind]

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "tool_choice", "functions",
               "function_call", "response_format", "logit_bias", "suffix", "best_of")


def check_supported(body: BaseModel) -> str | None:
    """The first request parameter llmos cannot honour, as an error message, or None."""
    extra = body.model_extra or {}
    for name in UNSUPPORTED:
        value = extra.get(name)
        if value not in (None, False, 0, [], {}):
            return f"{name!r} is not supported by this server"
    if getattr(body, "n", 1) != 1:
        return "'n' must be 1: one completion per request"
    if extra.get("echo"):
        return "'echo' is not supported by this server"
    return None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # [{"type": "text", "text": ...}]
            parts = []
            for part in self.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                parts.append(part["text"])
            return "".join(parts)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=4096)

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty")
        return v


class ClassifyRequest(_Body):
    input: str | list[str] = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def _texts(cls, v):
        texts = [v] if isinstance(v, str) else v
        if not texts or len(texts) > 2048:
            raise ValueError("1 to 2048 inputs")
        return texts


class EmbeddingRequest(ClassifyRequest):
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=1_000_000)


# -- responses -------------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def _usage(u: Usage) -> dict:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def _reason(r: FinishReason) -> str:
    return "length" if r == FinishReason.LENGTH else "stop"


def chat_response(rid: str, model: str, c: Completion) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": _reason(c.finish_reason), "logprobs": None}],
            "usage": _usage(c.usage)}


def completion_response(rid: str, model: str, c: Completion) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "text": c.text, "logprobs": None,
                                         "finish_reason": _reason(c.finish_reason)}],
            "usage": _usage(c.usage)}


def chat_chunk(rid: str, model: str, created: int, delta: dict, reason: str | None = None,
               usage: Usage | None = None) -> str:
    return _chunk(rid, model, created, "chat.completion.chunk", {"delta": delta},
                  bool(delta), reason, usage)


def completion_chunk(rid: str, model: str, created: int, text: str, reason: str | None = None,
                     usage: Usage | None = None) -> str:
    return _chunk(rid, model, created, "text_completion", {"text": text}, bool(text), reason,
                  usage)


def _chunk(rid: str, model: str, created: int, kind: str, content: dict, has_content: bool,
           reason: str | None, usage: Usage | None) -> str:
    """One server-sent event of a stream; the usage-only last one has no choices."""
    usage_only = usage is not None and not has_content and reason is None
    chunk = {"id": rid, "object": kind, "created": created, "model": model,
             "choices": [] if usage_only else
             [{"index": 0, **content, "finish_reason": reason, "logprobs": None}]}
    if usage is not None:
        chunk["usage"] = _usage(usage)
    return sse(chunk)


def embedding_response(model: str, vectors: list[list[float]], usage: Usage,
                       encoding: str = "float") -> dict:
    import base64
    import struct

    def encode(v: list[float]):
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}}


def classify_response(model: str, results: list[Classification], usage: Usage) -> dict:
    return {"object": "list", "model": model,
            "data": [{"index": i, "label": r.label, "score": r.score, "scores": r.scores}
                     for i, r in enumerate(results)],
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}}


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


DONE = "data: [DONE]\n\n"


# -- errors ------------------------------------------------------------------------------------


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object (the official client reads ``error.message``)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAIError(BaseModel):
    """The error body of the OpenAI-compatible routes."""

    class Body(BaseModel):
        message: str
        type: str
        param: str | None = None
        code: str | None = None

    error: Body
