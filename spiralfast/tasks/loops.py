"""The task manager's two loops: the outbox (what one loop iteration produced leaves
as one event per node and kind: task batches, result batches, load adverts) and
housekeeping (timeouts, link checks, load adverts and gossip metadata, every
``heartbeat_interval / 8`` within [MIN_TICK, MAX_TICK])."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import TaskError
from ..protocol.scheduling import Advert, advert_timing, tick_period
from .scheduler import Scheduler
from .state import log
from .wire import FAILED, LOAD_EVENT, MAX_BATCH, RESULT_EVENT, TASK_EVENT, load_message


class Loops(Scheduler):
    """Sending, and the periodic work."""

    async def _outbox(self) -> None:
        """Sends what one loop iteration produced: one event per node and kind."""
        port = self.port
        is_member = port.is_member
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            if self._results:
                results, self._results = self._results, {}
                for node, (ids, values, errs) in results.items():
                    if is_member(node):
                        await self._send_results(node, ids, values, errs)
            if self._out:
                out, self._out = self._out, {}
                for node, groups in out.items():
                    for ttype, (tids, payloads) in groups.items():
                        if is_member(node):
                            await self._send_tasks(node, ttype, tids, payloads)
                        else:
                            self._unsent(node, tids, "is not in the mesh")
            if self._advert_now:
                self._advert_now = False
                await self._broadcast_advert()
            if self._hello:
                hello, self._hello = self._hello, {}
                for node, ask in hello.items():
                    if is_member(node):
                        await port.send(node, LOAD_EVENT, load_message(self._advert(), self._served(), ask))

    def _unsent(self, node: str, ids: list[Any], why: str) -> None:
        for tid in ids:
            p = self._pending.get(tid)
            if p is not None and p.target is not None and p.target.node == node:
                self._retry(p, why)

    async def _send_tasks(self, node: str, ttype: str, ids: list[Any], payloads: list[Any]) -> None:
        """``[task type, ids, payloads]`` events, at most MAX_BATCH tasks each."""
        for i in range(0, len(ids), MAX_BATCH):
            cids, cpay = ids[i : i + MAX_BATCH], payloads[i : i + MAX_BATCH]
            try:
                ok = await self.port.send(node, TASK_EVENT, [ttype, cids, cpay])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an unencodable payload, or a batch too large
                if len(cids) > 1:
                    for tid, pl in zip(cids, cpay, strict=True):
                        await self._send_tasks(node, ttype, [tid], [pl])
                else:
                    p = self._pending.get(cids[0])
                    if p is not None:
                        self._finish_exc(p, TaskError(type(exc).__name__, f"payload not sendable: {exc}",
                                                      task_type=ttype))
                continue
            if not ok:
                self._unsent(node, cids, "is unreachable")

    async def _send_results(self, node: str, ids: list[Any], values: list[Any], errs: list[list[Any]]) -> None:
        """``{"i": ids, "v": values, "x": failures, "l": load}`` events, at most
        MAX_BATCH results each; a result that cannot be sent becomes a failure."""
        loads = self._load_for(node)
        for i in range(0, max(len(ids), 1), MAX_BATCH):
            cids, cval = ids[i : i + MAX_BATCH], values[i : i + MAX_BATCH]
            data: dict[str, Any] = {"i": cids, "v": cval, "l": loads}
            if errs and i == 0:
                data["x"] = errs
            try:
                await self.port.send(node, RESULT_EVENT, data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an unencodable result, or a batch too large
                if len(cids) + (len(errs) if i == 0 else 0) > 1:
                    if i == 0:
                        for e in errs:
                            await self._send_results(node, [], [], [e])
                    for tid, v in zip(cids, cval, strict=True):
                        await self._send_results(node, [tid], [v], [])
                elif cids:
                    err = [type(exc).__name__, f"result not sendable: {exc}"]
                    await self._send_results(node, [], [], [[cids[0], FAILED, err]])
                else:
                    log.error("task failure report for %s not sendable: %s", node, exc)

    async def _broadcast_advert(self) -> None:
        adv = self._advert()
        self._last_advert = self._advert_key()
        self._last_advert_t = time.monotonic()
        await self.port.broadcast(LOAD_EVENT, {"o": adv, "s": self._served()})

    async def _housekeeping(self) -> None:
        hb = float(self.port.heartbeat_interval)
        tick = tick_period(hb)
        while True:
            await asyncio.sleep(tick)
            try:
                self._check_timeouts()
                self._check_links()
                now = time.monotonic()
                if self._offers:
                    self._publish_meta()
                    when = advert_timing(now, self._last_advert_t, hb)
                    if when is Advert.DUE or (when is Advert.IF_CHANGED and self._advert_key() != self._last_advert):
                        await self._broadcast_advert()
                if now - self._meta_t >= hb:
                    self._meta_t = now
                    self._read_meta(now, hb)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task housekeeping failed")
