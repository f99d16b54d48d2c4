"""Fast ISO 8601 formatting of epoch floats, equal to
``datetime.fromtimestamp(ts).isoformat()`` (naive local time).

The date-and-time-to-the-second part is cached per second, so formatting a
stream of timestamps costs one ``modf`` and one small format, not a datetime.
"""

from __future__ import annotations

import math
from datetime import datetime

_cache_sec: float | None = None
_cache_prefix = ""


def iso_from_epoch(ts: float) -> str:
    global _cache_sec, _cache_prefix
    # Same rounding as CPython's datetime.fromtimestamp (round half even on the fraction).
    frac, t = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1000000:
        t += 1
        us -= 1000000
    elif us < 0:
        t -= 1
        us += 1000000
    if t != _cache_sec:
        _cache_prefix = datetime.fromtimestamp(t).isoformat()
        _cache_sec = t
    if us:
        return f"{_cache_prefix}.{us:06d}"
    return _cache_prefix
