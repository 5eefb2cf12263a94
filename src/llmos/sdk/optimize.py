"""``client.optimize``: compression and comparison jobs (``/v1/optimize``).

    job = client.optimize.compress({"method": "quantize"}, "topics-clf", "topics-clf-int8")
    client.jobs.wait(job["id"])
    jobs = client.optimize.compare(["topics-clf:1", "topics-clf-int8"], "topics:1")
    rows = client.optimize.wait_comparison(jobs)   # one row of figures per version

Every call returns plain dicts (what the API returns); errors raise ``APIError``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmos.sdk.client import Client


class Optimize:
    def __init__(self, client: Client):
        self._c = client

    def compress(self, recipe: dict | str | Path, model: str, output: str, *,
                 dataset: str | None = None, team: str | None = None, cpu: float = 2,
                 memory_mb: int = 4096, priority: str = "normal",
                 train_split: str = "train", validation_split: str | None = "validation",
                 test_split: str | None = "test", timeout_s: float | None = None) -> dict:
        """Start compressing ``model`` (NAME[:VERSION|@ALIAS]) as ``recipe`` (a dict, YAML
        text or a YAML file's path) says; the result becomes a new version of ``output``.
        ``dataset`` (NAME[:VERSION]) is what distillation and recovery train on. Returns
        the job."""
        if isinstance(recipe, Path):
            recipe = recipe.read_text()
        body: dict[str, Any] = {"recipe": recipe, "model": model, "output": output,
                                "priority": priority,
                                "resources": {"cpu": cpu, "memory_mb": memory_mb},
                                "train_split": train_split,
                                "validation_split": validation_split,
                                "test_split": test_split}
        for key, value in (("dataset", dataset), ("team", team), ("timeout_s", timeout_s)):
            if value is not None:
                body[key] = value
        return self._c.request("POST", "/v1/optimize/compress", json=body).json()

    def compare(self, models: list[str], dataset: str, *, split: str = "test",
                fields: dict | None = None, budget_s: float = 10.0,
                max_rows: int | None = None, cpu: float = 2, memory_mb: int = 4096,
                priority: str = "normal") -> list[dict]:
        """Start measuring 2 to 8 versions (the first is the baseline) on one dataset
        split, one job each, one after the other. Returns the jobs, in ``models`` order."""
        body: dict[str, Any] = {"models": list(models), "dataset": dataset, "split": split,
                                "fields": fields or {}, "budget_s": budget_s,
                                "priority": priority,
                                "resources": {"cpu": cpu, "memory_mb": memory_mb}}
        if max_rows is not None:
            body["max_rows"] = max_rows
        return self._c.request("POST", "/v1/optimize/compare", json=body).json()["jobs"]

    def wait_comparison(self, jobs: list[dict], timeout: float | None = None,
                        poll: float = 0.5) -> list[dict]:
        """Wait until every job of a comparison ends; one row per version, in order:
        the job's figures (its result) with ``job``, ``state`` and ``reason``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        rows = []
        for job in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ended = self._c.jobs.wait(job["id"], timeout=left, poll=poll)
            rows.append(comparison_row(ended))
        return rows


def comparison_row(job: dict) -> dict:
    """A measuring job as one row of a comparison: what it measured (when it succeeded),
    the version it measured, and how it ended."""
    result = job.get("result") if job["state"] == "SUCCEEDED" else None
    model = job["params"]["model"]
    row = {"model": f"{model['name']}:{model['version']}", **(result or {})}
    row.update(job=job["id"], state=job["state"], reason=job.get("reason"))
    return row
