"""Reading the event log: history, replay, and history straight from a store.

:class:`HistoryReader` is the reading half of :class:`~spiralfast.store.eventlog.EventLog`:
``history()`` (blocking) and ``history_async()`` commit what was recorded so far, then
query the store on a helper thread; ``replay()`` re-delivers stored events, oldest
first, to the node's handlers.  :func:`answer_history` answers an observer's query
without blocking the loop; :func:`read_history` reads a store without a node
(``spiralfast mesh history --db PATH``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..ports.store import EventSource
from .backends import open_store
from .base import SYNC_TIMEOUT_S, QueryKey, Store
from .rows import Recordable, TimeArg, TypesArg, parse_time, types_arg
from .writer import QueueItem

log = logging.getLogger("spiralfast.store.eventlog")

#: Rows per page when replaying.
REPLAY_PAGE = 10_000

#: ``reply(ok, data)``: how an observer's query is answered.
Reply = Callable[[bool, Any], object]


class HistoryReader:
    """The reading half of the event log (see the module docstring)."""

    store: Store
    source: EventSource
    running: bool
    _buf: list[Recordable]
    _queue: queue.SimpleQueue[QueueItem]
    _qpool: ThreadPoolExecutor | None

    def _tick(self) -> None:
        """Hand over the batch being filled if the writer is idle (the loop side)."""
        raise NotImplementedError

    def _sync(self, timeout: float = SYNC_TIMEOUT_S) -> bool:
        """Commit everything recorded so far (the loop side)."""
        raise NotImplementedError

    def history(self, since: TimeArg = None, until: TimeArg = None, types: TypesArg = None, source: str | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Stored envelopes, newest last (at most ``limit``, the newest ones).  Events
        recorded so far are committed first, so they are included.

        :param since: ISO time, ``datetime``, epoch seconds or ``"10m"`` (ago).
        :param until: the same, inclusive.
        :param types: an event type or an iterable of them.
        :param source: only events from this node.
        :raises ValueError: a bad time.
        """
        s, u, t = parse_time(since), parse_time(until), types_arg(types)
        self._sync()
        return self.store.query(s, u, t, source, int(limit), False)[0]

    async def history_async(self, since: TimeArg = None, until: TimeArg = None, types: TypesArg = None,
                            source: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """:meth:`history` without blocking the loop (for observer queries)."""
        s, u, t = parse_time(since), parse_time(until), types_arg(types)
        await self._sync_async()
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._pool(), self.store.query, s, u, t, source, int(limit), False)
        return out[0]

    async def _sync_async(self) -> None:
        if not self.running:
            return
        self._tick()
        done = threading.Event()
        self._queue.put(done)
        await asyncio.get_running_loop().run_in_executor(self._pool(), done.wait, SYNC_TIMEOUT_S)
        if self._buf:  # the writer was busy at the tick: once more
            self._tick()
            done = threading.Event()
            self._queue.put(done)
            await asyncio.get_running_loop().run_in_executor(self._pool(), done.wait, SYNC_TIMEOUT_S)

    def _pool(self) -> ThreadPoolExecutor:
        if self._qpool is None:
            self._qpool = ThreadPoolExecutor(1, thread_name_prefix="spiralfast-eventlog-query")
        return self._qpool

    async def replay(self, since: TimeArg, types: TypesArg = None) -> int:
        """Re-deliver stored events (from ``since`` on, oldest first) to this node's
        handlers, each envelope marked ``"replayed": True``; coroutine handlers are
        awaited in order.  Returns how many stored events were replayed."""
        s, t = parse_time(since), types_arg(types)
        await self._sync_async()
        loop = asyncio.get_running_loop()
        count = 0
        after: QueryKey = None
        while True:
            envs, after = await loop.run_in_executor(self._pool(), self.store.query, s, None, t, None,
                                                     REPLAY_PAGE, True, after)
            for env in envs:
                env["replayed"] = True
                count += 1
                for h in list(self.source.event_handlers.get(env["type"], ())):
                    try:
                        r = h(env)
                        if r is not None and inspect.isawaitable(r):
                            await r
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("replay: handler %r failed on %s", h, env.get("event_id"))
            if after is None:
                return count


_answers: set[asyncio.Task[None]] = set()


def answer_history(node: object, args: Mapping[str, Any], reply: Reply) -> None:
    """Answer an observer's ``history`` query (args: since, until, types, source,
    limit) without blocking the loop: ``reply(ok, data)`` is called later.  ``node``:
    whatever holds the event log as ``eventlog`` (None or missing: persistence is off)."""
    eventlog = getattr(node, "eventlog", None)
    if not isinstance(eventlog, HistoryReader):
        reply(False, "persistence is off on this node (start it with --db PATH or a persistence_url)")
        return
    reader = eventlog

    async def go() -> None:
        try:
            envs = await reader.history_async(args.get("since"), args.get("until"), args.get("types") or None,
                                              args.get("source"), int(args.get("limit") or 1000))
        except (ValueError, TypeError) as exc:
            reply(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - the store failed: say so, keep running
            reply(False, f"cannot read the event log: {type(exc).__name__}: {exc}")
        else:
            reply(True, envs)

    task = asyncio.ensure_future(go())
    _answers.add(task)
    task.add_done_callback(_answers.discard)


def read_history(path: str | None = None, url: str | None = None, since: TimeArg = None, until: TimeArg = None,
                 types: TypesArg = None, source: str | None = None,
                 limit: int = 1000) -> list[dict[str, Any]]:
    """Read stored envelopes (newest last) straight from a store, without a node
    (``spiralfast mesh history --db PATH``).

    :raises FileNotFoundError: ``path`` does not exist.
    :raises ValueError: a bad time.
    """
    if path is not None and not url and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"no such database: {path}")
    store = open_store(path, url)
    try:
        return store.query(parse_time(since), parse_time(until), types_arg(types), source, int(limit), False)[0]
    finally:
        store.close()


__all__ = ["HistoryReader", "REPLAY_PAGE", "answer_history", "read_history"]
