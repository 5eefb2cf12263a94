"""`llmos tune RECIPE | ls | show | stop | resume`: hyperparameter studies whose trials are
kernel jobs. `llmos tune RECIPE` is short for `llmos tune run RECIPE`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from llmos.cli import render
from llmos.cli.errors import UsageError
from llmos.sdk.client import Client
from llmos.sdk.tune import ENDED, RecipeFileError, load_recipe


class _RunByDefault(TyperGroup):
    """`llmos tune FILE ...` runs FILE: a first word that is no verb is a recipe."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


tune_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                       help="Tuning studies (Optuna): `llmos tune RECIPE` starts one whose "
                       "trials run as jobs; ls, show, stop, resume.")
out = Console()
err = Console(stderr=True)
JSON = typer.Option(False, "--json", help="Print JSON.")
STUDY = typer.Argument(..., help="The study's name (or TEAM/NAME).")


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _counts(s: dict) -> str:
    wanted = s.get("trials_wanted")
    return (f"{s.get('done', 0)} done, {s.get('pruned', 0)} pruned, {s.get('running', 0)} "
            f"running, {s.get('failed', 0)} failed" + (f" (of {wanted})" if wanted else ""))


def _best(s: dict) -> str:
    b = s.get("best")
    if not b:
        return "-"
    return f"{b['value']:.6g} (trial {b['number']})"


@tune_app.command("run")
def run(recipe: Path = typer.Argument(..., help="The tuning recipe (YAML)."),
        team: Optional[str] = typer.Option(None, help="Run it for this team (default: "
                                           "yours)."),
        detach: bool = typer.Option(False, "--detach", "-d", help="Print the study and "
                                    "return at once."),
        as_json: bool = JSON) -> None:
    """Start a study from a recipe file and follow it until it ends (exit 0 only if it
    succeeded); its trials run as kernel jobs, `parallel` at a time."""
    try:
        body = load_recipe(recipe)
    except RecipeFileError as e:
        raise UsageError(str(e)) from None
    with Client() as c:
        study = c.tune.start(body, team=team)
        name = _qualified(study)
        if detach:
            if as_json:
                return _json(study)
            out.print(f"study [bold]{name}[/] started: {study['recipe']['trials']} trials, "
                      f"{study['recipe'].get('parallel', 1)} at a time; follow it with "
                      f"`llmos tune show {name}`")
            return
        if not as_json:
            out.print(f"study [bold]{name}[/] started; Ctrl-C stops following (the study "
                      "goes on)")
        study = _follow(c, name, quiet=as_json)
    if as_json:
        _json(study)
    else:
        _show(study)
    if study["state"] != "SUCCEEDED":
        raise typer.Exit(1)


def _follow(c: Client, name: str, quiet: bool) -> dict:
    last = None
    try:
        while True:
            study = c.tune.get(name, importances=False)
            line = f"{_counts(study)}; best {_best(study)}"
            if line != last and not quiet:
                out.print(f"  {time.strftime('%H:%M:%S')} {line}")
                last = line
            if study["state"] in ENDED:
                return c.tune.get(name)
            time.sleep(1.0)
    except KeyboardInterrupt:
        err.print(f"stopped following; the study goes on (`llmos tune show {name}`, "
                  f"`llmos tune stop {name}`)")
        raise typer.Exit(130) from None


@tune_app.command("ls")
def ls(state: list[str] = typer.Option([], "--state", "-s", help="Only studies in this "
                                       "state (repeatable)."),
       as_json: bool = JSON) -> None:
    """Studies you may see: state, trials by state, best value so far."""
    with Client() as c:
        items = c.tune.list([s.upper() for s in state] or None)
    if as_json:
        return _json(items)
    rows = render.table("Tuning studies", "study", "team", "state", "objective", "trials",
                        "best", "created", keep=("study", "state"))
    for s in items:
        rows.add_row(s["name"], s["team"] or "-", render.state(s["state"]),
                     f"{s['direction'][:3]} {s['metric']}", _counts(s), _best(s),
                     render.time_text(s["created_at"]))
    out.print(rows)


@tune_app.command("show")
def show(study: str = STUDY, as_json: bool = JSON) -> None:
    """A study: best value so far and its parameters, trials done / pruned / running /
    failed, the parameters' importances, and every trial."""
    with Client() as c:
        s = c.tune.get(study)
    if as_json:
        return _json(s)
    _show(s)


def _show(s: dict) -> None:
    out.print(f"study [bold]{_qualified(s)}[/]: {render.state(s['state'])}"
              + (f" ({s['reason']})" if s.get("reason") else ""))
    out.print(f"  objective  {s['direction']} {s['metric']}")
    out.print(f"  trials     {_counts(s)}")
    out.print(f"  best       {_best(s)}")
    best = s.get("best") or {}
    if best.get("params"):
        render.print_yaml(out, {"params": best["params"]}, indent=2)
    if best.get("version") is not None:
        out.print(f"  model      {best.get('model')}:{best['version']} (alias best)")
    if s.get("importances"):
        out.print("  importances")
        for k, v in sorted(s["importances"].items(), key=lambda kv: -kv[1]):
            out.print(f"    {k:<28} {v:.3f}")
    if s.get("trials"):
        rows = render.table(None, "#", "state", "value", "step", "job", "params", "reason",
                            keep=("#", "state"))
        for t in s["trials"]:
            value = "-" if t["value"] is None else f"{t['value']:.6g}"
            rows.add_row(str(t["number"]), render.state(t["state"]), value,
                         "-" if t["last_step"] is None else str(t["last_step"]),
                         str(t["job"] or "-"),
                         ", ".join(f"{k}={_short(v)}" for k, v in t["params"].items()),
                         t.get("reason") or "")
        out.print(rows)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _qualified(s: dict) -> str:
    return f"{s['team']}/{s['name']}" if s.get("team") else s["name"]


@tune_app.command("stop")
def stop(study: str = STUDY, as_json: bool = JSON) -> None:
    """Stop a running study: its running trials' jobs are cancelled (resume goes on)."""
    with Client() as c:
        s = c.tune.stop(study)
    if as_json:
        return _json(s)
    out.print(f"study [bold]{_qualified(s)}[/] stopped: {_counts(s)}")


@tune_app.command("resume")
def resume(study: str = STUDY,
           trials: Optional[int] = typer.Option(None, min=1, max=10000, help="Raise the "
                                                "study's trial count (to go on after it "
                                                "ended)."),
           as_json: bool = JSON) -> None:
    """Go on with a stopped or failed study; its finished trials stay."""
    with Client() as c:
        s = c.tune.resume(study, trials)
    if as_json:
        return _json(s)
    out.print(f"study [bold]{_qualified(s)}[/] resumed: {_counts(s)}")
