"""/v1/optimize: start compression and comparison jobs (checked before any job exists);
their progress, live metrics and results are the jobs' (/v1/jobs/{id}); a compression's
result is a new model version, a comparison's figures are stored on each version."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from llmos.api.gate import needs
from llmos.api.schemas import ERRORS, JobOut
from llmos.optimize.compare import CompareRequest
from llmos.optimize.service import CompressRequest
from llmos.security.rbac import Principal

router = APIRouter(prefix="/v1/optimize", tags=["optimization"])
# Starting a job writes, and the answer is the job: both scopes, checked first.
Starts = needs("write", "read", what="start compression and comparison jobs")


class CompareOut(BaseModel):
    jobs: list[JobOut]


@router.post("/compress", response_model=JobOut, status_code=201, responses=ERRORS)
def compress(body: CompressRequest, request: Request, who: Principal = Starts) -> JobOut:
    """Compress a registered model version as its recipe says (int8 quantization, pruning,
    distillation, ONNX or GGUF export); the result is registered as a new version of
    ``output`` whose lineage names the parent, the method and its settings."""
    return JobOut.of(request.app.state.system.compress.compress(who, body), transitions=True)


@router.post("/compare", response_model=CompareOut, status_code=201, responses=ERRORS)
def compare(body: CompareRequest, request: Request, who: Principal = Starts) -> CompareOut:
    """Measure 2 to 8 versions on the same dataset split, one job each, one after the
    other: size, parameters, latency p50/p99 at batch 1 and 32, throughput, and accuracy
    and F1 (or perplexity); each version's figures are stored on it."""
    jobs = request.app.state.system.compare.compare(who, body)
    return CompareOut(jobs=[JobOut.of(j, transitions=True) for j in jobs])
