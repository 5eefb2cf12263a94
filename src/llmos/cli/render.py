"""How the CLI shows things: rich tables (never wrapping an id, a state or a date), nested
values as YAML, datasets, models and the audit log, and a job's live progress (plain lines
when the output is not a terminal). One job's detail and logs: ``jobview``."""

from __future__ import annotations

import re
import time

import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

COLORS = {"PENDING": "yellow", "SCHEDULED": "cyan", "RUNNING": "blue", "SUCCEEDED": "green",
          "FAILED": "red", "CANCELLED": "magenta", "PREEMPTED": "yellow"}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def printable(text, newlines: bool = False) -> str:
    """``text`` (a job's name or reason, an event's detail: whatever the API answered) with
    every C0/C1 control character and DEL shown as a visible ``\\xNN`` (line breaks too,
    unless ``newlines``), so that no text a job wrote can move the cursor, clear the
    screen, retitle the terminal, set its clipboard or fake another line (rich's
    ``escape`` only stops markup: use both when the text goes through markup)."""
    pattern = _CONTROL_BUT_NEWLINE if newlines else _CONTROL
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def table(title: str | None, *columns: str, keep: tuple[str, ...] = ()) -> Table:
    """A table whose ``keep`` columns (ids, states, dates, numbers) are never wrapped, so
    that "SUCCEEDED" or a date stays whole at 80 columns; the other columns fold."""
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for col in columns:
        if col in keep:
            t.add_column(col, no_wrap=True)
        else:
            t.add_column(col, overflow="fold", min_width=len(col))
    return t


def yaml_text(value) -> str:
    """Nested data (a recipe, a lineage, metrics) as YAML a person reads, not a dict."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=76).rstrip("\n")


def print_yaml(console: Console, value, indent: int = 4) -> None:
    pad = " " * indent
    for line in yaml_text(value).splitlines():
        console.print(pad + line, markup=False, highlight=False, soft_wrap=True)


def state(name: str) -> str:
    return f"[{COLORS.get(name, 'white')}]{name}[/]"


def _time(ts: str | None) -> str:
    return ts.replace("T", " ")[:19] if ts else "-"


def resources_text(r: dict) -> str:
    text = f"{r['cpu']:g} cpu, {r['memory_mb']} MB"
    if r.get("gpu"):
        text += f", {r['gpu']} gpu"
    return text


def nodes(console: Console, data: list[dict]) -> None:
    rows = table("Nodes", "node", "state", "labels", "cpu free/total", "memory free/total MB",
                 "gpu free/total", "jobs", "address")
    for n in data:
        cap, free = n["capacity"], n["free"]
        state = n["state"] + (f" ({n['reason']})" if n.get("reason") else "")
        rows.add_row(n["name"], state,
                     ",".join(f"{k}={v}" for k, v in sorted(n.get("labels", {}).items())) or "-",
                     f"{free['cpu']:g}/{cap['cpu']:g}",
                     f"{free['memory_mb']:g}/{cap['memory_mb']:g}",
                     f"{free['gpu']:g}/{cap['gpu']:g}", str(n.get("running_jobs", 0)),
                     n.get("address") or "-")
    console.print(rows)


def resources(console: Console, data: dict) -> None:
    nodes = table("Nodes", "node", "cpu free/total", "memory free/total MB", "gpu free/total",
                  "cores")
    for n in data["nodes"]:
        cap, free = n["capacity"], n["free"]
        nodes.add_row(n["name"], f"{free['cpu']:g}/{cap['cpu']:g}",
                      f"{free['memory_mb']:g}/{cap['memory_mb']:g}",
                      f"{free['gpu']:g}/{cap['gpu']:g}", ",".join(map(str, n["cores"])))
    console.print(nodes)
    for n in data["nodes"]:
        for g in n["gpus"]:
            console.print(f"  gpu {g['index']}: {g['name']} {g['memory_mb']} MB "
                          f"{'free' if g['free'] else 'in use'}")
    s = data["scheduler"]
    console.print(f"queue: {s['pending']} pending, {s['running']} running; "
                  f"last scheduling pass {s['last_pass_ms']:.2f} ms")
    iso = data.get("isolation")
    if iso:
        console.print(f"job isolation: {iso['level']} ({iso['detail']})", markup=False)


def job_table(console: Console, data: dict) -> None:
    jobs = table(f"Jobs ({len(data['jobs'])} of {data['total']})", "id", "name", "program",
                 "state", "prio", "resources", "created", "reason",
                 keep=("id", "state", "prio", "created"))
    for j in data["jobs"]:
        jobs.add_row(str(j["id"]), escape(printable(j["name"] or "")),
                     escape(printable(j["program"])), state(j["state"]),
                     j["priority"], resources_text(j["resources"]),
                     _time(j["created_at"])[:16], escape(printable(j["reason"] or "")))
    console.print(jobs)


def artifact_table(console: Console, arts: list[dict]) -> None:
    arts_table = table("Artifacts", "id", "name", "kind", "size", "sha256", "job", "parents",
                       "created", keep=("id", "size", "sha256", "job", "created"))
    for a in arts:
        arts_table.add_row(str(a["id"]), a["name"], a["kind"], str(a["size"]),
                           a["sha256"][:12], str(a["job_id"] or ""),
                           ",".join(map(str, a["parents"])), _time(a["created_at"]))
    console.print(arts_table)


def progress_text(p: dict) -> str:
    """'1.2 GB/2.0 GB bytes  files 3/10  documents 120000' from a job's progress."""
    unit = p.get("unit")
    fmt = size_text if unit == "bytes" else (lambda v: f"{v:g}")
    text = fmt(p["done"]) + (f"/{fmt(p['total'])}" if p.get("total") else "")
    if unit and unit != "bytes":
        text += f" {unit}"
    for key, value in (p.get("info") or {}).items():
        text += f"  {key} {value}"
    return text


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def watch(console: Console, client, job_id: int, quiet: bool = False,
          every_s: float = 5.0) -> dict:
    """Follow a job until it ends; returns the ended job. On a terminal: a live progress
    bar. Elsewhere (a log file, a pipe): a plain line when the state changes, progress
    passes another tenth, or ``every_s`` seconds pass, so a long job is never silent."""
    if quiet:
        return client.jobs.wait(job_id, poll=0.5)
    if not console.is_terminal:
        return _watch_lines(console, client, job_id, every_s)
    columns = (TextColumn("job {task.fields[job]} {task.fields[state]}"), BarColumn(),
               TextColumn("{task.fields[count]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("job", total=None, job=job_id, state="", count="")
        while True:
            job = client.jobs.get(job_id)
            p = job.get("progress") or {}
            done, total = p.get("done") or 0, p.get("total")
            count = progress_text(p) if p else ""
            progress.update(task, completed=done, total=total, state=state(job["state"]),
                            count=count)
            if job["state"] in TERMINAL:
                return job
            time.sleep(0.5)


def _watch_lines(console: Console, client, job_id: int, every_s: float) -> dict:
    started = time.monotonic()
    shown: tuple = ()
    shown_at = started
    while True:
        job = client.jobs.get(job_id)
        p = job.get("progress") or {}
        tenth = int(10 * p["done"] / p["total"]) if p.get("total") else None
        now = time.monotonic()
        if (job["state"], tenth) != shown or now - shown_at >= every_s:
            text = progress_text(p) if p else ""
            console.print(f"job {job_id} {job['state']}  {printable(text)}  "
                          f"{now - started:.0f} s",
                          markup=False, highlight=False, soft_wrap=True)
            shown, shown_at = (job["state"], tenth), now
        if job["state"] in TERMINAL:
            return job
        time.sleep(0.5)


def time_text(ts: str | None) -> str:
    return _time(ts)


# -- datasets -------------------------------------------------------------------------------


def dataset_removed(console: Console, stats: dict) -> None:
    """What each step removed or changed, by reason."""
    inp = stats.get("input", {})
    console.print(f"  read {inp.get('documents', 0)} documents from {inp.get('files', 0)} files "
                  f"({size_text(inp.get('bytes', 0))}); {inp.get('bad_files', 0)} bad files, "
                  f"{inp.get('bad_records', 0)} bad records")
    for what in ("removed", "changed"):
        for step, counts in (stats.get(what) or {}).items():
            text = ", ".join(f"{k} {v}" for k, v in counts.items())
            console.print(f"  [dim]{step:>22}[/]  {what}: {text}")


def dataset_version(console: Console, v: dict) -> None:
    rows = [("dataset", f"{v['dataset']}:{v['version']}"),
            ("content hash", v["content_hash"]),
            ("created", _time(v["created_at"])),
            ("job", str(v["job_id"] or "-")),
            ("schema", ", ".join(f"{k} {t}" for k, t in v["schema"].items())),
            ("documents", str(v["stats"].get("documents", 0))),
            ("sources", ", ".join(v["lineage"].get("sources", [])))]
    for key, value in rows:
        console.print(f"  [dim]{key:>14}[/]  {value}", highlight=False)
    steps = [next(iter(s)) for s in v["lineage"].get("recipe", {}).get("steps", [])]
    console.print(f"  [dim]{'steps':>14}[/]  {' → '.join(steps) or '(none)'}")
    shards = table("Shards", "split", "name", "rows", "text", "artifact", "sha256",
                   keep=("split", "rows", "text", "artifact", "sha256"))
    for s in v["shards"]:
        shards.add_row(s["split"], s["name"], str(s["rows"]), size_text(s["text_bytes"]),
                       str(s["artifact_id"]), s["sha256"][:12])
    console.print(shards)
    inputs = table("Inputs", "file", "bytes", "encoding", "sha256", "problem",
                   keep=("bytes", "sha256"))
    for f in v["lineage"].get("inputs", []):
        inputs.add_row(f["path"], str(f["bytes"]), f.get("encoding") or "-",
                       (f.get("sha256") or "")[:12], f.get("error") or "")
    console.print(inputs)


def audit_table(console: Console, records: list[dict]) -> None:
    audit = table(None, "id", "at", "actor", "action", "target", "outcome", "request",
                  keep=("id", "at", "outcome", "request"))
    for r in records:
        audit.add_row(str(r["id"]), _time(r["at"]), r["actor"], r["action"], r["target"],
                      r["outcome"], r["request_id"][:12])
    console.print(audit)


def model_version(console: Console, v: dict) -> None:
    aliases = f"  ({', '.join('@' + a for a in v['aliases'])})" if v["aliases"] else ""
    console.print(f"[bold]{v['model']}:{v['version']}[/]{aliases}")
    info = v["info"]
    rows = [("architecture", v["architecture"] or info.get("model_type")), ("task", v["task"]),
            ("parameters", f"{v['parameters']:,}"), ("size", size_text(v["size_bytes"])),
            ("dtype", v["dtype"]), ("context", v["context_length"] or "-"),
            ("tokenizer", "yes" if info.get("tokenizer_files") else "none"),
            ("chat template", "yes" if info.get("chat_template") else "no"),
            ("labels", ", ".join(info.get("labels") or []) or "-"),
            ("owner", v["owner"]), ("created", time_text(v["created_at"])), ("job", v["job_id"])]
    for key, value in rows:
        console.print(f"  {key:<14} {value}", highlight=False)
    for what in ("lineage", "metrics"):
        if v[what]:
            console.print(f"  {what}")
            print_yaml(console, v[what], indent=4)
    files = table("Files", "file", "size", "sha256", "artifact",
                  keep=("size", "sha256", "artifact"))
    for f in v["files"]:
        files.add_row(f["path"], size_text(f["size"]), f["sha256"][:16], str(f["artifact_id"]))
    console.print(files)
