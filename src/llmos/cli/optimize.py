"""`llmos models compress` and `llmos models compare`: compression jobs followed live, and
comparisons of versions printed as one side-by-side table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from llmos.cli import render
from llmos.cli.errors import UsageError
from llmos.sdk.client import Client
from llmos.sdk.optimize import comparison_row

out = Console()
err = Console(stderr=True)

# (title, figure key, how a value is written): the comparison table's columns.
_MB = 1024 * 1024
COLUMNS = (
    ("size\nMB", "size_bytes", lambda v: f"{v / _MB:.1f}"),
    ("params", "parameters", lambda v: _count(v)),
    ("b1 p50\nms", "latency_b1_p50_ms", lambda v: f"{v:.2f}"),
    ("b1 p99\nms", "latency_b1_p99_ms", lambda v: f"{v:.2f}"),
    ("b32 p50\nms", "latency_b32_p50_ms", lambda v: f"{v:.1f}"),
    ("b32 p99\nms", "latency_b32_p99_ms", lambda v: f"{v:.1f}"),
    ("samples\n/s", "throughput_sps", lambda v: f"{v:.1f}"),
)
CLASSIFIER = (("accuracy", "accuracy", lambda v: f"{v:.4f}"),
              ("F1\nmacro", "f1_macro", lambda v: f"{v:.4f}"))
CAUSAL = (("perplexity", "perplexity", lambda v: f"{v:.3f}"),)


def _count(n: float) -> str:
    """22.7M, 420.0k, 950."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def compress(
    recipe: Path = typer.Argument(..., help="The compression recipe (YAML): method quantize, "
                                  "prune, distill, onnx or gguf, and its settings."),
    model: str = typer.Option(..., "--model", "-m", help="Parent: NAME, NAME:VERSION or "
                              "NAME@ALIAS."),
    output: str = typer.Option(..., "--output", "-o", help="Register the result as a new "
                               "version of this model."),
    dataset: Optional[str] = typer.Option(None, "--data", "--dataset", "-d", help="NAME or NAME:VERSION "
                                          "to train on (distill; prune with recover)."),
    team: Optional[str] = typer.Option(None, help="Team of a new output model."),
    cpu: float = typer.Option(2, help="CPU cores for the job."),
    memory: int = typer.Option(4096, "--memory", help="MB for the job."),
    priority: str = typer.Option("normal", help="high, normal or low."),
    detach: bool = typer.Option(False, "--detach", help="Print the job id and return at "
                                "once, without following the job."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compress a model version into a new one (int8 quantization, pruning, distillation,
    ONNX edge bundle or GGUF export) as a job, following its progress; prints the new
    version with its size and parameters beside the parent's."""
    if not recipe.is_file():
        raise UsageError(f"no such recipe file: {recipe}")
    if priority not in ("high", "normal", "low"):
        raise UsageError(f"--priority must be high, normal or low, not {priority!r}")
    with Client() as c:
        job = c.optimize.compress(recipe.read_text(), model, output, dataset=dataset,
                                  team=team, cpu=cpu, memory_mb=memory, priority=priority)
        if detach:
            return _json(job) if as_json else print(job["id"])
        job = render.watch(err if as_json else out, c, job["id"], quiet=as_json)
        result = job["result"] or {}
        tested = {}
        if job["state"] == "SUCCEEDED" and not as_json and result.get("version"):
            v = c.models.version(result["model"], result["version"])
            tested = (v.get("metrics") or {}).get("test") or {}
    if as_json:
        _json(job)
    elif job["state"] == "SUCCEEDED":
        _compressed(result, tested)
    else:
        out.print(f"job [bold]{job['id']}[/] {render.state(job['state'])}: "
                  f"{escape(job['reason'] or '')}")
    if job["state"] != "SUCCEEDED":
        raise typer.Exit(1)


def _compressed(r: dict, tested: dict) -> None:
    out.print(f"registered [bold]{r.get('model')}:{r.get('version')}[/] "
              f"({r.get('method')} of {r.get('parent')})")
    for what, key in (("size", "size_bytes"), ("parameters", "parameters")):
        value, parent = r.get(key), r.get(f"parent_{key}")
        if not isinstance(value, (int, float)):
            continue
        text = render.size_text(value) if key == "size_bytes" else f"{value:,}"
        ratio = f"  ({value / parent:.2f}x the parent's)" if parent else ""
        out.print(f"  {what:<16} {text}{ratio}")
    for key in ("accuracy", "f1_macro", "perplexity"):  # after training: the test split
        if isinstance(tested.get(key), (int, float)):
            out.print(f"  {'test ' + key:<16} {tested[key]:.4f}")


def compare(
    models: list[str] = typer.Argument(..., help="2 to 8 versions: NAME, NAME:VERSION or "
                                       "NAME@ALIAS; the first is the baseline of the ratios."),
    dataset: str = typer.Option(..., "--data", "--dataset", "-d", help="NAME or NAME:VERSION."),
    split: str = typer.Option("test", help="train, validation or test."),
    field: list[str] = typer.Option([], "--field", help="A recipe field, e.g. "
                                    "text_field=body (repeatable)."),
    budget: float = typer.Option(10.0, "--budget", help="Seconds of timing at each batch "
                                 "size (slow models take up to 4x to reach 100 calls)."),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="Measure quality "
                                           "on the split's first rows only."),
    cpu: float = typer.Option(2, help="CPU cores for each measuring job."),
    memory: int = typer.Option(4096, "--memory", help="MB for each measuring job."),
    detach: bool = typer.Option(False, "--detach", help="Print the job ids and return at "
                                "once."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one row per version)."),
) -> None:
    """Measure versions side by side on one dataset split, one job after another on this
    machine: size, parameters, latency p50/p99 at batch 1 and 32, samples/s, and accuracy
    and F1 (or perplexity), each with its ratio to the first version. The figures are
    stored on each version."""
    if len(models) < 2:
        raise UsageError("give at least two versions to compare")
    fields = {}
    for item in field:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--field {item!r}: write NAME=VALUE")
        fields[key] = int(value) if value.isdigit() else value
    with Client() as c:
        jobs = c.optimize.compare(models, dataset, split=split, fields=fields,
                                  budget_s=budget, max_rows=max_rows, cpu=cpu,
                                  memory_mb=memory)
        if detach:
            return _json(jobs) if as_json else print(" ".join(str(j["id"]) for j in jobs))
        ended = [render.watch(err if as_json else out, c, j["id"], quiet=as_json)
                 for j in jobs]
    rows = [comparison_row(j) for j in ended]
    if as_json:
        _json(rows)
    else:
        if any(r["state"] == "SUCCEEDED" for r in rows):
            out.print(comparison_table(rows, f"{dataset} ({split})"))
        for line in not_measured(rows):
            out.print(f"not measured: {line}")
    if any(r["state"] != "SUCCEEDED" for r in rows):
        raise typer.Exit(1)


def comparison_table(rows: list[dict], where: str):
    """One row per version that was measured; under each figure of a later version, its
    ratio to the first version's. Versions not measured are left out (see
    :func:`not_measured`)."""
    causal = any(r.get("task") == "causal_lm" for r in rows)
    columns = COLUMNS + (CAUSAL if causal else CLASSIFIER)
    titles = [title for title, _, _ in columns]
    table = render.table(f"Comparison on {escape(where)}", "version", "format", *titles,
                         keep=tuple(titles))
    base = rows[0] if rows[0]["state"] == "SUCCEEDED" else {}
    for i, row in enumerate(rows):
        if row["state"] != "SUCCEEDED":
            continue
        cells = []
        for _, key, fmt in columns:
            value, ref = row.get(key), base.get(key)
            if not isinstance(value, (int, float)):
                cells.append("-")
                continue
            ratio = (f"\n[dim]{value / ref:.2f}x[/]" if i and isinstance(ref, (int, float))
                     and ref else "")
            cells.append(fmt(value) + ratio)
        table.add_row(escape(row["model"]), escape(str(row.get("format", "-"))), *cells)
    return table


def not_measured(rows: list[dict]) -> list[str]:
    """A line for each version whose job did not succeed, with its reason."""
    return [f"{escape(r['model'])}: job {r['job']} {render.state(r['state'])}: "
            f"{escape(r.get('reason') or '')}" for r in rows if r["state"] != "SUCCEEDED"]
