"""Time helpers shared by the records (naive local time, like the old API)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def parse_dt(value: Any) -> datetime:
    """A ``datetime`` from a datetime, epoch seconds or an ISO 8601 string."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value)
    return datetime.fromisoformat(str(value))
