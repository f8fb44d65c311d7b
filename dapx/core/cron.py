"""Cron line validation for job schedules (Prefect CronSchedule takes the same lines).

Accepts the classic 5-field form a Prefect deployment schedule takes: each field a comma list
of ``*``, ``*/step``, ``n``, ``a-b``, ``a-b/step`` or ``n/step``; month and weekday names
(``jan``, ``mon-fri``); weekday 0..7 (0 and 7 are Sunday); and the ``@hourly``-style
macros. Refused on purpose although croniter takes them: ``L``, ``W``, ``#``, ``?``, ``R``/``H``
(random/hashed) and 6- or 7-field lines, so every accepted line means the same thing to
Prefect and to a person reading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from dapx.errors import InputError

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan feb mar apr may jun jul aug sep oct nov dec").split()
_DAYS = ("sun mon tue wed thu fri sat").split()
_ITEM = re.compile(r"(?P<range>\*|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>[0-9]+))?")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, tuple(_MONTHS)),
    _Field("day of week", 0, 7, tuple(_DAYS)),
)


def _value(field: _Field, token: str, line: str) -> int:
    """One number or name of ``field``; raises InputError when unknown or out of range."""
    if token.isdigit():
        number = int(token)
    elif token.lower() in field.names:
        number = field.low + field.names.index(token.lower())
    else:
        raise InputError(f"cron {field.name} {token!r} in {line!r} is not a number"
                         + (f" or a name ({field.names[0]}..)" if field.names else ""))
    if not field.low <= number <= field.high:
        raise InputError(f"cron {field.name} {number} in {line!r} is out of range "
                         f"{field.low}-{field.high}")
    return number


def _check_item(field: _Field, item: str, line: str) -> None:
    """One comma-separated item of a field; raises InputError saying what is wrong."""
    match = _ITEM.fullmatch(item)
    if not match:
        raise InputError(f"cron {field.name} {item!r} in {line!r} is not valid; use *, n, "
                         "a-b, */step or a-b/step")
    step = match["step"]
    if step is not None and not 1 <= int(step) <= field.high - field.low + 1:
        raise InputError(f"cron {field.name} step {step} in {line!r} must be 1.."
                         f"{field.high - field.low + 1}")
    if match["range"] == "*":
        return
    start, _, end = match["range"].partition("-")
    first = _value(field, start, line)
    if end and _value(field, end, line) < first:
        raise InputError(f"cron {field.name} range {match['range']!r} in {line!r} runs "
                         "backwards; write it low-high")


def validate_cron(line: str) -> str:
    """A 5-field cron line or an ``@daily``-style macro.

    In: the line. Out: the line with runs of blanks collapsed to one space.
    Raises InputError naming the field and what to fix.
    """
    if not isinstance(line, str) or "\n" in line or "\r" in line:
        raise InputError(f"cron line {line!r} must be one line of text")
    fields = line.split()
    if len(fields) == 1 and fields[0].lower() in MACROS:
        return fields[0].lower()
    if len(fields) != 5:
        raise InputError(f"cron line {line!r} has {len(fields)} fields; use 5 "
                         "(minute hour day-of-month month day-of-week), e.g. '*/15 * * * *'")
    for field, text in zip(_FIELDS, fields):
        for item in text.split(","):
            _check_item(field, item, line)
    return " ".join(fields)


# -----------------------------------------------------------------------------------------------
# How often a schedule fires (for "late" in the protection state, X4)

_MACRO_LINES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                "@hourly": "0 * * * *"}
_WINDOW_DAYS = 8 * 366
"""Days scanned for fire times: eight years, so a 29 February schedule fires twice."""


def _expand(field: _Field, text: str, line: str) -> set[int]:
    """The values one (already validated) field matches."""
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        assert match is not None  # validate_cron checked every item
        step = int(match["step"] or 1)
        if match["range"] == "*":
            low, high = field.low, field.high
        else:
            start, _, end = match["range"].partition("-")
            low = _value(field, start, line)
            # "5/15" runs from 5 to the end of the field, as cron reads it
            high = _value(field, end, line) if end else (field.high if match["step"] else low)
        values.update(range(low, high + 1, step))
    return values


def longest_gap(line: str) -> timedelta | None:
    """The longest time between two consecutive fire times of cron ``line`` (a job's
    interval, taken at its widest so a weekday-only job is not called late on Monday).

    In: a cron line (validated here). Out: a timedelta, or None when the line never fires
    twice (``0 0 30 2 *``). Raises InputError for a bad line. Pure: no clock is read.
    """
    from datetime import date

    line = validate_cron(line)
    fields = _MACRO_LINES.get(line, line).split()
    minute, hour, dom, month, dow = (_expand(f, t, line) for f, t in zip(_FIELDS, fields))
    dow = {d % 7 for d in dow}  # 7 is Sunday too
    times = sorted(h * 60 + m for h in hour for m in minute)
    # Day of month and day of week: when both are restricted a day matching either fires
    # (classic cron); when one is "*" only the other restricts.
    either = fields[2] != "*" and fields[4] != "*"
    gap, last_day, first = 0, None, date(2024, 1, 1)
    within = max((b - a for a, b in zip(times, times[1:])), default=0)
    for offset in range(_WINDOW_DAYS):
        day = first + timedelta(days=offset)
        by_dom, by_dow = day.day in dom, (day.weekday() + 1) % 7 in dow
        if day.month not in month or not ((by_dom or by_dow) if either else (by_dom and by_dow)):
            continue
        if last_day is not None:
            gap = max(gap, (day - last_day).days * 1440 - times[-1] + times[0])
        gap, last_day = max(gap, within), day
    if last_day is None or (gap == 0 and len(times) < 2):
        return None
    return timedelta(minutes=gap)


def validate_timezone(name: str) -> str:
    """An IANA time zone name (``Europe/Rome``, ``UTC``); InputError otherwise."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+/-]{1,64}", name):
            raise ValueError(name)
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise InputError(f"time zone {name!r} is not an IANA zone name (e.g. Europe/Rome, "
                         "UTC)") from None
    return name
