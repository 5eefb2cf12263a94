"""`llmos events [-f]` (the event log, followed live with -f) and `llmos alerts ls | load`
(the alert rules in force and what fires; replacing the rules from a YAML file)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmos.cli.errors import UsageError
from llmos.cli.render import printable
from llmos.monitor.kinds import KINDS, parse_kinds
from llmos.sdk.client import Client

alerts_app = typer.Typer(help="Alert rules and what fires: ls, load.", no_args_is_help=True)
out = Console()
JSON = typer.Option(False, "--json", help="Print JSON.")


def _kinds(kind: str | None) -> list[str] | None:
    try:
        return parse_kinds(kind)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _cell(text) -> str:
    """API text for a rich table cell: no markup, no control characters."""
    return escape(printable(text))


def line(e: dict) -> str:
    """One event as one line: time, kind, subject, action, state, team, what it says
    (control characters shown as ``\\xNN``: never a terminal escape, never a second line)."""
    try:
        at = datetime.fromisoformat(e["at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (KeyError, ValueError):
        at = str(e.get("at", ""))
    detail = e.get("detail") or {}
    what = detail.get("message") or detail.get("reason") or ""
    if not what and detail.get("version") is not None:
        what = f"version {detail['version']}"
    if not what and detail.get("changed"):
        what = "changed " + ", ".join(detail["changed"])
    parts = [at, f"#{e['id']}", e["kind"], str(e["subject"]), e["action"],
             e.get("state") or "", f"team={e['team']}" if e.get("team") else "", what]
    # A failed job's reason is its own error text: control characters become visible \xNN
    return printable(" ".join(str(p) for p in parts if p))


def events(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing events as "
                                "they happen (Ctrl-C stops)."),
    kind: str | None = typer.Option(None, "--kind", help="Only these kinds, comma-"
                                       f"separated: {', '.join(KINDS)}."),
    subject: str | None = typer.Option(None, "--subject", help="Only this subject: a "
                                          "job's id, or a deployment's, model's, dataset's, "
                                          "node's or alert rule's name."),
    since: int | None = typer.Option(None, "--since", min=0, help="Only events after "
                                        "this id."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="How many past events "
                              "to print (without --follow)."),
    as_json: bool = JSON,
) -> None:
    """Changes of jobs, deployments, models, datasets and nodes, and alerts firing and
    resolving, one per line (of your teams; administrators see all)."""
    kinds = _kinds(kind)
    with Client() as c:
        if not follow:
            found = _past(c, kinds, subject, since, limit)
            if as_json:
                sys.stdout.write(json.dumps(found, indent=2) + "\n")
            for e in [] if as_json else found:
                out.print(escape(line(e)), highlight=False, soft_wrap=True)
            return
        try:
            for e in c.monitor.follow_events(kinds, subject, since):
                sys.stdout.write((json.dumps(e) if as_json else line(e)) + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
    # The daemon ended the stream (the token was revoked, or the daemon is stopping).
    typer.echo("error: the daemon closed the event stream (the token was revoked or "
               "expired, or the daemon is stopping)", err=True)
    raise typer.Exit(1)


def _past(c: Client, kinds, subject, since: int | None, limit: int) -> list[dict]:
    """Past events: the newest ``limit``, or up to ``limit`` after id ``since``, following
    the daemon's cursor (``next``) past other teams' events."""
    if since is None:
        return c.monitor.events(kinds, subject, None, limit)
    found: list[dict] = []
    while len(found) < limit:
        page = c.monitor.events_page(kinds, subject, since, limit - len(found))
        found.extend(page["events"])
        nxt = page.get("next", since)
        if nxt <= since:  # nothing newer (or an id that may still commit)
            break
        since = nxt
    return found


@alerts_app.command("ls")
def alerts_ls(as_json: bool = JSON) -> None:
    """The alert rules in force and the alerts firing now (of your teams)."""
    with Client() as c:
        data = c.monitor.alerts()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    rules = Table(title="alert rules", title_justify="left")
    for col in ("name", "kind", "severity", "params", "for", "webhook"):
        rules.add_column(col)
    for r in data["rules"]:  # params: shown to administrators only
        params = ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()) or "-"
        rules.add_row(_cell(r["name"]), r["kind"], r["severity"], _cell(params),
                      f"{r.get('for_s', 0):g} s", "yes" if r["webhook"] else "-")
    out.print(rules if data["rules"] else "no alert rules (llmos alerts load FILE)")
    if not data["firing"]:
        out.print("nothing firing")
        return
    firing = Table(title="firing", title_justify="left")
    for col in ("rule", "severity", "subject", "since", "team", "message"):
        firing.add_column(col)
    for f in data["firing"]:
        firing.add_row(_cell(f["rule"]), f["severity"], _cell(f["key"]), f["since"][:19],
                       _cell(f["team"] or "-"), _cell(f["message"]))
    out.print(firing)


@alerts_app.command("load")
def alerts_load(file: Path = typer.Argument(..., help="The rules file (YAML: rules: "
                                            "[{name, kind, severity, params, for_s, "
                                            "webhook}])."),
                as_json: bool = JSON) -> None:
    """Replace the alert rules with those of FILE (system administrators). A malformed
    file is refused, naming the rule and the field; the rules in force stay."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no such file: {file}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    with Client() as c:
        data = c.monitor.load_alert_rules(text)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    out.print(f"{len(data['rules'])} alert rule(s) in force: "
              f"{_cell(', '.join(r['name'] for r in data['rules'])) or '-'}")
