"""JetStream catch-up of the NATS link: after a reconnect (or for a node returning with a
delivery cursor) the broadcasts kept in the stream since shortly before the last one
received are read again, live broadcasts held meanwhile, and the events among them (only
events: old heartbeats or gossip must not revive anyone) fed through the normal receive
path, whose per-origin windows make delivery exactly once.

Every replayed payload is opened by the node's gate (``LinkHost.bus_replayed``) with a
catch-up opener of its own; this module then refuses frames the stream stored too long
after they were sent (a captured frame published again).  DESIGN-NOTES.md, "NATS".
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from datetime import UTC, datetime

from ...._log import RateLimitedLog
from ....errors import FrameError
from ....wire import schema
from ....wire.codec import FrameWriter, decode_frame
from ....wire.sealing import BusSealer, bus_identity
from ...base import BusLink, LinkHost
from .client import NatsClient, mask_url
from .settings import NatsSettings

log = logging.getLogger("spiralfast.nats")

#: Live frames held while catching up from the stream (each authenticated first), at
#: most this many and this many bytes; beyond either the oldest held frames are dropped
#: (counted, ``held_dropped``): the node's gap repair asks their senders again.
MAX_HELD_FRAMES = 50_000
MAX_HELD_BYTES = 64 * 1024 * 1024
#: Catch-up reads the stream from this long before the last broadcast received.
CATCHUP_MARGIN = 2.0
#: A catch-up never takes longer than this (live frames are held meanwhile).
CATCHUP_TIMEOUT = 20.0
_SEALED_SENT = struct.Struct("<Q")  # busauth: flag, sender length, sender, epoch, counter, *sent ms*


def _sealed_sent(data: bytes) -> float:
    """The send time (seconds) in a sealed frame's header (one ``open`` accepted)."""
    sent: int = _SEALED_SENT.unpack_from(data, 2 + data[1] + 16)[0]
    return sent / 1000.0



class CatchUpMixin:
    """The JetStream half of ``NatsTransport`` (a mixin; the node sees it as a
    ``links.base.StreamCatchUp``)."""

    host: LinkHost
    node_id: str
    settings: NatsSettings
    stats: dict[str, int]
    errlog: RateLimitedLog
    client: NatsClient | None
    bcast: str
    stream_name: str
    stream_on: bool
    connected: bool
    #: Live broadcasts held during a catch-up, already authenticated: (sender, offset, frame, size).
    held: deque[tuple[str, int, memoryview, int]] | None
    held_bytes: int

    def _deliver(self, subject: str, sender: str, offset: int, frame: memoryview) -> None:
        raise NotImplementedError

    def _link(self) -> BusLink:
        """This link, as the host sees it (the transport returns itself)."""
        raise NotImplementedError

    def _bad(self, why: str) -> None:
        raise NotImplementedError

    async def _ensure_stream(self) -> None:
        from nats.js import api

        st = self.settings
        assert self.client is not None
        js = self.client.jetstream()
        cfg = api.StreamConfig(name=self.stream_name, subjects=[self.bcast], max_age=st.stream_max_age,
                               max_bytes=st.stream_max_bytes, storage=api.StorageType.FILE,
                               discard=api.DiscardPolicy.OLD, num_replicas=1)
        try:
            await asyncio.wait_for(js.add_stream(cfg), 5.0)
        except Exception as exc:
            try:  # made by another node with other limits: use it as it is
                await asyncio.wait_for(js.stream_info(self.stream_name), 5.0)
            except Exception:
                log.warning("JetStream stream %s unavailable (%s); running without catch-up", self.stream_name,
                            mask_url(str(exc)))
                self.stream_on = False

    async def stream_catch_up(self, since: float) -> None:
        """Catch up from the stream since ``since`` (wall time) now (a node returning
        with a delivery cursor: ``catchup.py``), holding live broadcasts meanwhile as a
        reconnect does; returns when done.  Nothing when the stream is off or a
        catch-up is already on its way."""
        if not self.stream_on or self.held is not None or not self.connected:
            return
        self.held = deque()
        self.held_bytes = 0
        await self._catch_up(since)

    def _hold(self, sender: str, offset: int, frame: memoryview) -> None:
        """A live broadcast during a catch-up, opened by the gate (an outsider's bytes are
        never held), delivered after it.  Bounded in frames and bytes: beyond either, the
        oldest held frames are dropped (counted) and the node's gap repair asks again."""
        held = self.held
        assert held is not None
        size = len(frame.obj) if isinstance(frame.obj, bytes) else frame.nbytes  # the sealed payload's size
        held.append((sender, offset, frame, size))
        self.held_bytes += size
        while held and (self.held_bytes > MAX_HELD_BYTES or len(held) > MAX_HELD_FRAMES):
            self.held_bytes -= held.popleft()[3]
            self.stats["held_dropped"] += 1


    async def _catch_up(self, since: float) -> None:
        """Deliver the broadcasts kept in the stream since ``since`` (wall time), then
        the live frames held meanwhile.  Copies we already had are dropped by the
        per-origin windows, so each event is delivered once."""
        from nats.js import api

        self.stats["catchups"] += 1
        # Its own replay state and a window as long as the stream keeps frames: old
        # frames are expected here; the MAC still proves who sent them.  Each frame must
        # also have been stored (the stream's timestamp) within the live replay window of
        # its send time, and sent no earlier than ``since`` minus that window (``_replayed``).
        opener = BusSealer(self.node_id, self.settings.mesh_name, self.settings.token,
                           self.settings.stream_max_age + self.settings.replay_window,
                           **bus_identity(self.host, fresh_pins=True))
        sub = None
        try:
            assert self.client is not None
            js = self.client.jetstream()
            info = await asyncio.wait_for(js.stream_info(self.stream_name), 5.0)
            last = info.state.last_seq
            start = datetime.fromtimestamp(max(since, 0.0), UTC)
            if last:
                cfg = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=start)
                sub = await js.subscribe(self.bcast, stream=self.stream_name, ordered_consumer=True, config=cfg)
                deadline = time.monotonic() + CATCHUP_TIMEOUT
                first = True
                while time.monotonic() < deadline:
                    try:
                        msg = await sub.next_msg(timeout=1.0 if first else 2.0)
                    except TimeoutError:
                        break  # nothing (more) since then
                    except Exception as exc:
                        if "Timeout" in type(exc).__name__:
                            break
                        raise
                    first = False
                    md = msg.metadata
                    self._replayed(opener, msg.data, md.timestamp.timestamp(), since)
                    if md.sequence.stream >= last or md.num_pending == 0:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errlog(("catchup", type(exc).__name__), logging.WARNING,
                        "JetStream catch-up failed (%s); gaps are repaired from the senders", exc)
        finally:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass
            self._release_held()

    def _replayed(self, opener: BusSealer, data: bytes, stored: float, since: float) -> None:
        """One frame from the stream: opened by the gate with ``opener``, then checked here
        (``_replay_check``) and only its events delivered."""

        def check(sender: str, frame: memoryview) -> bool:
            return self._replay_check(data, stored, since, sender, frame)

        self.host.bus_replayed(self._link(), self.bcast, data, opener, check)

    def _replay_check(self, data: bytes, stored: float, since: float, sender: str,
                      frame: memoryview) -> bool:
        """``stored`` is when the stream kept it (JetStream's timestamp).  A sender's frame
        reaches the stream as it reaches live receivers, so one stored later than the live
        replay window after its send time was published again by someone else (a captured
        frame): refused (False), as the live path would have refused it then."""
        window = self.settings.replay_window
        sent = _sealed_sent(data)
        if abs(stored - sent) > window or sent < since - window:
            self.stats["refused"] += 1
            self.stats["stream_refused"] += 1
            self.errlog("stream_stale", logging.WARNING, "refused a stream frame from %s: sent %.0fs from when the "
                        "stream stored it, or before the catch-up window (a replayed frame)", sender[:64],
                        abs(stored - sent) if abs(stored - sent) > window else since - sent)
            return False
        try:
            msgs = [m for m in decode_frame(frame) if m.kind == schema.KIND_EVENT and not m.target]
        except FrameError as exc:
            self._bad(f"stream frame: {exc}")
            return True
        if not msgs:
            return True
        w = FrameWriter()
        for m in msgs:
            w.add_raw(m.kind, m.etype, m.target, m.msg_id, m.payload)
        self.stats["caught_up_frames"] += 1
        self.stats["caught_up_events"] += len(msgs)
        self.host.frame_received(self._link(), w.finish(), sender)
        return True

    def _release_held(self) -> None:
        held, self.held = self.held, None
        self.held_bytes = 0
        for sender, offset, frame, _ in held or ():
            try:
                self._deliver(self.bcast, sender, offset, frame)
            except Exception as exc:
                self._bad(f"error handling a message: {exc!r}")

