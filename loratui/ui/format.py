"""Short, fixed-width figures for panels: numbers, durations, clock times."""

from __future__ import annotations

import math
import time


def number(value, digits: int = 4) -> str:
    """A float in at most about 9 characters: 3.142, 1.2e-05, nan, inf; '-' when missing."""
    if value is None:
        return "-"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 3, 1)}e}"


def rate(value) -> str:
    """Tokens per second and the like: 315, 1.2k, 45.1k."""
    if value is None:
        return "-"
    value = float(value)
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def duration(seconds: float | None) -> str:
    """1m05s, 2h03m, 45s; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def clock(unix_time: float | None) -> str:
    """HH:MM:SS in local time (tests pin TZ)."""
    if unix_time is None:
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(unix_time))


def mib(value) -> str:
    """Memory in MiB, shown in GiB from 1 GiB up."""
    if value is None:
        return "-"
    value = float(value)
    if value >= 1024:
        return f"{value / 1024:.1f} GiB"
    return f"{value:.0f} MiB"


# One mark per severity everywhere (event rows, the banner, the health panel, alert details),
# so a symbol means the same thing in every panel, colour or not.
SEVERITY_MARKS = {"critical": "✗", "warning": "!", "info": "·", "good": "✓"}
SEVERITY_STYLES = {"critical": "bold red", "warning": "bold yellow", "info": "", "good": "green"}


def plain(value) -> str:
    """Any event value as a person reads it: no None, no Python brackets or quotes."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, dict):
        return ", ".join(f"{str(key).replace('_', ' ')} {plain(inner)}" for key, inner in value.items())
    if isinstance(value, (list, tuple)):
        return "; ".join(plain(item) for item in value) if value else "none"
    return str(value)
