"""A model version's files in a job's folder, fetched through its job context (streamed and
verified artifact by artifact), once per job: a resumed attempt finds them in place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote


def fetch_model(ctx, name: str, ref: str | int, dest: Path) -> tuple[dict, Path]:
    """(the version's record, a Hugging Face folder holding its files) under ``dest``."""
    version = ctx.request("GET", f"/v1/registry/models/{quote(name, safe='')}/versions/{ref}")
    folder = Path(dest) / f"{name}-{version['version']}"
    if (folder / ".complete").exists():
        return version, folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in version["files"]:
        target = tmp / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        ctx.artifacts.download(f["artifact_id"], target)
    (tmp / ".complete").write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return version, folder
