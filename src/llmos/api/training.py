"""/v1/train and /v1/evaluate: start fine-tuning and evaluation jobs (checked before the job
exists); their progress, live metrics and results are the job's (/v1/jobs/{id})."""

from __future__ import annotations

from fastapi import APIRouter, Request

from llmos.api.gate import needs
from llmos.api.schemas import ERRORS, JobOut
from llmos.security.rbac import Principal
from llmos.train.service import EvaluateRequest, FinetuneRequest, TrainService

router = APIRouter(prefix="/v1", tags=["training"])
# Starting a job writes, and the answer is the job: both scopes, checked first.
Starts = needs("write", "read", what="start training and evaluation jobs")


def _train(request: Request) -> TrainService:
    return request.app.state.train


@router.post("/train", response_model=JobOut, status_code=201, responses=ERRORS)
def finetune(body: FinetuneRequest, request: Request, who: Principal = Starts) -> JobOut:
    """Fine-tune a registered model on a dataset version (full or LoRA, as the recipe says);
    the result is registered as a new version of ``output`` with its lineage and metrics."""
    return JobOut.of(_train(request).finetune(who, body), transitions=True)


@router.post("/evaluate", response_model=JobOut, status_code=201, responses=ERRORS)
def evaluate(body: EvaluateRequest, request: Request, who: Principal = Starts) -> JobOut:
    """Evaluate a model version on a dataset split; the metrics are stored on the version."""
    return JobOut.of(_train(request).evaluate(who, body), transitions=True)
