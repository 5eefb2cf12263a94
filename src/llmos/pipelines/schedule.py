"""Cron schedules for pipeline triggers, read with croniter, always in UTC.

This module owns what a cron line may be (five plain fields, or an alias such as `@daily`)
and the two questions a trigger asks: when does it fire next, and is a firing due between
the last look and now. A daemon that was down for many slots fires once, for the latest.
It keeps no state and reads no clock: every time is handed in.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from croniter import CroniterError, croniter

MAX_CHARS = 100
ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
DAYS = "sun|mon|tue|wed|thu|fri|sat"


def _field(names: str = "") -> re.Pattern[str]:
    value = rf"(?:\d{{1,2}}{'|' + names if names else ''})"
    item = rf"(?:\*|{value}(?:-{value})?)(?:/\d{{1,2}})?"
    return re.compile(rf"{item}(?:,{item})*", re.ASCII)


FIELDS = (_field(), _field(), _field(), _field(MONTHS), _field(DAYS))
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")


def _bad(text: object, why: str) -> ValueError:
    shown = text[:MAX_CHARS] if isinstance(text, str) else text
    return ValueError(f"bad cron schedule {shown!r}: {why}")


def check_cron(text: str) -> str:
    """The schedule in normal form ('0 3 * * *', '@daily'), or ValueError in one line."""
    if not isinstance(text, str):
        raise _bad(text, "must be a string")
    if len(text) > MAX_CHARS:
        raise _bad(text, f"longer than {MAX_CHARS} characters")
    fields = text.lower().split()
    if len(fields) == 1 and fields[0].startswith("@"):
        if fields[0] not in ALIASES:
            raise _bad(text, f"unknown alias; use one of {', '.join(sorted(ALIASES))}")
        return fields[0]
    if len(fields) != 5:
        raise _bad(text, f"needs 5 fields (minute hour day-of-month month day-of-week), "
                         f"got {len(fields)}")
    for field, pattern, name in zip(text.split(), FIELDS, FIELD_NAMES):
        if not pattern.fullmatch(field.lower()):
            raise _bad(text, f"the {name} field {field!r} is not plain cron "
                             "(numbers, names, '*', '-', ',', '/')")
    normal = " ".join(fields)
    try:
        croniter(normal, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except CroniterError as err:
        why = re.sub(r"^\[.*?\]\s*(is not acceptable,\s*)?", "", str(err).splitlines()[0])
        if "find next date" in why:
            why = "it never fires"
        raise _bad(text, why or "not accepted") from None
    return normal


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def next_after(text: str, after: datetime) -> datetime:
    """The first scheduled time strictly after `after` (aware UTC)."""
    after = _utc(after)
    return _utc(croniter(check_cron(text), after).get_next(datetime))


def due(text: str, since: datetime, now: datetime) -> datetime | None:
    """The latest scheduled time t with since < t <= now, or None when there is none."""
    normal = check_cron(text)
    since, now = _utc(since), _utc(now)
    if now <= since:
        return None
    latest = _utc(croniter(normal, now).get_prev(datetime))
    after = next_after(normal, latest)
    if after <= now:
        latest = after
    return latest if latest > since else None

