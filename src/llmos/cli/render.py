"""How the CLI shows things: rich tables, a job's detail, live progress."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

COLORS = {"PENDING": "yellow", "SCHEDULED": "cyan", "RUNNING": "blue", "SUCCEEDED": "green",
          "FAILED": "red", "CANCELLED": "magenta", "PREEMPTED": "yellow"}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def state(name: str) -> str:
    return f"[{COLORS.get(name, 'white')}]{name}[/]"


def _time(ts: str | None) -> str:
    return ts.replace("T", " ")[:19] if ts else "-"


def _res(r: dict) -> str:
    text = f"{r['cpu']:g} cpu, {r['memory_mb']} MB"
    if r.get("gpu"):
        text += f", {r['gpu']} gpu"
    return text


def resources(console: Console, data: dict) -> None:
    table = Table(title="Nodes")
    for col in ("node", "cpu free/total", "memory free/total MB", "gpu free/total", "cores"):
        table.add_column(col)
    for n in data["nodes"]:
        cap, free = n["capacity"], n["free"]
        table.add_row(n["name"], f"{free['cpu']:g}/{cap['cpu']:g}",
                      f"{free['memory_mb']:g}/{cap['memory_mb']:g}",
                      f"{free['gpu']:g}/{cap['gpu']:g}", ",".join(map(str, n["cores"])))
    console.print(table)
    for n in data["nodes"]:
        for g in n["gpus"]:
            console.print(f"  gpu {g['index']}: {g['name']} {g['memory_mb']} MB "
                          f"{'free' if g['free'] else 'in use'}")
    s = data["scheduler"]
    console.print(f"queue: {s['pending']} pending, {s['running']} running; "
                  f"last scheduling pass {s['last_pass_ms']:.2f} ms")


def job_table(console: Console, data: dict) -> None:
    table = Table(title=f"Jobs ({len(data['jobs'])} of {data['total']})")
    for col in ("id", "name", "program", "state", "priority", "resources", "created", "reason"):
        table.add_column(col, overflow="fold")
    for j in data["jobs"]:
        table.add_row(str(j["id"]), j["name"] or "", j["program"], state(j["state"]),
                      j["priority"], _res(j["resources"]), _time(j["created_at"]),
                      j["reason"] or "")
    console.print(table)


def job_detail(console: Console, job: dict, metrics: list[dict]) -> None:
    console.print(f"[bold]job {job['id']}[/] {job['name'] or ''}  {state(job['state'])}")
    rows = [
        ("program", job["program"]),
        ("params", str(job["params"])),
        ("resources", _res(job["resources"])),
        ("priority", job["priority"]),
        ("owner", job["owner"]),
        ("reason", job["reason"] or ""),
        ("attempt", f"{job['attempt']} (failures {job['failures']}, retries allowed "
                    f"{job['max_retries']})"),
        ("timeout", f"{job['timeout_s']:g}s" if job["timeout_s"] else "none"),
        ("depends on", ", ".join(map(str, job["depends_on"])) or "nothing"),
        ("node", job["node"] or "-"),
        ("exit", f"code {job['exit_code']}" if job["exit_code"] is not None else
                 (f"signal {job['signal']}" if job["signal"] else "-")),
        ("created / started / ended",
         f"{_time(job['created_at'])} / {_time(job['started_at'])} / {_time(job['ended_at'])}"),
    ]
    if job.get("progress"):
        rows.append(("progress", progress_text(job["progress"])))
    for key, value in rows:
        console.print(f"  [dim]{key:>26}[/]  {value}")
    history = Table(title="History")
    for col in ("at", "from", "to", "attempt", "reason"):
        history.add_column(col, overflow="fold")
    for t in job.get("transitions") or []:
        history.add_row(_time(t["at"]), t["from_state"] or "", state(t["to_state"]),
                        str(t["attempt"]), t["reason"] or "")
    console.print(history)
    if metrics:
        latest: dict[str, dict] = {}
        for m in metrics:
            latest[m["name"]] = m
        table = Table(title=f"Metrics ({len(metrics)} points; latest shown)")
        for col in ("name", "value", "step", "at"):
            table.add_column(col)
        for name, m in latest.items():
            table.add_row(name, f"{m['value']:.6g}", str(m["step"] if m["step"] is not None else ""),
                          _time(m["at"]))
        console.print(table)


def artifact_table(console: Console, arts: list[dict]) -> None:
    table = Table(title="Artifacts")
    for col in ("id", "name", "kind", "size", "sha256", "job", "parents", "created"):
        table.add_column(col)
    for a in arts:
        table.add_row(str(a["id"]), a["name"], a["kind"], str(a["size"]), a["sha256"][:12],
                      str(a["job_id"] or ""), ",".join(map(str, a["parents"])),
                      _time(a["created_at"]))
    console.print(table)


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


def watch(console: Console, client, job_id: int, quiet: bool = False) -> dict:
    """Live progress of a job until it ends; returns the ended job."""
    columns = (TextColumn("job {task.fields[job]} {task.fields[state]}"), BarColumn(),
               TextColumn("{task.fields[count]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=quiet) as progress:
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


def dataset_stats(console: Console, v: dict) -> None:
    stats = v["stats"]
    table = Table(title=f"{v['dataset']}:{v['version']}")
    for col in ("split", "documents", "text", "tokens", "labels"):
        table.add_column(col)
    for split, s in stats.get("splits", {}).items():
        labels = ", ".join(f"{k} {n}" for k, n in (s.get("labels") or {}).items())
        table.add_row(split, str(s["documents"]), size_text(s["text_bytes"]),
                      str(s.get("tokens", "-")), labels)
    table.add_row("all", str(stats.get("documents", 0)), size_text(stats.get("text_bytes", 0)),
                  str(stats.get("tokens", "-")),
                  ", ".join(f"{k} {n}" for k, n in (stats.get("labels") or {}).items()))
    console.print(table)
    dataset_removed(console, stats)


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
    shards = Table(title="Shards")
    for col in ("split", "name", "rows", "text", "artifact", "sha256"):
        shards.add_column(col)
    for s in v["shards"]:
        shards.add_row(s["split"], s["name"], str(s["rows"]), size_text(s["text_bytes"]),
                       str(s["artifact_id"]), s["sha256"][:12])
    console.print(shards)
    inputs = Table(title="Inputs")
    for col in ("file", "bytes", "encoding", "sha256", "problem"):
        inputs.add_column(col, overflow="fold")
    for f in v["lineage"].get("inputs", []):
        inputs.add_row(f["path"], str(f["bytes"]), f.get("encoding") or "-",
                       (f.get("sha256") or "")[:12], f.get("error") or "")
    console.print(inputs)


def audit_table(console: Console, records: list[dict]) -> None:
    table = Table()
    for col in ("id", "at", "actor", "action", "target", "outcome", "request"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(str(r["id"]), _time(r["at"]), r["actor"], r["action"], r["target"],
                      r["outcome"], r["request_id"][:12])
    console.print(table)


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
        console.print(f"  {key:<14} {value}")
    console.print("  lineage")
    for key, value in v["lineage"].items():
        console.print(f"    {key:<12} {value}")
    if v["metrics"]:
        console.print("  metrics")
        for key, value in v["metrics"].items():
            console.print(f"    {key:<12} {value}")
    table = Table(title="Files")
    for col in ("file", "size", "sha256", "artifact"):
        table.add_column(col)
    for f in v["files"]:
        table.add_row(f["path"], size_text(f["size"]), f["sha256"][:16], str(f["artifact_id"]))
    console.print(table)
