"""`llmos models`: import models, list and show versions, move aliases, remove."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markdown import Markdown

from llmos.cli import render
from llmos.cli.errors import UsageError
from llmos.sdk.client import Client

models_app = typer.Typer(help="The model registry: import, versions, aliases, cards.",
                         no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def parse_ref(ref: str) -> tuple[str, str]:
    """NAME, NAME:VERSION or NAME@ALIAS -> (name, version number, alias or 'latest')."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not name or not alias:
            raise UsageError(f"{ref!r}: write NAME, NAME:VERSION or NAME@ALIAS")
        return name, alias
    name, _, version = ref.partition(":")
    if not name or (version and not version.isdigit()):
        raise UsageError(f"{ref!r}: write NAME, NAME:VERSION (a number) or NAME@ALIAS")
    return name, version or "latest"


@models_app.command("import")
def import_(
    source: Path = typer.Argument(..., help="A Hugging Face folder (config, safetensors, "
                                  "tokenizer) or a GGUF file, on the llmos host."),
    name: str = typer.Option(..., "--name", "-n", help="The model to add a version to."),
    format: str = typer.Option("auto", help="auto, hf or gguf."),
    dtype: str = typer.Option("float32", help="GGUF only: de-quantize to float32, bfloat16 "
                              "or float16."),
    team: Optional[str] = typer.Option(None, help="Team of a new model (default: yours)."),
    memory: int = typer.Option(4096, "--memory", help="MB for the import job."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the import to its end."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only NAME:VERSION (the "
                               "job id with --no-wait); progress goes to stderr."),
) -> None:
    """Import a model as a new version (a job: GGUF is de-quantized once into safetensors,
    so later loads take about a second). Pickled checkpoints are refused. Progress shows
    live on a terminal, and as a line every few seconds elsewhere."""
    if format not in ("auto", "hf", "gguf"):
        raise UsageError(f"--format must be auto, hf or gguf, not {format!r}")
    with Client() as c:
        job = c.models.import_(name, source.expanduser().resolve(), format=format, dtype=dtype,
                               team=team, memory_mb=memory)
        if wait:
            job = render.watch(err if quiet else out, c, job["id"], quiet=as_json)
        version = c.models.version(name) if wait and job["state"] == "SUCCEEDED" else None
    if as_json:
        return _json(version or job)
    if quiet and (version or not wait):
        print(f"{name}:{version['version']}" if version else job["id"])
    elif version:
        out.print(f"model [bold]{name}:{version['version']}[/] {version['architecture']} "
                  f"{version['parameters']:,} parameters, {render.size_text(version['size_bytes'])}")
    else:
        out.print(f"import job [bold]{job['id']}[/] {render.state(job['state'])}"
                  + (f": {job['reason']}" if job["state"] == "FAILED" else ""))
    if wait and job["state"] != "SUCCEEDED":
        raise typer.Exit(1)


@models_app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Models, their versions and aliases."""
    with Client() as c:
        models = c.models.list()
    if as_json:
        return _json(models)
    table = render.table("Models", "model", "team", "versions", "latest", "task", "parameters",
                         "aliases", keep=("versions", "latest", "parameters"))
    for m in models:
        latest = m["versions"][-1] if m["versions"] else None
        table.add_row(m["name"], m["team"] or "", str(len(m["versions"])),
                      str(latest["version"]) if latest else "-",
                      latest["task"] if latest else "",
                      f"{latest['parameters']:,}" if latest else "",
                      ", ".join(f"{a}→{v}" for a, v in m["aliases"].items()))
    out.print(table)


@models_app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS (NAME may be "
                              "TEAM/NAME)."),
    card: bool = typer.Option(False, "--card", help="Show the model card."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A version: architecture, size, files, lineage, metrics (or its model card)."""
    name, version = parse_ref(ref)
    with Client() as c:
        if card:
            text = c.models.card(name, version)
            return sys.stdout.write(text) if as_json else out.print(Markdown(text))
        v = c.models.version(name, version)
    if as_json:
        return _json(v)
    render.model_version(out, v)


@models_app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    dest: Path = typer.Argument(..., help="A new or empty folder to write the files to."),
) -> None:
    """Download a version's files (checked against their sha256). An ONNX version becomes a
    self-contained edge bundle: the files plus runner.py, which needs only onnxruntime,
    tokenizers and numpy (`python DEST/runner.py DEST "some text"`)."""
    name, version = parse_ref(ref)
    with Client() as c:
        folder = c.models.pull(name, version, dest)
    if (folder / "model.onnx").exists():  # the edge runner, from this llmos (not stored as code)
        from importlib.util import find_spec

        runner = Path(find_spec("llmos.models.onnx_runner").origin)
        (folder / "runner.py").write_bytes(runner.read_bytes())
    out.print(f"{name}:{version} → {folder}"
              + (" (edge bundle: python runner.py)" if (folder / "runner.py").exists() else ""))


@models_app.command("alias")
def alias(
    ref: str = typer.Argument(..., help="NAME:VERSION to point the alias at (or NAME with "
                              "--rm)."),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="production, staging ..."),
    remove: bool = typer.Option(False, "--rm", help="Remove the alias instead."),
) -> None:
    """Point an alias at a version, or move it (maintainers)."""
    name, version = parse_ref(ref)
    with Client() as c:
        if remove:
            c.models.remove_alias(name, alias_name)
            return out.print(f"alias [bold]{name}@{alias_name}[/] removed")
        if not version.isdigit():
            raise UsageError("give the version the alias points at: NAME:VERSION")
        c.models.set_alias(name, alias_name, int(version))
    out.print(f"[bold]{name}@{alias_name}[/] → version {version}")


@models_app.command("rm")
def rm(ref: str = typer.Argument(..., help="NAME:VERSION (one version) or NAME (the whole "
                                 "model)."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> None:
    """Remove a version, or a model with all its versions (maintainers; refused while an
    alias points at it)."""
    name, _, version = ref.partition(":")
    if "@" in ref or (version and not version.isdigit()):
        raise UsageError("write NAME:VERSION or NAME")
    what = f"{name}:{version}" if version else f"model {name} and all its versions"
    if not yes and not typer.confirm(f"remove {what}?"):
        raise typer.Abort()
    with Client() as c:
        c.models.delete_version(name, version) if version else c.models.delete(name)
    out.print(f"removed {what}")
