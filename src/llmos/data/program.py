"""The ``data.ingest`` program: runs an ingest (``ingest``) as a kernel job and stores the
result.

It talks to llmos only through its job context: progress and metrics as events, shards
and the report as artifacts, and the new dataset version through ``/v1/datasets``. The
version is registered last, after every shard is safely stored, so a job that fails
leaves no half-made version behind.
"""

from __future__ import annotations

import json
import resource
import shutil

from llmos.data.ingest import Counters, default_workers
from llmos.data.ingest import run as run_ingest
from llmos.data.recipe import parse_recipe


def ingest(ctx, sources: list[str], recipe: dict, dataset: str, workers: int | None = None,
           sensitive: bool = False) -> dict:
    rec = parse_recipe(recipe)
    n_workers = workers or rec.workers or default_workers()
    work = ctx.workdir / "ingest"
    shutil.rmtree(work, ignore_errors=True)  # a retried attempt starts clean

    def progress(c: Counters) -> None:
        ctx.progress(c.bytes_done, c.bytes_total, unit="bytes",
                     files=f"{c.files_done}/{c.files_total}", documents=c.documents_read)

    ctx.log(f"ingesting {len(sources)} source(s) into dataset {dataset!r} with "
            f"{n_workers} worker(s)")
    result = run_ingest(sources, rec, work, workers=n_workers, progress=progress)
    ctx.log(f"{result.stats['documents']} documents kept of {result.stats['input']['documents']}"
            f" read; uploading {len(result.shards)} shard(s)")
    shards = []
    for shard in result.shards:
        artifact = ctx.artifacts.put(shard.path, name=f"{dataset}-{shard.path.name}",
                                     kind="dataset-shard", sensitive=sensitive)
        shards.append({"artifact_id": artifact, "split": shard.split, "rows": shard.rows,
                       "text_bytes": shard.text_bytes, "sha256": shard.sha256,
                       "name": shard.path.name})
        shard.path.unlink()
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
    shutil.rmtree(work, ignore_errors=True)
    return {"dataset": dataset, "version": version["version"],
            "content_hash": result.content_hash, "documents": result.stats["documents"]}
