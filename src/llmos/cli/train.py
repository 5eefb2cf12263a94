"""`llmos train` and `llmos evaluate`: fine-tuning and evaluation jobs, followed live."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from llmos.cli import render
from llmos.cli.errors import UsageError
from llmos.sdk.client import Client

out = Console()
err = Console(stderr=True)
QUIET = typer.Option(False, "--quiet", "-q", help="Print only the job id (for scripts: "
                     "JOB=$(llmos ... -q)); progress goes to stderr.")


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def train(
    recipe: Path = typer.Argument(..., help="The training recipe (YAML)."),
    model: str = typer.Option(..., "--model", "-m", help="Base model: NAME, NAME:VERSION or "
                              "NAME@ALIAS."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset: NAME or NAME:VERSION."),
    output: str = typer.Option(..., "--output", "-o", help="Register the result as a new "
                               "version of this model."),
    tokenizer: Optional[str] = typer.Option(None, help="Use this model's tokenizer instead."),
    cpu: float = typer.Option(2, help="CPU cores for the job."),
    memory: int = typer.Option(4096, "--memory", help="MB for the job."),
    priority: str = typer.Option("normal", help="high, normal or low."),
    team: Optional[str] = typer.Option(None, help="Team of a new output model."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job to its end."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quiet: bool = QUIET,
) -> None:
    """Fine-tune a registered model on a dataset version (full or LoRA) as a preemptible job;
    live loss, learning rate and samples/s show in `llmos job show`."""
    if not recipe.is_file():
        raise UsageError(f"no such recipe file: {recipe}")
    if priority not in ("high", "normal", "low"):
        raise UsageError(f"--priority must be high, normal or low, not {priority!r}")
    with Client() as c:
        job = c.train.finetune(recipe.read_text(), model, data, output, tokenizer=tokenizer,
                               cpu=cpu, memory_mb=memory, priority=priority, team=team)
        _follow(c, job, wait, as_json, lambda: c.models.version(output), quiet)


def evaluate(
    model: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset: NAME or NAME:VERSION."),
    split: str = typer.Option("test", help="train, validation or test."),
    field: list[str] = typer.Option([], "--field", help="A recipe field, e.g. "
                                    "text_field=body (repeatable)."),
    cpu: float = typer.Option(2, help="CPU cores for the job."),
    memory: int = typer.Option(4096, "--memory", help="MB for the job."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job to its end."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quiet: bool = QUIET,
) -> None:
    """Evaluate a model version on a dataset split (accuracy, precision, recall, F1, confusion
    matrix; entity F1 for NER; perplexity for causal models); stored on the version."""
    fields = {}
    for item in field:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--field {item!r}: write NAME=VALUE")
        fields[key] = value
    with Client() as c:
        job = c.train.evaluate(model, data, split, fields, cpu=cpu, memory_mb=memory)
        _follow(c, job, wait, as_json, None, quiet)


def _follow(c: Client, job: dict, wait: bool, as_json: bool, result, quiet: bool) -> None:
    if wait:
        job = render.watch(err if quiet else out, c, job["id"], quiet=as_json)
    if as_json:
        return _json(job)
    if quiet:
        print(job["id"])
        if wait and job["state"] != "SUCCEEDED":
            err.print(f"job {job['id']} {render.state(job['state'])}: {job['reason'] or ''}")
            raise typer.Exit(1)
        return
    if job["state"] == "SUCCEEDED" and result is not None:
        v = result()
        out.print(f"registered [bold]{v['model']}:{v['version']}[/]")
    metrics = {m["name"]: m["value"] for m in c.jobs.metrics(job["id"])} if wait else {}
    shown = {k: v for k, v in metrics.items() if k.startswith(("test_", "eval_", "accuracy",
                                                                 "f1", "perplexity", "loss"))}
    for key, value in sorted(shown.items()):
        out.print(f"  {key:<28} {value:.4f}")
    out.print(f"job [bold]{job['id']}[/] {render.state(job['state'])}"
              + (f": {job['reason']}" if job["state"] == "FAILED" else ""))
    if wait and job["state"] != "SUCCEEDED":
        raise typer.Exit(1)
