"""StateSynchronizer (the drop-in API): a last-writer-wins map per category, ordered by
a hybrid logical clock (HLC) with the writer's node id as tie-break.  The asyncio shell
around the sans-I/O rules of :mod:`spiralfast.protocol.statesync`: it owns the clock
(only the ``clock`` and ``monotonic`` functions it is built with), the anti-entropy loop,
the logging and the sending.  Locally it is the old key/value API.  Bound to a node (a
:class:`~spiralfast.ports.sync.SyncPort`; a ``MeshCore`` is one) it ships every change of
a shared category as a delta (batched per loop iteration) through the ``broadcast``
callable the node sets while it runs, and runs anti-entropy every ``sync_interval``:
nodes swap one digest per category and repair only categories whose digests differ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from .._log import BackoffLog
from ..errors import StateTooLarge
from ..ports.sync import SyncPort
from ..protocol import statesync as rules
from ..protocol.statesync import HybridClock, Message, Replica, hlc_wall
from ..records import StateSnapshot, SyncState
from ..wire import schema
from ..wire.limits import MAX_STATE_ENTRY_SIZE
from ..wire.schema import StateEntry

log = logging.getLogger("spiralfast.node.sync")
#: Clock skew: one line per condition (a peer ahead of us, our clock ahead) per minute.
_SKEW_LOG = BackoffLog(log, initial=60.0, maximum=60.0)
_encode = msgspec.msgpack.Encoder().encode


class StateSynchronizer(Replica):
    """Synchronised key/value state (the drop-in API: StateSynchronizer).

    :param node_id: this node's id (the HLC tie-break).
    :param mesh_core: the node to synchronise through (a :class:`~spiralfast.ports.sync.SyncPort`,
        such as a ``MeshCore``), or None (local only).
    :param clock: the wall clock, seconds since the epoch (``wall_time``, the clock state
        is stamped with, starts as this one; tests give a node a skewed one).
    :param monotonic: a monotonic clock in seconds: a jump of the wall clock against it
        is a clock step.
    """

    def __init__(self, node_id: str, mesh_core: SyncPort | None = None, *,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(node_id)
        self.mesh_core = mesh_core
        self._now = clock
        self._monotonic = monotonic
        self.sync_status = SyncState.SYNCED
        self.node_states: dict[str, dict[str, Any]] = {}
        self.sync_interval = 10.0
        self.running = False
        self.sync_task: asyncio.Task[None] | None = None
        self.last_sync: datetime | None = None
        #: This node's wall clock (seconds since the epoch) state is stamped by.
        self.wall_time: Callable[[], float] = clock
        #: Added to the wall clock when stamping state: negative while peers told us our
        #: clock is ahead of theirs beyond ``max_clock_offset`` (DESIGN-NOTES.md, clock skew).
        self.correction_ms = 0
        self._base = clock() - monotonic()  # wall minus monotonic: a change is a clock step
        self.clock = HybridClock(self.wall_ms)
        self.broadcast: Callable[[int, Any], object] | None = None  # set by the node while it runs
        #: Replaces shipping when set (model tests drive replicas by hand): ``emit(entry)``.
        self.emit: Callable[[StateEntry], object] | None = None
        self._pending: list[StateEntry] = []
        self.last_contact: float | None = None  # wall time we last heard from any peer
        self._rejoin_from: float | None = None  # last contact before the current rejoin
        self.absence = 30.0  # seconds without any peer message that count as being away
        if mesh_core is not None:
            cfg = mesh_core.config
            self.sync_interval = cfg.sync_interval
            self.shared = set(cfg.shared_categories) if cfg.shared_categories is not None else None
            self.max_clock_offset = cfg.max_clock_offset
            self.tombstone_ttl = cfg.tombstone_ttl
            self.absence = 3 * cfg.heartbeat_interval
            if cfg.peers:  # a node that joins a mesh holds its state only once a peer's digest agrees
                self.sync_status = SyncState.SYNCING

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start periodic anti-entropy.  Idempotent."""
        if self.running:
            return
        self.running = True
        self.sync_task = asyncio.ensure_future(self._sync_loop())

    async def stop(self) -> None:
        """Stop periodic anti-entropy.  Idempotent."""
        if not self.running:
            return
        self.running = False
        task, self.sync_task = self.sync_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _sync_loop(self) -> None:
        while self.running:
            await asyncio.sleep(self.sync_interval)
            try:
                self.collect_tombstones()
                if self.broadcast is not None:
                    self.broadcast(*self.digest_message())
            except Exception:
                log.exception("anti-entropy round failed")

    # -- local API -----------------------------------------------------------------

    def update_local_state(
        self, category: str, key: str, value: Any, metadata: dict[str, Any] | None = None
    ) -> None:
        """Store ``value``; bumps ``state_version`` and marks the state OUT_OF_SYNC."""
        entry = StateEntry(category, key, value, 0, self.node_id, self.state_version + 1, False, metadata or {})
        try:
            size = len(_encode(entry))  # protocol.statesync.entry_size, inlined
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"state value for {category}/{key} cannot be encoded: {exc}") from exc
        if size > MAX_STATE_ENTRY_SIZE:
            raise StateTooLarge(f"state value for {category}/{key} is {size:,} bytes encoded; the limit is "
                                f"{MAX_STATE_ENTRY_SIZE:,} bytes (limits.MAX_STATE_ENTRY_SIZE)")
        entry.hlc = self.clock.now()
        self.state_version += 1
        self.store.store(entry, self._now())
        self.sync_status = SyncState.OUT_OF_SYNC
        self._ship(entry)

    def delete_local_state(self, category: str, key: str) -> bool:
        """Delete a key; the delete travels as a tombstone.  False if the key is absent."""
        cat = self.sync_categories.get(category)
        if cat is None or key not in cat:
            return False
        hlc = self.clock.now()
        self.state_version += 1
        entry = StateEntry(category, key, None, hlc, self.node_id, self.state_version, True, None)
        self.store.store(entry, self._now())
        self.sync_status = SyncState.OUT_OF_SYNC
        self._ship(entry)
        return True

    # -- clock skew (DESIGN-NOTES.md) -------------------------------------------------

    def wall_ms(self) -> int:
        """The clock state is stamped with: the wall clock plus our correction (ms)."""
        t = self.wall_time()
        base = t - self._monotonic()  # rules.clock_step, inlined: every local write comes here
        step, self._base = base - self._base, base
        if step < -rules.CLOCK_STEP:
            self._stepped_back(int(-step * 1000), int(t * 1000))
        return int(t * 1000) + self.correction_ms

    def _stepped_back(self, ms: int, raw_ms: int) -> None:
        """The wall clock was set back by ``ms``: see :func:`~spiralfast.protocol.statesync.step_back`."""
        self.stats["clock_steps"] += 1
        d = rules.step_back(ms, self.correction_ms)
        self.correction_ms = d.correction_ms
        log.warning("the wall clock went back %.1f s%s", ms / 1000,
                    f"; no longer correcting it ({d.absorbed / 1000:.1f} s)" if d.absorbed else "")
        if d.restamp_ms:
            self._restamp_future(d.restamp_ms, raw_ms + self.correction_ms)

    def _restamp_future(self, shift_ms: int, now_ms: int) -> None:
        """Move our entries stamped after ``now_ms`` back by ``shift_ms``, ship them again,
        and let the HLC continue from the present instead of from that future."""
        moved, floor = self.restamp(shift_ms, now_ms)
        self.clock.reset(floor)
        if moved:
            log.warning("moved %d state entries stamped by our clock while it was %.1f s ahead back to the "
                        "mesh's time", len(moved), shift_ms / 1000)
            for entry in moved:
                self._ship(entry)

    def on_clock_skew(self, peer_id: str | None, m: schema.ClockSkew) -> None:
        """A peer says our clock is ahead of its clock beyond its max_clock_offset."""
        raw = int(self.wall_time() * 1000)
        ahead = self.wall_ms() - m.now_ms
        decision = rules.notice_decision(ahead, self.correction_ms, m.now_ms, m.max_offset_ms)
        if decision is rules.Notice.STALE:
            return  # a notice about a skew we have corrected since
        if decision is rules.Notice.ABSURD:
            _SKEW_LOG(("ahead",), logging.ERROR,
                      "node %s says our clock is %.0f s ahead of its clock: more than we correct for (%.0f days); "
                      "peers refuse our state until one of the clocks is fixed", peer_id, ahead / 1000,
                      rules.MAX_CLOCK_CORRECTION_MS / 86_400_000)
            return
        self.stats["clock_corrections"] += 1
        self.correction_ms -= ahead
        _SKEW_LOG(("ahead",), logging.ERROR,
                  "our clock is %.1f s ahead of node %s's (its max_clock_offset is %.0f s): peers refuse state "
                  "stamped by it; until it is fixed, state is stamped with the mesh's time (%.1f s back)",
                  (raw - m.now_ms) / 1000, peer_id, m.max_offset_ms / 1000, -self.correction_ms / 1000)
        self._restamp_future(ahead, raw + self.correction_ms)

    def _peer_clock(self, peer_id: str | None, now_ms: int) -> list[Message] | None:
        """A peer's clock reading (from its digest): a notice for it when it is ahead of
        ours beyond max_clock_offset; ``None`` when it is not."""
        if not now_ms:
            return None  # an older node: no reading
        offset = int(self.max_clock_offset * 1000)
        if self.correction_ms:
            raw = int(self.wall_time() * 1000)
            if rules.correction_ends(raw, now_ms, offset):  # our own clock agrees with the mesh again
                log.warning("our clock agrees with node %s's again: no longer correcting it (was %.1f s)",
                            peer_id, -self.correction_ms / 1000)
                self.correction_ms = 0
                _SKEW_LOG.clear(("ahead",))
            else:
                _SKEW_LOG(("ahead",), logging.ERROR,
                          "our clock is still %.1f s ahead of node %s's; state is stamped %.1f s back until it "
                          "is fixed", (raw - now_ms) / 1000, peer_id, -self.correction_ms / 1000)
        mine = self.wall_ms()
        if peer_id is not None and rules.peer_clock(now_ms, mine, offset) is rules.PeerClock.AHEAD:
            ahead = (now_ms - mine) / 1000
            self.skewed_peers[peer_id] = ahead
            self.stats["skew_notices_sent"] += 1
            _SKEW_LOG(("skew", peer_id), logging.ERROR,
                      "node %s's clock is %.1f s ahead of ours (max_clock_offset %.0f s): its state is refused "
                      "here until its clock is right; told it so", peer_id, ahead, self.max_clock_offset)
            return [(schema.KIND_CLOCK_SKEW, schema.ClockSkew(mine, offset))]
        if peer_id is not None and self.skewed_peers.pop(peer_id, None) is not None:
            _SKEW_LOG.clear(("skew", peer_id))
            log.warning("node %s's clock is within max_clock_offset of ours again", peer_id)
        return None

    # -- merge -----------------------------------------------------------------------

    def apply_entries(self, entries: list[StateEntry]) -> int:
        """Merge remote entries (last writer wins); returns how many changed the state."""
        changed, refused = self.merge(entries, self._now(), self.wall_ms(), self.clock.observe)
        for e in refused:
            _SKEW_LOG(("skew", e.node), logging.ERROR,
                      "state from node %s is %.0f s ahead of our clock (max_clock_offset %.0f s): its writes "
                      "are ignored until its clock is right (e.g. %s/%s)", e.node,
                      hlc_wall(e.hlc) - self.wall_ms() / 1000, self.max_clock_offset, e.category, e.key)
        self.last_contact = self._now()
        self.last_sync = datetime.fromtimestamp(self.last_contact)
        return changed

    def touch(self) -> None:
        """Record contact with the mesh (any peer message)."""
        self.last_contact = self._now()

    def before_rejoin(self) -> None:
        """Called when a peer link comes up, before any state is exchanged: until a
        digest from a peer agrees with ours we are syncing, not synced (a late joiner
        must not report ``synced`` before it holds the mesh's state)."""
        if self.sync_status == SyncState.SYNCED:
            self.sync_status = SyncState.SYNCING
        now = self._now()
        self._rejoin_from = rules.rejoin_from(self._rejoin_from, self.last_contact, now, self.absence)
        self.last_contact = now

    def check_resync(self, peer_collected_upto: int) -> None:
        """On the first digest after a rejoin: if the peer has collected tombstones
        newer than our last contact, drop every shared entry older than that contact
        (what we wrote while away is newer and kept); the digest repair that follows is
        then a full resync."""
        since, self._rejoin_from = self._rejoin_from, None
        dropped = self.resync(since, peer_collected_upto)
        if dropped is not None:
            log.info("tombstones collected since our last contact: dropped %d stale entries, full resync", dropped)

    def _ship(self, entry: StateEntry) -> None:
        if self.emit is not None:
            self.emit(entry)
            return
        if self.broadcast is not None and self.is_shared(entry.category):
            # Changes of one loop iteration travel together as one delta (per chunk).
            self._pending.append(entry)
            if len(self._pending) == 1:
                asyncio.get_running_loop().call_soon(self._flush_pending)

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        if self.broadcast is not None:
            for msg in self.delta_messages(pending):
                self.broadcast(*msg)

    # -- the sync protocol (messages in, replies out) ----------------------------------

    def digest_message(self, reply: bool = True) -> Message:
        return schema.KIND_STATE_DIGEST, schema.StateDigest(self.digests(), reply, self.collected_upto,
                                                            self.wall_ms())

    def on_digest(self, peer_id: str | None, d: schema.StateDigest) -> list[Message]:
        """A peer's digests: ask for what differs, or note that we are in sync.  A peer
        whose clock is ahead beyond max_clock_offset is told so instead: its state would
        be refused here, so asking for it would repeat every round."""
        self.touch()
        notice = self._peer_clock(peer_id, d.now_ms)
        if notice is not None:
            return notice
        self.check_resync(d.collected_upto)
        request = self.repair_request(d.digests)
        if request:
            return request
        if d.reply:
            self.sync_status = SyncState.SYNCED
            self.last_sync = datetime.fromtimestamp(self._now())
            if peer_id:
                self.node_states[peer_id] = {"digests": d.digests, "seen": self.last_sync.isoformat()}
        return []

    def collect_tombstones(self) -> int:
        """Forget tombstones older than ``tombstone_ttl``; returns how many."""
        return self.collect(self._now())

    # -- snapshot API ----------------------------------------------------------------

    async def create_snapshot(self) -> StateSnapshot:
        """A copy of the whole state, with its hash and the clocks needed to merge it."""
        return self.snapshot(datetime.fromtimestamp(self._now()))

    async def apply_snapshot(self, snapshot: StateSnapshot) -> bool:
        """Merge a snapshot (last writer wins per key).  False if it is malformed."""
        try:
            entries = self.snapshot_entries(snapshot)
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("malformed snapshot from %s; ignored", getattr(snapshot, "node_id", "?"), exc_info=True)
            return False
        if entries is None:
            log.warning("snapshot from %s fails its hash check; ignored", snapshot.node_id)
            return False
        saved, self.shared = self.shared, None  # a snapshot is applied whole, as asked
        try:
            self.apply_entries(entries)
        finally:
            self.shared = saved
        self.node_states[snapshot.node_id] = {"version": snapshot.version, "state_hash": snapshot.state_hash,
                                              "timestamp": snapshot.timestamp.isoformat()}
        self.sync_status = SyncState.SYNCED
        self.last_sync = datetime.fromtimestamp(self._now())
        return True

    async def sync_with_node(self, node_id: str) -> bool:
        """Ask ``node_id`` for its state.  False if there is no mesh or the node is unknown."""
        port = self.mesh_core
        if port is None or node_id not in port.nodes or node_id == self.node_id:
            return False
        self.sync_status = SyncState.SYNCING
        return await port.send_to_node(
            node_id, "state_sync_request", {"requesting_node": self.node_id, "version": self.state_version}
        )

    async def handle_sync_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer a sync request with a snapshot (sent back when bound to a mesh)."""
        snap = await self.create_snapshot()
        response = {"responding_node": self.node_id, "snapshot": snap.to_dict()}
        requester = request.get("requesting_node") if isinstance(request, dict) else None
        port = self.mesh_core
        if port is not None and requester and requester != self.node_id:
            await port.send_to_node(requester, "state_sync_response", response)
        return response

    async def handle_sync_response(self, response: dict[str, Any]) -> bool:
        """Apply the snapshot carried by a sync response."""
        try:
            snap = StateSnapshot.from_dict(response.get("snapshot", response))
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("malformed sync response ignored")
            self.sync_status = SyncState.ERROR
            return False
        return await self.apply_snapshot(snap)

    # -- introspection -------------------------------------------------------------

    def get_sync_status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "sync_status": self.sync_status.value,
            "state_version": self.state_version,
            "categories": list(self.sync_categories),
            "total_items": sum(len(v) for v in self.sync_categories.values()),
            "known_nodes": len(self.node_states),
            "last_sync": self.last_sync.isoformat() if self.last_sync else None,
            "conflict_resolution": self.conflict_resolution_strategy,
            "shared_categories": sorted(self.shared) if self.shared is not None else None,
            "running": self.running,
            **self.stats,
        }

