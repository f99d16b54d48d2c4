"""Logging helpers: no floods, and JSON lines that say which node wrote them.

:class:`BackoffLog` is for every condition that can repeat at any rate (Redis down,
a peer unreachable, a peer refused, bad frames from one peer): the first occurrence is
logged at once; repeats are counted, and logged again only after a delay that doubles
each time (1 s, 2 s, 4 s, ... up to ``maximum``), each line saying how many times the
condition occurred since the previous line.  When the condition stops occurring for a
while, the next occurrence is "first" again.

:class:`JsonFormatter` writes one JSON object per record, with the ``node_id`` of the
node (set by the command line, or per record with ``extra={"node_id": ...}``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any

from .safetext import clean, mask_secrets

#: First delay before a repeated condition is logged again (seconds).
BACKOFF_INITIAL = 1.0
#: The delay doubles up to this (seconds).
BACKOFF_MAX = 300.0
#: Keys remembered at most; beyond it the oldest are forgotten (a peer can invent keys).
MAX_KEYS = 10_000


class _Entry:
    __slots__ = ("first", "last_log", "last_seen", "interval", "suppressed", "total")

    def __init__(self, now: float, initial: float) -> None:
        self.first = now
        self.last_log = now
        self.last_seen = now
        self.interval = initial
        self.suppressed = 0
        self.total = 1


class BackoffLog:
    """Log a repeated condition on its first occurrence, then with exponential back-off.

    ``log(key, level, msg, *args)`` logs ``msg % args`` when ``key`` is new (or was quiet
    for ``forget_after`` seconds, by default twice the current delay but at least 60 s);
    otherwise it only counts, and logs again once the current delay has passed since the
    previous line, appending ``(N more since the last report, T in all; next report in
    at most D s)``.  The delay then doubles, up to ``maximum``.  Returns whether a line
    was written.

    ``clear(key, ...)`` ends a condition: it forgets the key and, when a message is
    given and the condition had been logged, logs it (for "Redis is back" lines).

    ``clock`` is for tests.
    """

    __slots__ = ("logger", "initial", "factor", "maximum", "forget_after", "_clock", "_entries")

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
        initial: float = BACKOFF_INITIAL,
        maximum: float = BACKOFF_MAX,
        factor: float = 2.0,
        forget_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.logger = logger
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.forget_after = forget_after
        self._clock = clock
        self._entries: dict[Hashable, _Entry] = {}

    def __call__(self, key: Hashable, level: int, msg: str, *args: Any, exc_info: Any = None) -> bool:
        now = self._clock()
        e = self._entries.get(key)
        if e is not None:
            quiet = self.forget_after if self.forget_after is not None else max(60.0, 2 * e.interval)
            if now - e.last_seen > quiet:
                e = None
        if e is None:
            if len(self._entries) >= MAX_KEYS:
                # Forget the oldest half; a flood of new keys never grows memory unbounded.
                for k in list(self._entries)[: MAX_KEYS // 2]:
                    del self._entries[k]
            self._entries[key] = _Entry(now, self.initial)
            self.logger.log(level, msg, *args, exc_info=exc_info)
            return True
        e.last_seen = now
        e.total += 1
        if now - e.last_log < e.interval:
            e.suppressed += 1
            return False
        if not self.logger.isEnabledFor(level):
            e.suppressed += 1
            return False
        n = e.suppressed + 1
        e.interval = min(self.maximum, e.interval * self.factor)
        note = (f" ({n} more since the last report, {e.total} in {_span(now - e.first)}; "
                f"next report in at most {_span(e.interval)})")
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        self.logger.log(level, "%s%s", text, note, exc_info=exc_info)
        e.last_log = now
        e.suppressed = 0
        return True

    def clear(self, key: Hashable, level: int = logging.INFO, msg: str | None = None, *args: Any) -> bool:
        """The condition ``key`` is over; log ``msg % args`` if it had been reported."""
        e = self._entries.pop(key, None)
        if e is None or msg is None:
            return False
        self.logger.log(level, "%s (after %d occurrences in %s)", msg % args if args else msg, e.total,
                        _span(self._clock() - e.first))
        return True

    def count(self, key: Hashable) -> int:
        """How many times ``key`` occurred since it was first (or last forgotten)."""
        e = self._entries.get(key)
        return e.total if e is not None else 0

    def active(self, key: Hashable) -> bool:
        return key in self._entries


#: The old name: every rate-limited log in the package now backs off exponentially.
RateLimitedLog = BackoffLog


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


class NodeLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that stamps ``node_id`` on every record it writes, for processes that
    run several nodes (``LocalMesh``, tests): ``NodeLogAdapter(log, core.node_id)``.
    :class:`JsonFormatter` and :class:`TextFormatter` print it; :class:`BackoffLog`
    accepts it in place of a logger."""

    def __init__(self, logger: logging.Logger, node_id: str) -> None:
        super().__init__(logger, {"node_id": node_id})

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**(self.extra or {}), **extra} if extra else self.extra
        return msg, kwargs


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``node_id``,
    ``msg`` and, when there is one, ``exc`` (the formatted traceback).

    ``node_id`` comes from the record (``extra={"node_id": ...}``) or else from the
    formatter's ``node_id`` attribute, which the command line sets once the node's id is
    known.
    """

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "node_id": getattr(record, "node_id", None) or self.node_id,
            "msg": mask_secrets(record.getMessage()),
        }
        if record.exc_info:
            out["exc"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(out, default=str)  # JSON escapes control characters


class TextFormatter(logging.Formatter):
    """``time level logger [node_id]: message`` (``[node_id]`` once it is known)."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(node_tag)s: %(message)s")
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        nid = getattr(record, "node_id", None) or self.node_id
        record.node_tag = f" [{clean(nid)}]" if nid else ""
        return mask_secrets(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # One line per message: control characters a member chose (in a node id, an event
        # type) are shown as escapes, never written to the operator's terminal.
        record.message = clean(record.message)
        return super().formatMessage(record)


def setup_logging(level: str = "info", fmt: str = "text", node_id: str | None = None,
                  stream: Any = None) -> logging.Formatter:
    """Configure the root logger for a command-line process; returns the formatter (its
    ``node_id`` can be set later).  Raises ``ValueError`` for an unknown level or format."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    formatter: logging.Formatter = JsonFormatter(node_id) if fmt == "json" else TextFormatter(node_id)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    if numeric > logging.DEBUG:
        # picows logs every accepted connection at INFO; that is debug detail here.
        logging.getLogger("picows").setLevel(logging.WARNING)
    return formatter
