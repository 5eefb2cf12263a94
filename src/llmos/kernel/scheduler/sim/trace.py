"""Job traces for the scheduler simulator: reading, checking, filtering, compressing.

Two formats, told apart by the file's name (``.jsonl`` / ``.ndjson``: JSON lines; anything
else: CSV):

**CSV (the Philly trace, as condensed by the Pollux authors)** — a header line, then one
job a line: ``timestamp`` (submission, ``YYYY-MM-DD HH:MM:SS``, or epoch seconds),
``duration`` (seconds it runs once it has its GPUs), ``num_gpus``, ``gpu_time``
(``duration × num_gpus``; read but not needed), ``cluster`` (the virtual cluster: its team).

**JSON lines** — one object a line (blank lines and lines starting with ``#`` skipped):
``submit`` (epoch seconds, or the same date text) and ``duration`` (seconds) required;
optional ``id`` (int), ``gpus`` (0), ``cpu`` (per-GPU share of a node when absent),
``memory_mb`` (likewise), ``priority`` (``low``/``normal``/``high``; ``normal``),
``team`` (none), ``checkpointable`` (true), ``time_limit_s`` (the declared limit, none:
a job that runs past it is stopped there and counted as failed).

A malformed line is a :class:`TraceError` naming the file, the line number and what is
wrong (numbers must be finite, within the caps below); no traceback reaches a user. Filters: one virtual cluster (team), a time window;
a load factor divides the inter-arrival times (2.0: jobs arrive twice as fast).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

PRIORITIES = {"low": 0, "normal": 1, "high": 2}
CSV_COLUMNS = ("timestamp", "duration", "num_gpus", "cluster")
JSON_FIELDS = ("id", "submit", "duration", "gpus", "cpu", "memory_mb", "priority", "team",
               "checkpointable", "time_limit_s")


MAX_SECONDS = 10 * 365 * 86400.0  # a duration or time limit: at most ten years
MAX_GPUS = 4096  # GPUs of one job
MAX_CPU = 1_000_000.0  # cpus of one job
MAX_MEMORY_MB = 1 << 40  # memory of one job
MAX_FIELD = 1024  # characters of one CSV field: checked here, since csv.field_size_limit is
#                   process-wide and other readers (data/readers.py) raise it
MIN_EPOCH, MAX_EPOCH = -62135596800.0, 253402300799.0  # a time: years 1 to 9999 (UTC)


class TraceError(ValueError):
    """A trace that cannot be read; the message names the line and what is wrong."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One recorded job. ``cpu``/``memory_mb`` None: the node's per-GPU share."""

    id: int
    submit: float  # epoch seconds
    duration: float  # run time once started (seconds), never below 1
    gpus: int = 0
    team: str | None = None
    priority: int = 1
    cpu: float | None = None
    memory_mb: int | None = None
    checkpointable: bool = True
    time_limit_s: float | None = None
    line: int = field(default=0, compare=False)  # its line in the trace file (0: none)


def parse_time(text: str) -> float:
    """Epoch seconds from a number or a ``YYYY-MM-DD[ HH:MM:SS]`` text (UTC); ValueError
    for anything else, a number that is not finite or beyond the year 9999 included."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if not math.isfinite(number) or not MIN_EPOCH <= number <= MAX_EPOCH:
        raise ValueError(f"{text[:40]!r} is not a time: epoch seconds must be finite, "
                         "within the years 1 to 9999")
    return number


def load_trace(path: str | Path) -> list[TraceJob]:
    """Every job of the trace at ``path``, in submission order (stable)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is no header
            if path.suffix.lower() in (".jsonl", ".ndjson"):
                jobs = _read_jsonl(f, path)
            else:
                jobs = _read_csv(f, path)
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a text file ({e.reason})") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read the trace ({e.strerror or e})") from None
    if not jobs:
        raise TraceError(f"{path}: no jobs in the trace")
    jobs.sort(key=lambda j: j.submit)
    return jobs


def _number(value, what: str, minimum: float | None = None, integer: bool = False,
            maximum: float | None = None) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, not {shown(value)}") from None
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{what} is too large: {shown(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, not {shown(value)}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{what} must be at least {minimum:g}, not {shown(value)}")
    if maximum is not None and number > maximum:
        cap = "ten years" if maximum == MAX_SECONDS else f"{maximum:,.0f}"
        raise ValueError(f"{what} must be at most {cap}, not {shown(value)}")
    if integer and number != int(number):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    return number


def shown(value) -> str:
    """A value as a message shows it: its repr, cut to 40 characters."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a number too large"
    return text if len(text) <= 40 else text[:37] + "..."


def _read_csv(f, path: Path) -> list[TraceJob]:
    reader = csv.reader(f)
    try:
        return _csv_rows(reader, path)
    except csv.Error as e:  # a NUL byte, a field over csv.field_size_limit (128 KiB) ...
        raise TraceError(f"{path}, line {reader.line_num}: not CSV ({e})") from None


def _csv_rows(reader, path: Path) -> list[TraceJob]:
    header = next(reader, None)
    if header is None:
        raise TraceError(f"{path}: empty file")
    header = [h.strip() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise TraceError(f"{path}, line 1: the header lacks column(s) {', '.join(missing)} "
                         f"(expected {','.join(CSV_COLUMNS)}[,gpu_time])")
    at = {c: header.index(c) for c in CSV_COLUMNS}
    jobs = []
    for row in reader:
        line = reader.line_num
        if not row or not any(x.strip() for x in row):
            continue
        if len(row) != len(header):
            raise TraceError(f"{path}, line {line}: {len(row)} fields, the header has "
                             f"{len(header)}")
        if max(map(len, row)) > MAX_FIELD:
            raise TraceError(f"{path}, line {line}: not CSV (field larger than {MAX_FIELD} "
                             "characters)")
        try:
            submit = parse_time(row[at["timestamp"]])
        except ValueError:
            raise TraceError(f"{path}, line {line}: timestamp {row[at['timestamp']]!r} is "
                             "neither a date (YYYY-MM-DD HH:MM:SS) nor epoch seconds") from None
        try:
            duration = _number(row[at["duration"]], "duration", 0, maximum=MAX_SECONDS)
            gpus = int(_number(row[at["num_gpus"]], "num_gpus", 0, integer=True,
                               maximum=MAX_GPUS))
        except ValueError as e:
            raise TraceError(f"{path}, line {line}: {e}") from None
        team = row[at["cluster"]].strip() or None
        jobs.append(TraceJob(len(jobs) + 1, submit, max(1.0, duration), gpus, team,
                             line=line))
    return jobs


def _read_jsonl(f, path: Path) -> list[TraceJob]:
    jobs: list[TraceJob] = []
    ids: set[int] = set()
    for line, text in enumerate(f, start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}, line {line}: not JSON ({e.msg})") from None
        except (RecursionError, ValueError):  # nested too deep; an int of too many digits
            raise TraceError(f"{path}, line {line}: not JSON a trace can hold (nested too "
                             "deep, or a number too long)") from None
        try:
            job = replace(_json_job(obj, len(jobs) + 1), line=line)
        except ValueError as e:
            raise TraceError(f"{path}, line {line}: {e}") from None
        if job.id in ids:
            raise TraceError(f"{path}, line {line}: id {job.id} appears twice")
        ids.add(job.id)
        jobs.append(job)
    return jobs


def _json_job(obj, default_id: int) -> TraceJob:
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    unknown = sorted(set(obj) - set(JSON_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (known: "
                         f"{', '.join(JSON_FIELDS)})")
    for name in ("submit", "duration"):
        if name not in obj:
            raise ValueError(f"missing field {name!r}")
    submit = obj["submit"]
    if isinstance(submit, str):
        try:
            submit = parse_time(submit)
        except ValueError:
            raise ValueError(f"submit {obj['submit']!r} is neither a date nor epoch "
                             "seconds") from None
    submit = _number(submit, "submit", MIN_EPOCH, maximum=MAX_EPOCH)
    duration = _number(obj["duration"], "duration", 0, maximum=MAX_SECONDS)
    job_id = int(_number(obj.get("id", default_id), "id", 1, integer=True, maximum=2**53))
    gpus = int(_number(obj.get("gpus", 0), "gpus", 0, integer=True, maximum=MAX_GPUS))
    cpu = (None if obj.get("cpu") is None
           else _number(obj["cpu"], "cpu", 0.001, maximum=MAX_CPU))
    memory = (None if obj.get("memory_mb") is None
              else int(_number(obj["memory_mb"], "memory_mb", 1, integer=True,
                               maximum=MAX_MEMORY_MB)))
    priority = obj.get("priority", "normal")
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    team = obj.get("team")
    if team is not None and not isinstance(team, str):
        raise ValueError(f"team must be a string, not {team!r}")
    checkpointable = obj.get("checkpointable", True)
    if not isinstance(checkpointable, bool):
        raise ValueError(f"checkpointable must be true or false, not {checkpointable!r}")
    limit = obj.get("time_limit_s")
    limit = None if limit is None else _number(limit, "time_limit_s", 1, maximum=MAX_SECONDS)
    return TraceJob(job_id, submit, max(1.0, duration), gpus, team or None,
                    PRIORITIES[priority], cpu, memory, checkpointable, limit)


def select(jobs: list[TraceJob], team: str | None = None, start: float | None = None,
           end: float | None = None, load: float = 1.0,
           limit: int | None = None) -> list[TraceJob]:
    """The jobs of one virtual cluster (``team``) submitted in [start, end), at most
    ``limit`` of them, with inter-arrival times divided by ``load``."""
    if load <= 0:
        raise TraceError(f"the load factor must be above 0, not {load:g}")
    kept = [j for j in jobs if (team is None or j.team == team)
            and (start is None or j.submit >= start) and (end is None or j.submit < end)]
    if limit is not None:
        kept = kept[:limit]
    if not kept:
        raise TraceError("no job of the trace passes the filters "
                         f"(virtual cluster {team or 'any'}, window "
                         f"{_when(start)} .. {_when(end)})")
    if load != 1.0:
        t0 = kept[0].submit
        kept = [replace(j, submit=t0 + (j.submit - t0) / load) for j in kept]
    return kept


def teams(jobs: list[TraceJob]) -> dict[str, int]:
    """Virtual cluster -> its number of jobs, busiest first."""
    counts: dict[str, int] = {}
    for j in jobs:
        if j.team:
            counts[j.team] = counts.get(j.team, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _when(t: float | None) -> str:
    if t is None:
        return "*"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def average_gpu_demand(jobs: list[TraceJob]) -> float:
    """GPUs the jobs would keep busy on average if each ran on arrival: the GPU-seconds
    that fall between the 1st and the 99th percentile of submissions, over that span (a
    trace's sparse first weeks, a straggler at its end, or runs far beyond a short window
    would otherwise skew it)."""
    times = sorted(j.submit for j in jobs)
    lo, hi = times[len(times) // 100], times[(len(times) * 99) // 100]
    if hi <= lo:
        return float(sum(j.gpus for j in jobs))
    used = sum(j.gpus * (min(j.submit + j.duration, hi) - j.submit)
               for j in jobs if lo <= j.submit < hi)
    return used / (hi - lo)
