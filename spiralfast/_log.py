"""Rate-limited logging for things a peer or a handler can trigger at any rate."""

from __future__ import annotations

import logging
import time
from typing import Any

#: At most this many log lines per key per interval; the rest are only counted.
LOG_BURST = 5
LOG_INTERVAL = 10.0


class RateLimitedLog:
    __slots__ = ("logger", "_window")

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._window: dict[Any, list[float]] = {}

    def __call__(self, key: Any, level: int, msg: str, *args: Any, exc_info: Any = None) -> None:
        now = time.monotonic()
        w = self._window.get(key)
        if w is None or now - w[0] > LOG_INTERVAL:
            if w is not None and w[1] > LOG_BURST:
                self.logger.log(level, "(%d similar messages suppressed for %r)", int(w[1] - LOG_BURST), key)
            w = self._window[key] = [now, 0.0]
            if len(self._window) > 10_000:
                self._window.clear()
                self._window[key] = w
        w[1] += 1
        if w[1] <= LOG_BURST:
            self.logger.log(level, msg, *args, exc_info=exc_info)
