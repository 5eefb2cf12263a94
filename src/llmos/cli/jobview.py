"""How one job is shown: its detail (spec, params as YAML, history), its metrics as a
compact history (a sparkline per metric, or one metric's whole series), and its logs as a
reader wants them (one header per attempt, carriage-return progress bars as their last
state)."""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape

from llmos.cli.render import (print_yaml, printable, progress_text, resources_text, state,
                              table, time_text)

BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24
HEADER = re.compile(r"^--- llmos: attempt \d+ of job \d+ at .* ---$")


def detail(console: Console, job: dict, metrics: list[dict]) -> None:
    """`llmos job show`: the spec, why it waits or how it ended, history and metrics."""
    # What a job or its submitter wrote (name, reason, progress, metric names) is text,
    # never rich markup: escape() keeps a stray '[/x]' from breaking the screen.
    # Control characters (a terminal escape in a name or a failed job's error) are shown as
    # visible \xNN by printable(), so they never reach the terminal.
    console.print(f"[bold]job {job['id']}[/] {escape(printable(job['name'] or ''))}  "
                  f"{state(job['state'])}")
    exit_ = (f"code {job['exit_code']}" if job["exit_code"] is not None else
             (f"signal {job['signal']}" if job["signal"] else "-"))
    rows = [
        ("program", job["program"]),
        ("resources", resources_text(job["resources"])),
        ("priority", job["priority"]),
        ("owner", job["owner"]),
        ("reason", job["reason"] or ""),
        ("attempt", f"{job['attempt']} (failures {job['failures']}, retries allowed "
                    f"{job['max_retries']})"),
        ("timeout", f"{job['timeout_s']:g}s" if job["timeout_s"] else "none"),
        ("depends on", ", ".join(map(str, job["depends_on"])) or "nothing"),
        ("node", job["node"] or "-"),
        ("exit", exit_),
        ("created", time_text(job["created_at"])),
        ("started", time_text(job["started_at"])),
        ("ended", time_text(job["ended_at"])),
    ]
    if job.get("progress"):
        rows.append(("progress", progress_text(job["progress"])))
    for key, value in rows:
        console.print(f"  [dim]{key:>10}[/]  {escape(printable(value))}", highlight=False)
    console.print(f"  [dim]{'params':>10}[/]" + ("" if job["params"] else "  none"))
    if job["params"]:
        print_yaml(console, job["params"], indent=4)
    history = table("History", "at", "from", "to", "attempt", "reason",
                    keep=("at", "from", "to", "attempt"))
    for t in job.get("transitions") or []:
        history.add_row(time_text(t["at"]), t["from_state"] or "", state(t["to_state"]),
                        str(t["attempt"]), escape(printable(t["reason"] or "")))
    console.print(history)
    if metrics:
        console.print(metric_table(metrics))


def series(metrics: list[dict]) -> dict[str, list[dict]]:
    """Points by metric name, in the order they were reported."""
    named: dict[str, list[dict]] = {}
    for m in metrics:
        named.setdefault(m["name"], []).append(m)
    return named


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """At most ``width`` bars, each the mean of its share of the points, scaled between
    the smallest and the largest of them."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return ""
    n = min(width, len(finite))
    buckets = [finite[i * len(finite) // n:(i + 1) * len(finite) // n] for i in range(n)]
    means = [sum(b) / len(b) for b in buckets]
    low, high = min(means), max(means)
    if high == low:
        return BARS[len(BARS) // 2] * n
    return "".join(BARS[round((v - low) / (high - low) * (len(BARS) - 1))] for v in means)


def metric_table(metrics: list[dict]):
    t = table(f"Metrics ({len(metrics)} points)", "name", "latest", "step", "min", "max",
              "history", keep=("latest", "step", "min", "max", "history"))
    for name, points in series(metrics).items():
        values = [p["value"] for p in points]
        last = points[-1]
        t.add_row(escape(printable(name)), f"{last['value']:.4g}",
                  str(last["step"]) if last["step"] is not None else "",
                  f"{min(values):.4g}", f"{max(values):.4g}", sparkline(values))
    return t


def metric_series(console: Console, job_id: int, name: str, points: list[dict]) -> None:
    """`llmos job show ID --metric NAME`: every point, one per line."""
    t = table(f"{escape(name)} of job {job_id} ({len(points)} points)", "step", "value", "at",
              keep=("step", "value", "at"))
    for p in points:
        t.add_row(str(p["step"]) if p["step"] is not None else "", f"{p['value']:.6g}",
                  time_text(p["at"]))
    console.print(t)


def last_state(line: str) -> str:
    """A line that redraws itself with carriage returns (a progress bar) as what it showed
    last."""
    if "\r" not in line:
        return line
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1] if parts else ""


def clean_lines(text: str) -> list[str]:
    """A log's lines as a reader wants them: progress bars as their last state."""
    return [last_state(line) for line in text.split("\n")]


def merged_logs(stdout: str, stderr: str) -> str:
    """Both streams, attempt by attempt: each attempt's header once, then what it wrote to
    stdout, then what it wrote to stderr."""
    out, err = _by_attempt(stdout), _by_attempt(stderr)
    lines: list[str] = []
    for header in list(dict.fromkeys([*out, *err])):
        if header:
            lines.append(header)
        lines.extend(out.get(header, []))
        lines.extend(err.get(header, []))
    return "".join(line + "\n" for line in lines)


def _by_attempt(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in clean_lines(text.rstrip("\n")) if text else []:
        if HEADER.match(line):
            current = line
            sections.setdefault(current, [])
        else:
            sections.setdefault(current, []).append(line)
    return sections


class FollowedLogs:
    """Lines of a followed log, each attempt's header once (it is written to both
    streams)."""

    def __init__(self):
        self.headers: set[str] = set()

    def line(self, text: str) -> str | None:
        """``text``: one event of the stream, that is one line of the log (a carriage
        return inside it arrives as a line break of the event)."""
        text = last_state(text.replace("\n", "\r"))
        if HEADER.match(text):
            if text in self.headers:
                return None
            self.headers.add(text)
        return text
