"""`llmos lineage KIND REF`: where a deployment, a model version, a dataset version or a
pipeline run came from, as a tree (``pipelines/lineage.py`` says what the tree holds)."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from llmos.cli.errors import UsageError
from llmos.sdk.client import Client

KINDS = ("deployment", "model", "dataset", "run")
# The keys under which a node holds others, in the order shown, and how each is labelled.
BRANCHES = (("inputs", None), ("steps", None), ("outputs", "made"), ("served_by", "served by"),
            ("used_by", "trained on it"))
out = Console()


def lineage(
    kind: str = typer.Argument(..., help="deployment, model, dataset or run."),
    ref: str = typer.Argument(..., help="A deployment's NAME; a model's NAME, NAME:VERSION "
                              "or NAME@ALIAS; a dataset's NAME or NAME:VERSION (any NAME may "
                              "be TEAM/NAME); a pipeline run's id."),
    as_json: bool = typer.Option(False, "--json", help="Print the tree as JSON."),
) -> None:
    """Show the whole chain behind a deployment, model version, dataset version or
    pipeline run: raw input files (sha256) -> dataset version -> pipeline run and step ->
    model version (its base model, recursively) -> the deployments serving it."""
    if kind not in KINDS:
        raise UsageError(f"KIND is one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "run" and not ref.isdigit():
        raise UsageError(f"a pipeline run is named by its id (a number), not {ref!r}")
    with Client() as client:
        tree = client.lineage(kind, ref)
    if as_json:
        sys.stdout.write(json.dumps(tree, indent=2, ensure_ascii=False) + "\n")
        return
    out.print(render_tree(tree))


def render_tree(node: dict) -> Tree:
    tree = Tree(label(node))
    _grow(tree, node)
    return tree


def _grow(tree: Tree, node: dict) -> None:
    for key, title in BRANCHES:
        children = node.get(key) or []
        if not children:
            continue
        parent = tree.add(f"[dim]{title}[/]") if title else tree
        for child in children:
            _grow(parent.add(label(child)), child)


def label(node: dict) -> str:
    kind = node.get("kind", "?")
    role = f"{node['as']} " if node.get("as") in ("base", "tokenizer") else ""
    if node.get("hidden"):
        return f"[dim]{role}{kind} (hidden: of a team you cannot read)[/]"
    text = role + _LABELS.get(kind, lambda n: kind)(node)
    if node.get("missing"):
        text += " [yellow](no longer exists)[/]"
    if node.get("repeat"):
        text += " [dim](shown above)[/]"
    return text


def _name(node: dict) -> str:
    team, name = node.get("team"), node.get("name")
    return escape(f"{team}/{name}" if team else str(name))


def _model(n: dict) -> str:
    if "name" not in n:
        return "model"
    parts = [f"[bold]model[/] {_name(n)}:{n.get('version')}"]
    if n.get("serves"):
        parts.append(f"{n['serves']} {n.get('weight')}%")
    if n.get("method"):
        parts.append(escape(str(n["method"])))
    if n.get("aliases"):
        parts.append("@" + ", @".join(map(escape, n["aliases"])))
    if n.get("metrics"):
        parts.append("evaluated: " + ", ".join(map(escape, n["metrics"])))
    return " · ".join(parts)


def _dataset(n: dict) -> str:
    if "name" not in n:
        return "dataset"
    text = f"[bold]dataset[/] {_name(n)}:{n.get('version')}"
    if n.get("content_hash"):
        text += f" · content {n['content_hash'][:16]}"
    if n.get("documents") is not None:
        text += f" · {n['documents']} documents"
    if n.get("files_left_out"):
        text += f" · {n['files_left_out']} more files not listed"
    return text


def _file(n: dict) -> str:
    text = f"file {escape(str(n.get('path')))}"
    if n.get("sha256"):
        text += f" · sha256 {n['sha256']}"
    if n.get("bytes") is not None:
        text += f" · {n['bytes']} bytes"
    if n.get("error"):
        text += f" [red]({escape(str(n['error']))})[/]"
    return text


def _step(n: dict) -> str:
    if "name" not in n:
        return "step"
    text = (f"[bold]step[/] {escape(str(n['name']))} of run {n.get('run')} "
            f"({escape(str(n.get('pipeline')))})")
    if n.get("state"):
        text += f" · {n['state']}"
    cached = n.get("cached_from")
    if cached:
        text += (" · cached (hidden)" if cached.get("hidden") else
                 " · cached from a step that no longer exists" if cached.get("missing") else
                 f" · cached from run {cached['run']} step {escape(str(cached['step']))}")
    job = n.get("job")
    if job and job.get("id") is not None:
        text += f" · job {job['id']} {escape(str(job.get('program')))}"
    if n.get("reason"):
        text += f" · {escape(str(n['reason']))}"
    return text


def _job(n: dict) -> str:
    if n.get("program") is None:
        return f"job {n.get('id')}"
    return f"job {n['id']} {escape(str(n['program']))} · {n.get('state')}"


def _run(n: dict) -> str:
    return (f"[bold]run[/] {n['id']} {escape(str(n.get('pipeline')))} · {n.get('state')} · "
            f"started by {escape(str(n.get('trigger')))}")


def _deployment(n: dict) -> str:
    text = f"[bold]deployment[/] {_name(n)}"
    if n.get("serves"):
        text += f" · {n['serves']} {n.get('weight')}%"
    elif n.get("ref"):
        text += f" · follows {escape(str(n['ref']))}"
    return text


_LABELS = {"model": _model, "dataset": _dataset, "file": _file, "step": _step, "job": _job,
           "run": _run, "deployment": _deployment}
