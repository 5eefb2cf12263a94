"""`llmos data`: ingest text into versioned datasets, and look at them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
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


def _with_local_paths(text: str) -> str | dict:
    """The recipe with its tokenizer path made absolute from the folder the command runs
    in (as the sources are); the job would otherwise look for it in its own folder. Text
    that is not a recipe goes to the daemon unchanged, which says what is wrong with it."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    steps = doc.get("steps") if isinstance(doc, dict) else None
    changed = False
    for step in steps if isinstance(steps, list) else ():
        params = step.get("tokenize") if isinstance(step, dict) else None
        path = params.get("tokenizer") if isinstance(params, dict) else None
        if isinstance(path, str) and not Path(path).is_absolute():  # relative, or '~'
            try:
                params["tokenizer"] = str(Path(path).expanduser().resolve())
            except (OSError, RuntimeError):  # '~nosuchuser': the daemon says what is wrong
                continue
            changed = True
    return doc if changed else text


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
    text: str | dict = ""
    if recipe is not None:
        try:
            text = _with_local_paths(recipe.read_text(encoding="utf-8"))
        except OSError as e:
            raise UsageError(f"cannot read the recipe: {e.strerror or e}") from None
    paths = [str(Path(s).expanduser().absolute()) if any(ch in s for ch in "*?[") else
             str(Path(s).resolve()) for s in sources]  # a relative glob: from here, too
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
def show(ref: str = typer.Argument(..., help="NAME or NAME:VERSION (NAME may be TEAM/NAME)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """A version: shards, schema, statistics and lineage."""
    name, version = _ref(ref)
    with Client() as c:
        v = c.datasets.version(name, version)
    _json(v) if as_json else render.dataset_version(out, v)


@data_app.command("head")
def head(ref: str = typer.Argument(..., help="NAME or NAME:VERSION (NAME may be TEAM/NAME)."),
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
def stats(ref: str = typer.Argument(..., help="NAME or NAME:VERSION (NAME may be TEAM/NAME)."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Statistics of a version: documents, bytes, tokens, and counts per label and per
    language in each split; what each step removed or changed."""
    name, version = _ref(ref)
    with Client() as c:
        v = c.datasets.version(name, version)
    if as_json:
        return _json(v["stats"])
    stats = v["stats"]
    splits = render.table(f"{v['dataset']}:{v['version']}", "split", "documents", "text",
                          "tokens", keep=("split", "documents", "text", "tokens"))
    for split, s in [*stats.get("splits", {}).items(), ("all", stats)]:
        splits.add_row(split, str(s.get("documents", 0)), render.size_text(
            s.get("text_bytes", 0)), str(s.get("tokens", "-")))
    out.print(splits)
    for key, noun in (("labels", "label"), ("languages", "language")):
        if key in stats:
            out.print(_counts_table(noun, key, stats))
    render.dataset_removed(out, stats)


def _counts_table(noun: str, key: str, stats: dict) -> Table:
    """Documents per value of ``key`` (labels, languages), most frequent first, by split."""
    counts = render.table(None, "split", f"documents by {noun}", keep=("split",))
    for split, s in [*stats.get("splits", {}).items(), ("all", stats)]:
        ranked = sorted((s.get(key) or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        counts.add_row(split, "  ".join(f"{k} {n}" for k, n in ranked) or "-")
    return counts


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
