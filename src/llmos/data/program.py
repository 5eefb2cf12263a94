"""The ``data.ingest`` program: runs an ingest (``ingest``) as a kernel job and stores the
result.

It talks to llmos only through its job context: progress and metrics as events, shards
and the report as artifacts, and the new dataset version through ``/v1/datasets``. The
version is registered last, after every shard is safely stored, so a job that fails
leaves no half-made version behind.

The program checks its own inputs, whatever route started it (the dataset service, or a
plain ``POST /v1/jobs``): the sources and the recipe's tokenizer must lie inside the
folders its job context received from the kernel (``ctx.read_roots``: the ingest roots, or
None when an administrator submitted it). A sensitive ingest keeps its documents sealed
in its work folder (``ingest``) and removes the folder on every exit.
"""

from __future__ import annotations

import json
import resource
import shutil

from llmos.data.ingest import Counters, default_workers
from llmos.data.ingest import run as run_ingest
from llmos.data.recipe import parse_recipe
from llmos.security import paths


def ingest(ctx, dataset: str, sources: list[str] | None = None, recipe: dict | None = None,
           workers: int | None = None, sensitive: bool = False,
           request_artifact: int | None = None) -> dict:
    """Ingest ``sources`` with ``recipe`` into a new version of ``dataset``. A sensitive
    ingest started by the dataset service gets them in a sealed artifact
    (``request_artifact``) instead, so no database row names its inputs."""
    if request_artifact is not None:
        request = json.loads(ctx.artifacts.get(request_artifact))
        sources, recipe = request["sources"], request["recipe"]
    if not sources:
        raise ValueError("data.ingest needs sources (files, folders or globs)")
    rec = parse_recipe(recipe or {})
    roots = ctx.read_roots
    tokenize = rec.step("tokenize")
    if tokenize is not None:  # the file the step will open, resolved and checked
        tok = paths.within(tokenize.tokenizer, roots)
        if tok.is_dir():
            tok = paths.within(tok / "tokenizer.json", roots, shown=tokenize.tokenizer)
        rec.steps[rec.steps.index(tokenize)] = tokenize.model_copy(update={"tokenizer": str(tok)})
    n_workers = workers or rec.workers or default_workers()
    work = ctx.workdir / "ingest"
    shutil.rmtree(work, ignore_errors=True)  # a retried attempt starts clean

    def progress(c: Counters) -> None:
        ctx.progress(c.bytes_done, c.bytes_total, unit="bytes",
                     files=f"{c.files_done}/{c.files_total}", documents=c.documents_read)

    ctx.log(f"ingesting {len(sources)} source(s) into dataset {dataset!r} with "
            f"{n_workers} worker(s)")
    try:
        return _ingest(ctx, sources, rec, dataset, n_workers, sensitive, work, progress, roots)
    finally:  # success, failure, or SystemExit from a cancel: no scratch file stays
        shutil.rmtree(work, ignore_errors=True)


def _ingest(ctx, sources, rec, dataset, n_workers, sensitive, work, progress, roots) -> dict:
    result = run_ingest(sources, rec, work, workers=n_workers, progress=progress,
                        read_roots=roots, sealed=sensitive)
    ctx.log(f"{result.stats['documents']} documents kept of {result.stats['input']['documents']}"
            f" read; uploading {len(result.shards)} shard(s)")
    shards = []
    for shard in result.shards:
        body = (shard.path if not sensitive  # sealed on disk: stream the plaintext instead
                else lambda path=shard.path: result.scratch.chunks(path))
        artifact = ctx.artifacts.put(body, name=f"{dataset}-{shard.path.name}",
                                     kind="dataset-shard", sensitive=sensitive)
        shards.append({"artifact_id": artifact, "split": shard.split, "rows": shard.rows,
                       "text_bytes": shard.text_bytes, "sha256": shard.sha256,
                       "name": shard.path.name})
        result.scratch.remove(shard.path)
    report = ctx.artifacts.put(json.dumps(result.report, ensure_ascii=False).encode(),
                               name=f"{dataset}-report.json", kind="dataset-report",
                               sensitive=sensitive)
    lineage = {"inputs": result.inputs, "recipe": rec.to_dict(), "job_id": ctx.job_id,
               "sources": sources, "workers": n_workers}
    version = ctx.request("POST", f"/v1/datasets/{dataset}/versions", json={
        "content_hash": result.content_hash, "shards": shards, "schema": result.schema,
        "stats": result.stats, "lineage": lineage, "report_artifact_id": report,
        "job_id": ctx.job_id})
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ctx.metric("documents_kept", result.stats["documents"])
    ctx.metric("documents_read", result.stats["input"]["documents"])
    ctx.metric("peak_rss_mb_main", main_mb)
    ctx.metric("peak_rss_mb_worker", worker_mb)
    return {"dataset": dataset, "version": version["version"],
            "content_hash": result.content_hash, "documents": result.stats["documents"]}
