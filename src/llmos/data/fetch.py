"""A dataset version's Parquet shards in a job's folder, by split, fetched through the job
context (verified), once per job."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote


def fetch_dataset(ctx, name: str, ref: str | int, dest: Path) -> tuple[dict, dict[str, list[Path]]]:
    """(the version's record, {split: [shard paths]})."""
    version = ctx.request("GET", f"/v1/datasets/{quote(name, safe='')}/versions/{ref}")
    folder = ctx.artifacts.download_folder(
        [(s["artifact_id"], s["name"]) for s in version["shards"]],
        Path(dest) / f"{name}-{version['version']}")
    splits: dict[str, list[Path]] = {}
    for shard in version["shards"]:
        splits.setdefault(shard["split"], []).append(folder / shard["name"])
    return version, splits
