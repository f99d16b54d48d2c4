from __future__ import annotations

import time
from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from spiralfast.timefmt import iso_from_epoch


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_matches_datetime_isoformat(ts: float) -> None:
    assert iso_from_epoch(ts) == datetime.fromtimestamp(ts).isoformat()


def test_now_and_whole_seconds() -> None:
    now = time.time()
    assert iso_from_epoch(now) == datetime.fromtimestamp(now).isoformat()
    assert iso_from_epoch(1700000000.0) == datetime.fromtimestamp(1700000000.0).isoformat()
