"""`llmos pipeline run | validate | apply | ls | runs | show | cancel | resume | delete`:
data-flow graphs of jobs, and the live view of a run's steps."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from llmos.cli import render
from llmos.cli.errors import UsageError
from llmos.sdk.client import Client
from llmos.sdk.pipeline import TERMINAL, SpecFileError, load_file

pipeline_app = typer.Typer(help="Pipelines: graphs of jobs with cached steps, gates and "
                           "triggers; run, validate, apply, list, show, cancel, resume.",
                           no_args_is_help=True)
out = Console()
err = Console(stderr=True)
STEP_COLORS = {"WAITING": "dim", "RUNNING": "blue", "SUCCEEDED": "green", "CACHED": "cyan",
               "SKIPPED": "dim", "FAILED": "red", "STOPPED": "yellow", "CANCELLED": "magenta",
               "PENDING": "yellow"}
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
NUMBER = re.compile(r"^[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?$")

FILE = typer.Argument(..., help="The pipeline file (YAML).")
PARAMS = typer.Option([], "--param", "-p", help="k=v: a parameter's value, read as YAML "
                      "(lr=3e-5 is a number, on=true a boolean; repeatable).")
DETACH = typer.Option(False, "--detach", "-d", help="Print the run's id and return at once.")
JSON = typer.Option(False, "--json", help="Print JSON.")
RUN = typer.Argument(..., min=1, help="Run id.")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["lr=3e-5", "name=x"]`` as ``{"lr": 3e-05, "name": "x"}``: each value a YAML
    scalar (or list, or mapping); a number in exponent form without a dot is a number too."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not KEY.match(key):
            raise UsageError(f"--param takes NAME=VALUE (like lr=3e-5), not {item!r}")
        if key in params:
            raise UsageError(f"--param {key} is given twice")
        params[key] = _value(key, text)
    return params


def _value(key: str, text: str) -> Any:
    if not text.strip():
        return ""
    if NUMBER.match(text.strip()):  # YAML 1.1 reads 3e-5 as text
        number = text.strip().replace("_", "")
        try:
            return int(number)
        except ValueError:
            return float(number)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"--param {key}: not a YAML value ({problem})") from None


def read_spec(path: Path) -> dict:
    """The pipeline file's content, or a usage error saying why it cannot be read."""
    try:
        return load_file(path)
    except SpecFileError as e:
        raise UsageError(str(e)) from None


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- verbs ----------------------------------------------------------------------------------


@pipeline_app.command("run")
def run(file: Path = FILE, param: list[str] = PARAMS,
        no_cache: bool = typer.Option(False, "--no-cache", help="Run every step, reusing "
                                      "no cached result."),
        team: Optional[str] = typer.Option(None, help="Run it for this team (default: "
                                           "yours)."),
        detach: bool = DETACH, as_json: bool = JSON) -> None:
    """Run a pipeline file and show its steps live until the run ends; exit 0 only if it
    succeeded. Steps whose inputs and parameters are unchanged are reused (cached)."""
    spec = read_spec(file)
    params = parse_params(param)
    with Client() as c:
        started = c.pipelines.run(spec, params, no_cache=no_cache, team=team)
        if detach:
            return _json(started) if as_json else _started(started)
        ended = follow(out, c, started, quiet=as_json)
    _ended(ended, as_json)


@pipeline_app.command("validate")
def validate(file: Path = FILE, param: list[str] = PARAMS,
             team: Optional[str] = typer.Option(None, help="As it would run for this team "
                                                "(default: yours)."),
             as_json: bool = JSON) -> None:
    """Check a pipeline file whole, running nothing: prints its plan (parameters and each
    step with the steps it needs), or what is wrong and where."""
    spec = read_spec(file)
    params = parse_params(param)
    with Client() as c:
        plan = c.pipelines.validate(spec, params, team=team)
    if as_json:
        return _json(plan)
    out.print(f"pipeline [bold]{plan['name']}[/] is valid: {len(plan['steps'])} step(s)")
    if plan.get("params"):
        out.print("  params")
        render.print_yaml(out, plan["params"], indent=4)
    steps = render.table(None, "step", "program", "needs")
    for s in plan["steps"]:
        steps.add_row(s["name"], s["program"], ", ".join(s.get("needs") or []) or "-")
    out.print(steps)


@pipeline_app.command("apply")
def apply(file: Path = FILE,
          team: Optional[str] = typer.Option(None, help="Register it in this team "
                                             "(default: yours)."),
          as_json: bool = JSON) -> None:
    """Register a pipeline file and its triggers (new dataset versions, a schedule)
    without running it."""
    spec = read_spec(file)
    with Client() as c:
        p = c.pipelines.apply(spec, team=team)
    if as_json:
        return _json(p)
    out.print(f"pipeline [bold]{_qualified(p)}[/] registered with "
              f"{len(p['triggers'])} trigger(s)")
    for t in p["triggers"]:
        out.print(f"  on {_trigger(t)}")


@pipeline_app.command("ls")
def ls(as_json: bool = JSON) -> None:
    """Pipelines you may see, with their steps and triggers."""
    with Client() as c:
        items = c.pipelines.list()
    if as_json:
        return _json(items)
    rows = render.table("Pipelines", "name", "team", "owner", "steps", "triggers", "updated",
                        keep=("updated",))
    for p in items:
        rows.add_row(p["name"], p["team"] or "-", p["owner"], str(len(p["spec"]["steps"])),
                     "; ".join(_trigger(t) for t in p["triggers"]) or "-",
                     render.time_text(p["updated_at"]))
    out.print(rows)


@pipeline_app.command("runs")
def runs(pipeline: Optional[str] = typer.Option(None, "--pipeline", help="Only runs of "
                                                "this pipeline (NAME or TEAM/NAME)."),
         state: list[str] = typer.Option([], "--state", "-s", help="Only runs in this state "
                                         "(repeatable)."),
         limit: int = typer.Option(50, min=1, max=10000, help="At most this many (newest "
                                   "first)."),
         as_json: bool = JSON) -> None:
    """Pipeline runs, newest first: state, what started them, their steps' states."""
    with Client() as c:
        items = c.pipelines.runs(pipeline=pipeline, state=[s.upper() for s in state] or None,
                                 limit=limit)
    if as_json:
        return _json(items)
    rows = render.table("Pipeline runs", "run", "pipeline", "state", "trigger", "steps",
                        "created", "took", "reason", keep=("run", "state", "created", "took"))
    for r in items:
        counts = r.get("step_states") or {}
        rows.add_row(str(r["id"]), r["pipeline"], render.state(r["state"]), r["trigger"],
                     ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "-",
                     render.time_text(r["created_at"]),
                     _took(r["started_at"], r["ended_at"]), r["reason"] or "")
    out.print(rows)


@pipeline_app.command("show")
def show(run_id: int = RUN, as_json: bool = JSON) -> None:
    """A run: its parameters and every step (state, job, the run a cached step came from,
    time taken, reason, outputs)."""
    with Client() as c:
        r = c.pipelines.get_run(run_id)
    if as_json:
        return _json(r)
    out.print(graph(r))
    if r["params"]:
        out.print("  params")
        render.print_yaml(out, r["params"], indent=4)
    for s in r["steps"] or []:
        if s.get("outputs") or s.get("detail"):
            out.print(f"  [bold]{s['name']}[/]")
            render.print_yaml(out, {k: s[k] for k in ("outputs", "detail") if s.get(k)},
                              indent=4)


@pipeline_app.command("cancel")
def cancel(run_id: int = RUN, as_json: bool = JSON) -> None:
    """Cancel a run: its waiting steps never start, its running jobs are stopped."""
    with Client() as c:
        r = c.pipelines.cancel(run_id)
    if as_json:
        return _json(r)
    out.print(f"run [bold]{r['id']}[/] of {r['pipeline']} {render.state(r['state'])}"
              + (f"  {r['reason']}" if r.get("reason") else ""))


@pipeline_app.command("resume")
def resume(run_id: int = RUN, detach: bool = DETACH, as_json: bool = JSON) -> None:
    """Rerun a failed or cancelled run's failed, stopped and cancelled steps and what
    depends on them, reusing every step that succeeded; shows it live like run."""
    with Client() as c:
        started = c.pipelines.resume(run_id)
        if detach:
            return _json(started) if as_json else _started(started)
        ended = follow(out, c, started, quiet=as_json)
    _ended(ended, as_json)


@pipeline_app.command("delete")
def delete(name: str = typer.Argument(..., help="Pipeline name (TEAM/NAME where needed)."),
           as_json: bool = JSON) -> None:
    """Remove a pipeline and its triggers."""
    with Client() as c:
        p = c.pipelines.delete(name)
    if as_json:
        return _json(p)
    out.print(f"pipeline [bold]{_qualified(p)}[/] removed")


# -- showing runs ---------------------------------------------------------------------------


def follow(console: Console, client: Client, run: dict, quiet: bool = False,
           every_s: float = 0.5) -> dict:
    """Show a run until it ends; return the ended run. On a terminal: a live table of its
    steps. Elsewhere (a pipe, a log): one line each time a step changes state. Ctrl-C
    stops watching, not the run."""
    try:
        if quiet:
            return client.pipelines.wait(run["id"], poll=every_s)
        if not console.is_terminal:
            return _follow_lines(console, client, run, every_s)
        with Live(graph(run), console=console, refresh_per_second=4) as live:
            while run["state"] not in TERMINAL:
                time.sleep(every_s)
                run = client.pipelines.get_run(run["id"])
                live.update(graph(run))
        return run
    except KeyboardInterrupt:
        err.print(f"stopped watching; run {run['id']} goes on (llmos pipeline cancel "
                  f"{run['id']} stops it)")
        raise typer.Exit(130) from None


def _follow_lines(console: Console, client: Client, run: dict, every_s: float) -> dict:
    shown: dict[str, tuple] = {}
    console.print(f"run {run['id']} of {run['pipeline']} {run['state']}", markup=False,
                  highlight=False)
    while True:
        for s in run["steps"] or []:
            now = (s["state"], s["job_id"])
            if shown.get(s["name"]) != now:
                shown[s["name"]] = now
                console.print("  " + _step_line(s), markup=False, highlight=False,
                              soft_wrap=True)
        if run["state"] in TERMINAL:
            return run
        time.sleep(every_s)
        run = client.pipelines.get_run(run["id"])


def _step_line(s: dict) -> str:
    parts = [f"{s['name']:<16}", f"{s['state']:<9}"]
    if s.get("job_id"):
        parts.append(f"job {s['job_id']}")
    if s.get("cached_from_run"):
        parts.append(f"cached from run {s['cached_from_run']}")
    took = _took(s.get("started_at"), s.get("ended_at"), running=s["state"] == "RUNNING")
    if took != "-":
        parts.append(took)
    if _reason(s):
        parts.append(_reason(s))
    return "  ".join(parts)


def _reason(s: dict) -> str:
    """A step's reason, less what the cached-from column already says."""
    reason = s.get("reason") or ""
    return "" if s.get("cached_from_run") and reason.startswith("cached from") else reason


def graph(run: dict) -> Group:
    """A run as its header line and one row per step."""
    header = Text.from_markup(f"run [bold]{run['id']}[/] of [bold]{run['pipeline']}[/] "
                              f"{render.state(run['state'])}  ({run['trigger']}"
                              + (", no cache" if run.get("no_cache") else "") + ")")
    if run.get("reason"):
        header.append(f"  {run['reason']}")
    rows = render.table(None, "step", "state", "job", "cached from", "took", "reason",
                        keep=("state", "job", "cached from", "took"))
    for s in run["steps"] or []:
        color = STEP_COLORS.get(s["state"], "white")
        rows.add_row(s["name"], f"[{color}]{s['state']}[/]", str(s["job_id"] or "-"),
                     f"run {s['cached_from_run']}" if s.get("cached_from_run") else "-",
                     _took(s.get("started_at"), s.get("ended_at"),
                           running=s["state"] == "RUNNING"),
                     Text(_reason(s)))
    return Group(header, rows)


def _took(started: str | None, ended: str | None, running: bool = True) -> str:
    """How long it ran: to its end, or (still running) to now."""
    if not started or (not ended and not running):
        return "-"
    start = datetime.fromisoformat(started)
    if ended:
        end = datetime.fromisoformat(ended)
    else:
        end = datetime.now(timezone.utc)
        end = end if start.tzinfo else end.replace(tzinfo=None)
    seconds = max(0.0, (end - start).total_seconds())
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} m {int(seconds % 60)} s"


def _started(r: dict) -> None:
    out.print(f"run [bold]{r['id']}[/] of {r['pipeline']} {render.state(r['state'])}; "
              f"follow it with `llmos pipeline show {r['id']}`")


def _ended(r: dict, as_json: bool) -> None:
    if as_json:
        _json(r)
    else:
        out.print(f"run [bold]{r['id']}[/] of {r['pipeline']} {render.state(r['state'])}"
                  + (f"  {r['reason']}" if r.get("reason") else ""))
    if r["state"] != "SUCCEEDED":
        raise typer.Exit(1)


def _qualified(p: dict) -> str:
    return f"{p['team']}/{p['name']}" if p.get("team") else p["name"]


def _trigger(t: dict) -> str:
    what = f"new versions of dataset {t['target']}" if t["kind"] == "dataset" else (
        f"schedule {t['target']}")
    return f"{what} (overlap: {t['overlap']})"
