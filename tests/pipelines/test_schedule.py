"""Cron schedules: which lines are accepted, when they fire next, and what is due now."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from llmos.pipelines.schedule import check_cron, due, next_after

UTC = timezone.utc


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("text", "normal"), [
    ("0 3 * * *", "0 3 * * *"),
    ("  0   3 * *  * ", "0 3 * * *"),
    ("*/15 9-17 * * 1-5", "*/15 9-17 * * 1-5"),
    ("0 0 1,15 * *", "0 0 1,15 * *"),
    ("0 6 * JAN-MAR Mon,Fri", "0 6 * jan-mar mon,fri"),
    ("0 0 * * 7", "0 0 * * 7"),
    ("@daily", "@daily"),
    ("@HOURLY", "@hourly"),
    ("@weekly", "@weekly"),
    ("@midnight", "@midnight"),
    ("@monthly", "@monthly"),
    ("@yearly", "@yearly"),
    ("@annually", "@annually"),
])
def test_plain_lines_and_aliases_are_accepted_in_normal_form(text: str, normal: str) -> None:
    assert check_cron(text) == normal


@pytest.mark.parametrize(("text", "why"), [
    ("61 * * * *", "bad cron schedule '61 * * * *': out of range"),
    ("0 24 * * *", "out of range"),
    ("0 0 * * 8", "out of range"),
    ("*/0 * * * *", "step '0'"),
    ("0 0 31 2 *", "bad cron schedule '0 0 31 2 *': it never fires"),
    ("* * * * * *", "needs 5 fields (minute hour day-of-month month day-of-week), got 6"),
    ("* * * * * * *", "got 7"),
    ("* * * *", "got 4"),
    ("", "got 0"),
    ("every day", "got 2"),
    ("0 3 * * *\n0 4 * * *", "got 10"),
    ("@reboot", "unknown alias; use one of @annually, @daily"),
    ("@every 5m", "got 2"),
    ("0 0 L * *", "the day of month field 'L' is not plain cron"),
    ("0 0 * * 1#2", "the day of week field '1#2' is not plain cron"),
    ("0 0 * * 5L", "the day of week field '5L' is not plain cron"),
    ("H * * * *", "the minute field 'H' is not plain cron"),
    ("R * * * *", "the minute field 'R' is not plain cron"),
    ("0 0 ? * *", "the day of month field '?' is not plain cron"),
    ("0 0 15W * *", "not plain cron"),
    ("0 0 * MON *", "the month field 'MON' is not plain cron"),
    ("\u0663 * * * *", "the minute field"),
    ("0 0 * * * 2030", "got 6"),
    ("1" * 200, "longer than 100 characters"),
    ("*/100 * * * *", "the minute field '*/100' is not plain cron"),
    ("0 0 1-99999999999999999999 * *", "the day of month field"),
])
def test_bad_lines_are_refused_in_one_line(text: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_cron(text)
    message = str(caught.value)
    assert message.startswith("bad cron schedule ")
    assert why in message
    assert "\n" not in message


def test_a_non_string_is_refused() -> None:
    with pytest.raises(ValueError, match="bad cron schedule 5: must be a string"):
        check_cron(5)  # type: ignore[arg-type]


def test_next_after_is_strictly_after_and_utc() -> None:
    assert next_after("0 3 * * *", at(2024, 1, 1, 2, 59)) == at(2024, 1, 1, 3, 0)
    assert next_after("0 3 * * *", at(2024, 1, 1, 3, 0)) == at(2024, 1, 2, 3, 0)
    assert next_after("@hourly", at(2024, 1, 1, 3, 30)) == at(2024, 1, 1, 4, 0)
    assert next_after("*/15 * * * *", at(2024, 2, 29, 23, 50)) == at(2024, 3, 1, 0, 0)
    assert next_after("0 0 * * mon", at(2024, 1, 3)) == at(2024, 1, 8)
    assert next_after("0 3 * * *", at(2024, 1, 1)).tzinfo == UTC


def test_naive_and_other_zone_datetimes_are_read_as_the_same_instant_in_utc() -> None:
    assert next_after("0 3 * * *", datetime(2024, 1, 1, 2, 0)) == at(2024, 1, 1, 3, 0)
    paris = timezone(timedelta(hours=1))
    # 03:30 in Paris is 02:30 UTC: the 03:00 UTC slot is still ahead.
    assert next_after("0 3 * * *", datetime(2024, 1, 1, 3, 30, tzinfo=paris)) == at(
        2024, 1, 1, 3, 0)


def test_due_fires_for_a_slot_between_since_and_now() -> None:
    assert due("0 3 * * *", since=at(2024, 1, 1, 2, 0), now=at(2024, 1, 1, 3, 0)) == at(
        2024, 1, 1, 3, 0)
    assert due("0 3 * * *", since=at(2024, 1, 1, 2, 0), now=at(2024, 1, 1, 3, 0, 40)) == at(
        2024, 1, 1, 3, 0)


def test_due_is_none_before_the_next_slot_and_after_firing() -> None:
    assert due("0 3 * * *", since=at(2024, 1, 1, 2, 0), now=at(2024, 1, 1, 2, 59, 59)) is None
    fired = at(2024, 1, 1, 3, 0)
    assert due("0 3 * * *", since=fired, now=fired) is None
    assert due("0 3 * * *", since=fired, now=at(2024, 1, 2, 2, 59)) is None
    assert due("0 3 * * *", since=fired, now=at(2024, 1, 1, 1, 0)) is None


def test_a_daemon_down_for_days_fires_once_for_the_latest_slot() -> None:
    since = at(2024, 1, 1, 3, 0)
    now = at(2024, 1, 9, 12, 0)
    assert due("0 3 * * *", since, now) == at(2024, 1, 9, 3, 0)
    assert due("*/5 * * * *", since, now) == at(2024, 1, 9, 12, 0)
    # The daemon records the fire as `since`; the next look finds nothing more.
    assert due("0 3 * * *", at(2024, 1, 9, 3, 0), now) is None


def test_a_clock_stepped_minute_by_minute_fires_each_slot_once() -> None:
    fired: list[datetime] = []
    since = at(2024, 1, 1, 0, 0)
    clock = since
    for _ in range(3 * 60):
        clock += timedelta(minutes=1)
        slot = due("*/20 * * * *", since, clock)
        if slot is not None:
            fired.append(slot)
            since = slot
    assert fired == [at(2024, 1, 1) + timedelta(minutes=20 * k) for k in range(1, 10)]


def test_due_reads_naive_times_as_utc_and_refuses_bad_lines() -> None:
    assert due("@daily", datetime(2024, 1, 1, 12), datetime(2024, 1, 3, 6)) == at(2024, 1, 3)
    with pytest.raises(ValueError, match="bad cron schedule"):
        due("61 * * * *", at(2024, 1, 1), at(2024, 1, 2))
    with pytest.raises(ValueError, match="bad cron schedule"):
        next_after("* * * * * *", at(2024, 1, 1))
