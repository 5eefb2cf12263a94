"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models, and /v1/classify for classifier deployments. Thin: validate, hand over to the
gateway (``serve/gateway.py``). Errors here are in OpenAI's format."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from llmos.api.gate import current
from llmos.security.rbac import Principal
from llmos.serve import openai as oa
from llmos.serve.gateway import Gateway

router = APIRouter(prefix="/v1", tags=["openai"])
Who = Depends(current)
ERRORS = {s: {"model": oa.OpenAIError} for s in (400, 401, 403, 404, 422, 429, 502, 503)}
STREAM = {"content": {"application/json": {}, "text/event-stream": {}},
          "description": "The completion, or with `stream: true`, server-sent events"}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


@router.post("/chat/completions", responses={**ERRORS, 200: STREAM})
async def chat_completions(body: oa.ChatRequest, request: Request,
                           who: Principal = Who) -> Response:
    """Chat with a deployed causal language model (its chat template applies); ``stream``
    sends server-sent events."""
    return await _gateway(request).serve(who, "chat", body)


@router.post("/completions", responses={**ERRORS, 200: STREAM})
async def completions(body: oa.CompletionRequest, request: Request,
                      who: Principal = Who) -> Response:
    """Continue a plain prompt with a deployed causal language model."""
    return await _gateway(request).serve(who, "completion", body)


@router.post("/embeddings", responses=ERRORS)
async def embeddings(body: oa.EmbeddingRequest, request: Request,
                     who: Principal = Who) -> Response:
    """Embed texts with a deployed encoder (mean-pooled, L2-normalised)."""
    return await _gateway(request).serve(who, "embed", body)


@router.post("/classify", responses=ERRORS)
async def classify(body: oa.ClassifyRequest, request: Request, who: Principal = Who) -> Response:
    """Classify texts with a deployed sequence classifier: label, score and every label's
    probability."""
    return await _gateway(request).serve(who, "classify", body)


@router.get("/models", responses=ERRORS)
def models(request: Request, who: Principal = Who) -> dict:
    """The deployed models you may call (their deployment names)."""
    return _gateway(request).models(who)
