"""A model version's files in a job's folder, fetched through its job context (streamed and
verified artifact by artifact), once per job: a resumed attempt finds them in place."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote


def fetch_model(ctx, name: str, ref: str | int, dest: Path) -> tuple[dict, Path]:
    """(the version's record, a Hugging Face folder holding its files) under ``dest``."""
    version = ctx.request("GET", f"/v1/registry/models/{quote(name, safe='')}/versions/{ref}")
    return version, ctx.artifacts.download_folder(
        [(f["artifact_id"], f["path"]) for f in version["files"]],
        Path(dest) / f"{name}-{version['version']}")
