"""`llmos deploy` and `llmos deployments ls | show | scale | canary | rm`: serving models."""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from llmos.cli import render
from llmos.cli.errors import UsageError
from llmos.config import parse_labels
from llmos.sdk.client import Client

deployments_app = typer.Typer(help="Served models: list, show, scale, canary, remove.",
                              no_args_is_help=True)
out = Console()


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def deploy(
    model: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS (an alias is "
                                "followed when it moves)."),
    name: Optional[str] = typer.Option(None, help="The name clients call (default: the "
                                       "model's)."),
    replicas: Optional[int] = typer.Option(None, min=1, max=64, help="Workers serving it "
                                           "(autoscaled: the count it starts with; default "
                                           "1, or --min-replicas)."),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", min=0, max=64,
                                               help="Autoscale: fewest workers (0: scale to "
                                               "zero when idle)."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", min=1, max=64,
                                               help="Autoscale from load up to this many "
                                               "workers."),
    idle_s: Optional[float] = typer.Option(None, "--idle-s", help="With --min-replicas 0: "
                                           "scale to zero after this many seconds without a "
                                           "request (default 300)."),
    node_label: list[str] = typer.Option([], "--node-label", help="k=v: run its workers "
                                         "only on nodes with this label (repeatable)."),
    engine: Optional[str] = typer.Option(None, help="torch (default for text generation), "
                                         "encoder (embeddings, classification) or llamacpp."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, max=1024,
                                  help="Requests decoded together at most."),
    max_queue: int = typer.Option(1024, "--max-queue", min=1, max=100000,
                                  help="Requests waiting for a slot; more are refused (429)."),
    priority: str = typer.Option("normal", help="The workers' scheduling class: high, "
                                 "normal or low."),
    pool: Optional[str] = typer.Option(None, help="Share workers and their memory budget "
                                       "with this pool's deployments."),
    cpu: float = typer.Option(1, help="CPU cores per worker (new pool)."),
    memory: int = typer.Option(3072, "--memory", help="MB per worker (new pool)."),
    budget: Optional[int] = typer.Option(None, "--budget", help="MB for resident models "
                                         "(default: the worker's memory less ~700 MB)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Serve a model behind the OpenAI-compatible API (/v1/chat/completions, /v1/embeddings,
    /v1/classify); its workers load it as they start (the first request does not wait for
    the load); deploying an existing name again switches its version without dropping
    requests."""
    if priority not in ("high", "normal", "low"):
        raise UsageError(f"--priority must be high, normal or low, not {priority!r}")
    try:
        labels = parse_labels(node_label)
    except ValueError as e:
        raise UsageError(f"--node-label: {e}") from None
    # only what was given: the server defaults replicas from --min-replicas
    scaling = {k: v for k, v in (("replicas", replicas), ("min_replicas", min_replicas),
                                 ("max_replicas", max_replicas), ("idle_s", idle_s),
                                 ("node_labels", labels or None)) if v is not None}
    with Client() as c:
        d = c.deployments.create(model, name=name, engine=engine, max_batch=max_batch,
                                 max_queue=max_queue, priority=priority, pool=pool, cpu=cpu,
                                 memory_mb=memory, budget_mb=budget, **scaling)
        if as_json:
            return _json(d)
        d = _settled(c, d)
    what = (f"{d['model']}:{d['version']} ({d['engine']}, pool {d['pool']}, "
            f"{_replicas(d)})")
    if d["ready_workers"]:
        out.print(f"deployment [bold]{d['name']}[/] serves {what}")
    else:
        why = d["problem"] or "its worker is starting"
        out.print(f"deployment [bold]{d['name']}[/] will serve {what} once a worker is ready; "
                  f"[yellow]waiting: {why}[/]")
    out.print(f"  call it: POST {c.url}{d['route']} with \"model\": \"{d['name']}\"")


def _replicas(d: dict) -> str:
    """'2 replica(s)', or the autoscaling bounds."""
    if d.get("max_replicas"):
        idle = f", to zero after {d['idle_s']:g} s idle" if d.get("min_replicas") == 0 else ""
        return f"autoscaled {d['min_replicas']}-{d['max_replicas']} replicas{idle}"
    return f"{d['replicas']} replica(s)"


def _settled(c: Client, d: dict, within_s: float = 6.0) -> dict:
    """The deployment once a worker is ready or the reason it waits is known (a few
    seconds at most: the controller and the scheduler each take a pass)."""
    deadline = time.monotonic() + within_s
    while not d["ready_workers"] and not d["problem"] and time.monotonic() < deadline:
        time.sleep(0.25)
        d = c.deployments.get(d["name"])
    return d


@deployments_app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Deployments, what they serve and how many workers are ready."""
    with Client() as c:
        items = c.deployments.list()
    if as_json:
        return _json(items)
    table = Table(title="Deployments")
    for col in ("name", "model", "engine", "pool", "replicas", "now/want", "ready",
                "priority", "why / problem"):
        table.add_column(col, overflow="fold")
    for d in items:
        ref = d["ref"] if d["ref"].isdigit() else f"@{d['ref']}"
        bounds = (f"{d['min_replicas']}-{d['max_replicas']}" if d.get("max_replicas")
                  else str(d["replicas"]))
        want = d.get("desired_replicas")
        table.add_row(d["name"], f"{d['model']}:{d['version']} ({ref})", d["engine"], d["pool"],
                      bounds, f"{d.get('current_replicas', 0)}/{'?' if want is None else want}",
                      str(d["ready_workers"]), d["priority"],
                      d["problem"] or d.get("scale_reason") or "")
    out.print(table)


@deployments_app.command("show")
def show(name: str = typer.Argument(..., help="Deployment name (TEAM/NAME where needed)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """A deployment: its version, workers, resident models, loads and evictions."""
    with Client() as c:
        d = c.deployments.get(name)
    if as_json:
        return _json(d)
    out.print(f"[bold]{d['name']}[/] → {d['model']}:{d['version']} (follows {d['ref']}), "
              f"engine {d['engine']}, max batch {d['max_batch']}, pool {d['pool']}, "
              f"{d['ready_workers']}/{d['replicas']} worker(s) ready")
    if d.get("desired_replicas") is not None:
        out.print(f"  {_replicas(d)}: {d.get('current_replicas', 0)} now, "
                  f"{d['desired_replicas']} wanted — {d.get('scale_reason') or ''}")
    if d.get("node_labels"):
        out.print("  on nodes labelled " + ",".join(f"{k}={v}"
                                                    for k, v in d["node_labels"].items()))
    out.print(f"  serves {d['task']}: POST {c.url}{d['route']}")
    if d["problem"]:
        out.print(f"  [red]{d['problem']}[/]")
    if d.get("canary"):
        _print_canary(d)
    for w in d["workers"] or []:
        out.print(f"  worker job {w['job_id']}: {render.size_text(w['used_bytes'])} of "
                  f"{render.size_text(w['budget_bytes'])} used; {w['loads']} loads, "
                  f"{w['evictions']} evictions")
        for m in w.get("loading", []):
            out.print(f"    [yellow]loading[/] {m['deployment']}:{m['version']} "
                      f"({m['seconds']} s so far)")
        for m in w["resident"]:
            out.print(f"    resident {m['deployment']}:{m['version']} "
                      f"{render.size_text(m['bytes'])}, {m['in_flight']} in flight, idle "
                      f"{m['idle_s']} s, loaded in {m['load_s']} s")
        for e in w["events"][-10:]:
            out.print(f"    {e['event']:<6} {e['deployment']}:{e['version']} "
                      f"{e['seconds']} s — {e['reason']}")


@deployments_app.command("scale")
def scale(name: str = typer.Argument(..., help="Deployment name (TEAM/NAME where needed)."),
          replicas: int = typer.Argument(..., min=1, max=64, help="Workers.")) -> None:
    """Set how many workers serve the deployment's pool."""
    with Client() as c:
        d = c.deployments.scale(name, replicas)
    out.print(f"deployment [bold]{d['name']}[/]: {d['replicas']} replica(s)")


@deployments_app.command("canary")
def canary(name: str = typer.Argument(..., help="Deployment name (TEAM/NAME where needed)."),
           version: Optional[int] = typer.Option(None, "--version", min=1,
                                                 help="The version of its model to try."),
           weight: Optional[int] = typer.Option(None, "--weight", min=1, max=99,
                                                help="Percent of requests it gets (1-99)."),
           rollback: bool = typer.Option(False, "--rollback", help="Send every request to "
                                         "the deployment's version again."),
           complete: bool = typer.Option(False, "--complete", help="Make the canary the "
                                         "deployment's version."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Canary rollout: send a share of requests to another version of the deployment's
    model (--version, --weight), then --complete it or --rollback; with no option, show
    how each version answered so far."""
    setting = version is not None or weight is not None
    if sum((setting, rollback, complete)) > 1:
        raise UsageError("give --version and --weight, or --rollback, or --complete")
    if setting and (version is None or weight is None):
        raise UsageError("a canary needs both --version and --weight")
    with Client() as c:
        if setting:
            d = c.deployments.set_canary(name, version, weight)
        elif rollback:
            d = c.deployments.clear_canary(name)
        elif complete:
            d = c.deployments.complete_canary(name)
        else:
            d = c.deployments.get(name)
    if as_json:
        return _json(d)
    if d.get("canary"):
        out.print(f"deployment [bold]{d['name']}[/] serves {d['model']}:{d['version']}")
        _print_canary(d)
    elif rollback:
        out.print(f"deployment [bold]{d['name']}[/]: no canary; every request goes to "
                  f"{d['model']}:{d['version']}")
    elif complete:
        out.print(f"deployment [bold]{d['name']}[/] now serves {d['model']}:{d['version']}")
    else:
        out.print(f"deployment [bold]{d['name']}[/] has no canary; it serves "
                  f"{d['model']}:{d['version']}")


def _print_canary(d: dict) -> None:
    c = d["canary"]
    out.print(f"  canary {d['model']}:{c['version']} takes {c['weight']}% of requests")
    for side in ("stable", "canary"):
        s = c["stats"][side]
        p50 = "-" if s["p50_s"] is None else f"{s['p50_s']:.3f} s"
        p95 = "-" if s["p95_s"] is None else f"{s['p95_s']:.3f} s"
        out.print(f"    {side:<6} {d['model']}:{s['version']}: {s['requests']} request(s), "
                  f"{s['errors']} error(s) ({s['error_rate']:.1%}), p50 {p50}, p95 {p95}")


@deployments_app.command("rm")
def rm(name: str = typer.Argument(..., help="Deployment name (TEAM/NAME where needed).")) -> None:
    """Stop serving a deployment (its pool's workers stop when no deployment is left)."""
    with Client() as c:
        c.deployments.delete(name)
    out.print(f"deployment [bold]{name}[/] removed")
