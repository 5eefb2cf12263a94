"""`llmos data`: ingest text into versioned datasets, and look at them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from llmos.cli import render
from llmos.cli.errors import UsageError
from llmos.sdk.client import Client

data_app = typer.Typer(help="Ingest, clean, deduplicate and version text datasets.",
                       no_args_is_help=True)
out = Console()


def _ref(ref: str) -> tuple[str, str]:
    """NAME or NAME:VERSION -> (name, version or 'latest')."""
    name, _, version = ref.partition(":")
    version = version or "latest"
    if not name or not (version == "latest" or version.isdigit()):
        raise UsageError(f"{ref!r}: write NAME or NAME:VERSION (a number)")
    return name, version


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


@data_app.command("ingest")
def ingest(
    sources: list[str] = typer.Argument(..., help="Files, folders or globs (quote globs)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset to add a version to."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe YAML file."),
    cpu: float = typer.Option(1, help="CPU cores: one worker process per core."),
    memory: int = typer.Option(2048, "--memory", help="Memory limit in MB."),
    priority: str = typer.Option("normal", help="high, normal or low."),
    sensitive: bool = typer.Option(False, "--sensitive", help="Encrypt the shards at rest."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Show progress until it ends."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start an ingest job: read SOURCES, run the recipe's steps, store a new version."""
    text = ""
    if recipe is not None:
        try:
            text = recipe.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read the recipe: {e.strerror or e}") from None
    paths = [s if any(ch in s for ch in "*?[") else str(Path(s).resolve()) for s in sources]
    with Client() as c:
        job = c.datasets.ingest(dataset, paths, text, cpu=cpu, memory_mb=memory,
                                priority=priority, sensitive=sensitive)
        if not as_json:
            out.print(f"job [bold]{job['id']}[/] ingesting into dataset [bold]{dataset}[/]")
        if wait:
            job = render.watch(out, c, job["id"], quiet=as_json)
            if job["state"] == "SUCCEEDED" and not as_json:
                version = c.datasets.version(dataset)
                out.print(f"{dataset}:{version['version']}  "
                          f"{version['stats'].get('documents', 0)} documents  "
                          f"content {version['content_hash'][:12]}")
                render.dataset_removed(out, version["stats"])
    if as_json:
        _json(job)
    if wait and job["state"] != "SUCCEEDED":
        out.print(f"job {job['id']} {render.state(job['state'])}: {job.get('reason') or ''}")
        raise typer.Exit(1)


@data_app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Datasets and their versions."""
    with Client() as c:
        datasets = c.datasets.list()
    if as_json:
        return _json(datasets)
    table = Table()
    for col in ("dataset", "versions", "latest", "documents", "content", "created"):
        table.add_column(col)
    for d in datasets:
        v = d["versions"][-1] if d["versions"] else None
        table.add_row(d["name"], str(len(d["versions"])), str(v["version"]) if v else "-",
                      str(v["documents"]) if v else "-", v["content_hash"][:12] if v else "-",
                      render.time_text(d["created_at"]))
    out.print(table)


@data_app.command("show")
def show(ref: str = typer.Argument(..., help="NAME or NAME:VERSION."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """A version: shards, schema, statistics and lineage."""
    name, version = _ref(ref)
    with Client() as c:
        v = c.datasets.version(name, version)
    _json(v) if as_json else render.dataset_version(out, v)


@data_app.command("head")
def head(ref: str = typer.Argument(..., help="NAME or NAME:VERSION."),
         n: int = typer.Option(5, "-n", min=1, max=1000, help="How many rows."),
         split: Optional[str] = typer.Option(None, help="train, validation or test."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The first rows of a version."""
    name, version = _ref(ref)
    if split not in (None, "train", "validation", "test"):
        raise UsageError("--split is train, validation or test")
    with Client() as c:
        rows = c.datasets.head(name, version, n, split)
    if as_json:
        return _json(rows)
    for row in rows:
        text = row["text"] if len(row["text"]) <= 300 else row["text"][:300] + "…"
        extra = "  ".join(f"{k}={row[k]}" for k in ("label", "lang", "tokens") if k in row)
        out.print(f"[dim]{row['split']}  {row['id'][:12]}  {row['source']}  {extra}[/]")
        out.print(text, markup=False, highlight=False)
        out.print()


@data_app.command("stats")
def stats(ref: str = typer.Argument(..., help="NAME or NAME:VERSION."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Statistics of a version: documents, bytes, tokens, labels, removals per step."""
    name, version = _ref(ref)
    with Client() as c:
        v = c.datasets.version(name, version)
    _json(v["stats"]) if as_json else render.dataset_stats(out, v)


@data_app.command("diff")
def diff(a: str = typer.Argument(..., help="NAME:VERSION (from)."),
         b: str = typer.Argument(..., help="NAME:VERSION or VERSION (to)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """How one version differs from another: documents added and removed, statistics."""
    name_a, va = _ref(a)
    name_b, vb = _ref(b if ":" in b or not b.isdigit() else f"{name_a}:{b}")
    with Client() as c:
        d = c.datasets.diff(name_a, va, vb, other=name_b if name_b != name_a else None)
    if as_json:
        return _json(d)
    same = "same content" if d["same_content"] else "different content"
    out.print(f"{d['from']['dataset']}:{d['from']['version']} -> "
              f"{d['to']['dataset']}:{d['to']['version']}  ({same})")
    out.print(f"  documents  +{d['documents_added']}  -{d['documents_removed']}  "
              f"={d['documents_common']}")
    for key, s in d["stats"].items():
        out.print(f"  {key:<11}{s['from']} -> {s['to']}  ({s['change']:+})")
    if d["schema_added"] or d["schema_removed"]:
        out.print(f"  columns  +{d['schema_added']}  -{d['schema_removed']}")
    if d["recipe_changed"]:
        out.print("  the recipe changed")
