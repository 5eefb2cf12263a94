"""`llmos top`: a live terminal view of what the machine is doing, refreshed from the API.

Nodes (CPU, memory and GPUs: allocated and measured use, as bars), devices (each GPU's
utilisation and memory), running jobs (with their measured use and run time), pending
jobs (with why each waits) and deployments (replicas, ready workers, queue depth), all
from one ``GET /v1/monitor/overview`` per refresh. The daemon filters that answer to the
token's teams (nodes and devices are shown to every authenticated user), so `top` shows
no more than the API would: it holds no data of its own.

In a terminal it takes the alternate screen and reads keys without blocking (cbreak mode
and ``select`` on stdin): ``q`` quits, any other key refreshes now; Ctrl-C quits too. The
terminal's modes are restored however it ends. ``--once`` prints one frame (for scripts);
without a terminal on stdin it runs until Ctrl-C, and without one on stdout it prints a
frame per refresh.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmos.cli.errors import UsageError
from llmos.cli.render import printable, table
from llmos.sdk.client import Client, DaemonUnreachable

BAR_WIDTH = 12
MAX_ROWS = 20  # per table; the rest are counted
MAX_INTERVAL_S = 3600.0
LEGEND = "[bold]█[/] used  [dim]▒[/] allocated, idle  [dim]·[/] free"


def top(
    interval: float = typer.Option(2.0, "--interval", "-n", help="Seconds between refreshes "
                                   f"(0.2 to {MAX_INTERVAL_S:g})."),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (for "
                              "scripts)."),
) -> None:
    """A live view of nodes, GPUs, running and pending jobs (with why each waits) and
    deployments, refreshed every --interval seconds; q (or Ctrl-C) quits.

    Shows only what your token may see: your teams' jobs and deployments (every team's
    for an administrator), and every node."""
    if not 0.2 <= interval <= MAX_INTERVAL_S:  # nan and inf fail too
        raise UsageError(f"--interval must be between 0.2 and {MAX_INTERVAL_S:g} seconds, "
                         f"not {interval:g}")
    console = Console()
    with Client() as client:
        source = Source(client, timeout_s=max(5.0, 2 * interval))
        frame = source.frame()  # an unreachable daemon or a refused token ends here
        if once:
            console.print(frame)
            return
        try:
            run(console, source, frame, interval)
        except KeyboardInterrupt:
            pass  # Ctrl-C quits, as q does; the terminal is restored on the way out


class Source:
    """The overview, fetched and drawn; a lost daemon after the first frame is shown in
    the header (and retried) rather than ending the view. Each fetch waits at most
    ``timeout_s`` (a hung daemon is "lost", and q still quits within that time)."""

    def __init__(self, client: Client, timeout_s: float = 5.0):
        self.client, self.timeout_s = client, timeout_s
        self.data: dict | None = None
        self.problem: str | None = None

    def frame(self) -> RenderableType:
        try:
            self.data = self.client.request("GET", "/v1/monitor/overview",
                                            timeout=self.timeout_s).json()
            self.problem = None
        except DaemonUnreachable as e:
            if self.data is None:
                raise
            self.problem = str(e)
        return render(self.data, self.client.url, self.problem)


def run(console: Console, source: Source, frame: RenderableType, interval: float) -> None:
    """Refresh until q, Ctrl-C or (without a terminal on stdin) forever."""
    with keys() as wait:
        if not console.is_terminal:
            console.print(frame)
            while "q" not in wait(interval).lower():
                console.print(source.frame())
            return
        with Live(frame, console=console, screen=True, auto_refresh=False) as live:
            while "q" not in wait(interval).lower():
                live.update(source.frame(), refresh=True)


@contextmanager
def keys() -> Iterator[Callable[[float], str]]:
    """A function waiting up to N seconds for keys and returning what was typed ('' when
    nothing was). On a terminal: cbreak mode (keys arrive unbuffered and unechoed, Ctrl-C
    still interrupts), its former modes restored on exit."""
    try:
        fd = sys.stdin.fileno()
        terminal = os.isatty(fd)
    except (AttributeError, OSError, ValueError):
        fd, terminal = -1, False
    if not terminal:
        yield lambda seconds: time.sleep(seconds) or ""
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield lambda seconds: _read_keys(fd, seconds)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_keys(fd: int, seconds: float) -> str:
    ready, _, _ = select.select([fd], [], [], seconds)
    if not ready:
        return ""
    data = os.read(fd, 64)
    return data.decode(errors="replace") if data else "q"  # end of input: quit


# -- drawing -----------------------------------------------------------------------------------


def _t(text) -> str:
    """API text (a job's name, a reason, a node's name) for a cell: no markup and no
    control characters (a terminal escape in a job's name shows as ``\\x1b``)."""
    return escape(printable(text))


def render(data: dict, url: str, problem: str | None = None) -> RenderableType:
    """One frame: a header, then nodes, devices, running, pending and deployments."""
    nodes, running = data.get("nodes") or [], data.get("running") or []
    pending, deployments = data.get("pending") or [], data.get("deployments") or []
    now = datetime.now().strftime("%H:%M:%S")
    header = Text.from_markup(f"[bold]llmos top[/]  {_t(url)}  {now}  [dim]q: quit[/]")
    parts: list[RenderableType] = [header]
    if problem:
        parts.append(Text(f"{printable(problem)} (showing the last answer; retrying)",
                          style="red"))
    parts += [nodes_table(nodes), Text.from_markup(LEGEND), devices_table(nodes),
              running_table(running, data.get("running_total")),
              pending_table(pending, data.get("pending_total")),
              deployments_table(deployments)]
    return Group(*parts)


def bar(used: float | None, allocated: float, total: float, width: int = BAR_WIDTH) -> Text:
    """``width`` cells: measured use, then what is allocated but idle, then free. Use
    beyond the allocation (processes llmos did not start, or a job above its share)
    shows in yellow."""
    if total <= 0:
        return Text("·" * width, style="dim")
    cells = lambda v: max(0, min(width, round((v or 0) / total * width)))  # noqa: E731
    a, u = cells(allocated), cells(used)
    text = Text()
    text.append("█" * min(a, u), style="bold green")
    text.append("█" * max(0, u - a), style="bold yellow")
    text.append("▒" * max(0, a - u), style="cyan")
    text.append("·" * (width - max(a, u)), style="dim")
    return text


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3g}{unit}"


def _gb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.1f}"


def nodes_table(nodes: list[dict]) -> Table:
    t = table(f"Nodes ({len(nodes)})", "node", "state", "resource", "use", "allocated", "used",
              keep=("state", "resource", "use", "allocated", "used"))
    for n in nodes:
        cap, alloc = n.get("capacity") or {}, n.get("allocated") or {}
        usage = n.get("usage") or {}
        first = [_t(n["name"]), _node_state(n.get("state"))]
        t.add_row(*first, "cpu", bar(usage.get("cpu"), alloc.get("cpu", 0), cap.get("cpu", 0)),
                  f"{alloc.get('cpu', 0):g}/{cap.get('cpu', 0):g}", _num(usage.get("cpu")))
        t.add_row("", "", "memory GB", bar(usage.get("memory_mb"), alloc.get("memory_mb", 0),
                                           cap.get("memory_mb", 0)),
                  f"{_gb(alloc.get('memory_mb', 0))}/{_gb(cap.get('memory_mb', 0))}",
                  _gb(usage.get("memory_mb")))
        if cap.get("gpu"):
            busy = [g["util"] for g in n.get("gpus") or [] if g.get("util") is not None]
            used = sum(busy) if busy else None  # GPUs' worth of utilisation
            t.add_row("", "", "gpu", bar(used, alloc.get("gpu", 0), cap["gpu"]),
                      f"{alloc.get('gpu', 0):g}/{cap['gpu']:g}", _num(used))
    if not nodes:
        t.add_row("[dim]no nodes[/]", "", "", "", "", "")
    return t


def _node_state(state: str | None) -> str:
    color = {"ready": "green", "draining": "yellow", "lost": "red"}.get(state or "", "white")
    return f"[{color}]{_t(state or '?')}[/]"


def devices_table(nodes: list[dict]) -> RenderableType:
    gpus = [(n["name"], g) for n in nodes for g in n.get("gpus") or []]
    if not gpus:
        return Text("Devices: no GPUs", style="dim")
    t = table("Devices", "node", "gpu", "name", "allocated", "util", "memory GB",
              keep=("gpu", "allocated", "util", "memory GB"))
    for node, g in gpus:
        util, total, used = g.get("util"), g.get("memory_mb") or 0, g.get("memory_used_mb")
        util_cell = Text.assemble(bar(util, 0, 1, 8), f" {_pct(util)}")
        mem_cell = Text.assemble(bar(used, 0, total, 8), f" {_gb(used)}/{_gb(total)}")
        t.add_row(_t(node), str(g.get("index", "?")), _t(g.get("name") or ""),
                  "yes" if g.get("allocated") else "no", util_cell, mem_cell)
    return t


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def running_table(jobs: list[dict], total: int | None = None) -> Table:
    """``total``: how many run (the overview lists at most a few hundred)."""
    total = max(total or 0, len(jobs))
    t = table(f"Running jobs ({total})", "id", "name", "team", "node", "cpu",
              "memory MB", "gpu", "runtime",
              keep=("id", "node", "cpu", "memory MB", "gpu", "runtime"))
    for j in jobs[:MAX_ROWS]:
        usage = j.get("usage") or {}
        asked = j.get("resources") or {}
        cpu = _num(usage.get("cpu")) + (f"/{asked['cpu']:g}" if "cpu" in asked else "")
        mem = ("-" if usage.get("memory_mb") is None else f"{usage['memory_mb']:.0f}") + (
            f"/{asked['memory_mb']}" if asked.get("memory_mb") else "")
        t.add_row(str(j["id"]), _t(j.get("name") or j.get("program") or ""),
                  _t(j.get("team") or "-"), _t(j.get("node") or "-"), cpu, mem,
                  _pct(usage.get("gpu_util")), _duration(_since(j.get("started_at"))))
    _more(t, jobs, total)
    return t


def pending_table(jobs: list[dict], total: int | None = None) -> Table:
    """``total``: how many wait (the overview lists the longest-waiting few hundred)."""
    total = max(total or 0, len(jobs))
    t = table(f"Pending jobs ({total})", "id", "name", "team", "priority", "waiting",
              "why it waits", keep=("id", "priority", "waiting"))
    for j in jobs[:MAX_ROWS]:
        waited = j.get("waiting_s")
        if waited is None:
            waited = _since(j.get("queued_at"))
        t.add_row(str(j["id"]), _t(j.get("name") or j.get("program") or ""),
                  _t(j.get("team") or "-"), j.get("priority") or "-", _duration(waited),
                  _t(j.get("reason") or "queued"))
    _more(t, jobs, total)
    return t


def deployments_table(deployments: list[dict]) -> Table:
    t = table(f"Deployments ({len(deployments)})", "name", "team", "state", "ready/replicas",
              "queue", keep=("state", "ready/replicas", "queue"))
    for d in deployments[:MAX_ROWS]:
        state = d.get("state") or "?"
        color = {"ready": "green", "starting": "yellow", "degraded": "yellow",
                 "failing": "red", "scaled_to_zero": "dim"}.get(state, "white")
        queue = d.get("queue_depth")
        t.add_row(_t(d["name"]), _t(d.get("team") or "-"),
                  f"[{color}]{_t(state)}[/]", f"{d.get('ready', 0)}/{d.get('replicas', 0)}",
                  "-" if queue is None else str(queue))
    _more(t, deployments)
    return t


def _more(t: Table, rows: list, total: int | None = None) -> None:
    """A last row counting the rows not shown (of ``total``, when the answer was cut)."""
    hidden = max(total or 0, len(rows)) - min(len(rows), MAX_ROWS)
    if hidden > 0:
        t.add_row("", f"[dim]... and {hidden} more[/]", *[""] * (len(t.columns) - 2))


def _since(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        at = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:  # the API's times are UTC
        at = at.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - at).total_seconds())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"
