"""The ``models.import`` program: a kernel job that turns a Hugging Face folder or a GGUF
file into a registered model version.

It copies (or, for GGUF, de-quantizes once) the model into its work folder, stores every
file as an artifact, and registers the version last, through its job context, so a job
that fails registers nothing.

It reads a path on the llmos host, so it checks it (and every link inside a folder)
against the folders its job context received from the kernel (``ctx.read_roots``),
whatever route started the job: a ``POST /v1/jobs`` naming a file outside them fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llmos.models.info import ModelInfo
from llmos.models.loaders import model_loader
from llmos.security import paths


def import_model(ctx, source: str, name: str, format: str, dtype: str = "float32") -> dict:
    src = paths.check_tree(source, ctx.read_roots)
    out = ctx.workdir / "model"
    shutil.rmtree(out, ignore_errors=True)  # a retried attempt starts clean
    ctx.log(f"importing {format} model from {source} as {name!r}")
    loader = model_loader(format, src)
    info, origin = loader.load(src, out, dtype, lambda done, total, stage: ctx.progress(
        done, total, unit="stages", stage=stage))
    lineage = {"source": origin, "job": ctx.job_id}
    version = register(ctx, name, out, info, lineage)
    shutil.rmtree(out, ignore_errors=True)
    return {"model": name, "version": version["version"], "parameters": info.parameters}


def register(ctx, name: str, folder: Path, info: ModelInfo, lineage: dict,
             metrics: dict | None = None, parents: list[int] = ()) -> dict:
    """Store every file of ``folder`` as an artifact, then register the version."""
    files = []
    total = len(info.files)
    for i, f in enumerate(info.files):
        art = ctx.artifacts.put(folder / f.path, name=f"{name}-{f.path.replace('/', '__')}",
                                kind="model-file", parents=parents)
        files.append({"path": f.path, "artifact_id": art})
        ctx.progress(i + 1, total, unit="files stored")
    return ctx.request("POST", f"/v1/registry/models/{name}/versions", json={
        "files": files, "info": info.to_dict(), "lineage": lineage, "metrics": metrics or {},
        "job_id": ctx.job_id})
