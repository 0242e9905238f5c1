"""Durations as operators type them (`24h`, `15m`, `30s`, `500ms`, `7d`, `1h30m`, `0`), and times as they read them."""

from __future__ import annotations

import math
import re
from datetime import datetime

from bullwait.errors import BadArgument


class BadDuration(BadArgument):
    """A duration that does not parse; the message shows the accepted forms."""


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_FORMS = "use a number with a unit, e.g. 24h, 15m, 30s, 500ms, 7d, 1h30m, or 0"
# Longer than any job lives; past it, a float loses whole milliseconds and then overflows.
MAX_DURATION_MS = 36_500 * _UNITS_MS["d"]


def parse_duration_ms(text: str, what: str = "duration") -> int:
    """Milliseconds in `text`. A bare `0` is allowed; other bare numbers are ambiguous and refused."""
    value = (text or "").strip().lower()
    if value == "0":
        return 0
    if not value:
        raise BadDuration(f"{what}: empty; {_FORMS}")
    pos = 0
    total = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise BadDuration(f"{what}: cannot read {_shown(text)}; {_FORMS}")
    if not math.isfinite(total) or total > MAX_DURATION_MS:
        raise BadDuration(f"{what}: {_shown(text)} is longer than 36500d (100 years); use a shorter duration")
    return round(total)


def _shown(text: str) -> str:
    """The operator's input for a message, cut short: a pasted number can be 400 digits."""
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def format_ms(ms: float | int | None) -> str:
    """Short human form: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`."""
    if ms is None:
        return "-"
    sign = "-" if ms < 0 else ""
    ms = abs(float(ms))
    if ms < 1000:
        return f"{sign}{ms:.0f}ms"
    s = ms / 1000
    if s < 60:
        return f"{sign}{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{sign}{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{sign}{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{sign}{d}d{h:02d}h"


def local_time(ms: int | None) -> str | None:
    """Epoch milliseconds as this host's local time, ISO 8601 with offset."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="milliseconds")
