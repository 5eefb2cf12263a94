"""Starting a model import: check the request and the source, then submit the
``models.import`` job (``models/program.py``), which converts or copies the model, stores
its files and registers the version.

The source is a path on the llmos host — a Hugging Face folder or a GGUF file — read under
the same rule as dataset ingest (non-administrators only inside ``LLMOS_INGEST_ROOTS``).
What can be refused without reading weights is refused here, before any job exists: a
path outside the folders the caller may read (the one answer whether it exists or not),
a missing path, pickled weights only, no config, a file that is not GGUF. The job checks
the source against its own read roots again, whatever route started it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from llmos.errors import InvalidRequest
from llmos.kernel.jobs import JobSpec, PriorityClass, ResourceSpec
from llmos.kernel.service import JobService
from llmos.models.loaders import model_loader
from llmos.models.registry import check_model_name
from llmos.schema import RequestBody
from llmos.security import names
from llmos.security.paths import check_tree
from llmos.security.rbac import Principal
from llmos.store.models import Job, Model

class ImportRequest(RequestBody):
    name: str = Field(min_length=1, max_length=100, description="The model to add a version to.")
    source: str = Field(min_length=1, max_length=4096,
                        description="A Hugging Face folder or a GGUF file on the llmos host.")
    format: str = Field(default="auto", min_length=1, max_length=50, description=(
        "auto, or a registered model format: hf (a Hugging Face folder), gguf (a GGUF file)."))
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Weights of a GGUF import are de-quantized to this.")
    team: str | None = Field(default=None, min_length=1, max_length=100)
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu=1, memory_mb=4096))
    priority: PriorityClass = "normal"


def source_format(path: Path, fmt: str) -> str:
    """The model format (``hf``, ``gguf``, ...) for ``path``, after the checks that need
    no weights (for a folder: config, weights that are never pickles, headers, tokenizer)."""
    if not path.exists():
        raise InvalidRequest(f"no such file or folder on the llmos host: {path}")
    loader = model_loader(fmt, path)
    loader.check(path)
    return loader.name


def start_import(who: Principal, req: ImportRequest, jobs: JobService) -> Job:
    check_model_name(req.name)
    team = _team(who, req, jobs)
    # The folders the job is held to as well (``models/program.py``).
    roots = [Path(r) for r in jobs.read_roots(who)]
    try:  # checked before anything looks at it: one refusal whether it exists or not
        path = check_tree(req.source, roots)  # links inside are checked where they lead
        fmt = source_format(path, req.format)
    except (OSError, RuntimeError, ValueError) as e:  # too long, unlistable, '~nobody', NUL
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise InvalidRequest(f"cannot read {req.source[:200]!r} on the llmos host: "
                             f"{why}") from None
    spec = JobSpec(program="models.import", name=f"import {req.name}",
                   params={"source": str(path), "name": req.name, "format": fmt,
                           "dtype": req.dtype},
                   resources=req.resources, priority=req.priority, team=team)
    return jobs.submit(who, spec)


def _team(who: Principal, req: ImportRequest, jobs: JobService) -> str:
    """The model's team: the asked one, else the caller's team that has the name, else the
    caller's (names are per team: another team's model of this name does not matter)."""
    with jobs.db.session() as s:
        team, _, _ = names.for_create(s, who, Model, "model", req.name, asked=req.team)
    return team
