"""A dataset version's Parquet shards in a job's folder, by split, fetched through the job
context (verified), once per job."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote


def fetch_dataset(ctx, name: str, ref: str | int, dest: Path) -> tuple[dict, dict[str, list[Path]]]:
    """(the version's record, {split: [shard paths]})."""
    version = ctx.request("GET", f"/v1/datasets/{quote(name, safe='')}/versions/{ref}")
    folder = Path(dest) / f"{name}-{version['version']}"
    if not (folder / ".complete").exists():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for shard in version["shards"]:
            ctx.artifacts.download(shard["artifact_id"], tmp / shard["name"])
        (tmp / ".complete").write_text("")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    splits: dict[str, list[Path]] = {}
    for shard in version["shards"]:
        splits.setdefault(shard["split"], []).append(folder / shard["name"])
    return version, splits
