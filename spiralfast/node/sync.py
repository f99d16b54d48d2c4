"""StateSynchronizer: a last-writer-wins map per category, ordered by a hybrid
logical clock (HLC) with the writer's node id as tie-break.

Locally it is the old key/value API.  Bound to a started ``MeshCore`` it ships
every change of a shared category as a delta (batched per loop iteration by the
router) and runs anti-entropy every ``sync_interval``: nodes swap one digest per
category and repair only categories whose digests differ.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from .. import schema
from .._log import BackoffLog
from ..errors import StateTooLarge
from ..limits import MAX_STATE_ENTRY_SIZE, STATE_CHUNK_BYTES
from ..schema import StateEntry
from ..records import StateSnapshot, SyncState

if TYPE_CHECKING:
    from .core import MeshCore

log = logging.getLogger("spiralfast.node.sync")
#: Clock skew: one line per condition (a peer ahead of us, our clock ahead) per minute.
_SKEW_LOG = BackoffLog(log, initial=60.0, maximum=60.0)
#: A jump of the wall clock against the monotonic clock larger than this (seconds) is
#: a step (the clock was set), not drift.
CLOCK_STEP = 1.0
#: The largest correction a peer's notice may make to the clock state is stamped with:
#: a clock off by more is not corrected (peers refuse its state; it is logged).
MAX_CLOCK_CORRECTION_MS = 7 * 24 * 3600 * 1000

DEFAULT_CATEGORIES = ("agents", "rituals", "system", "user_data")
#: State entries per delta message (keeps one message well under MAX_MESSAGE_SIZE
#: for typical values).
STATE_DELTA_CHUNK = 1000
_encode = msgspec.msgpack.Encoder().encode
_LOGICAL_BITS = 16
_MASK64 = (1 << 64) - 1


def hlc_wall(hlc: int) -> float:
    """Seconds since the epoch encoded in an HLC value."""
    return (hlc >> _LOGICAL_BITS) / 1000.0


def _wall_ms() -> int:
    return int(time.time() * 1000)


class HybridClock:
    """Hybrid logical clock: ``(wall ms << 16) | counter``; never goes backwards
    (except through :meth:`reset`, when the wall clock it followed was wrong).

    :param wall_ms: the wall clock in milliseconds (the synchroniser's corrected clock).
    """

    __slots__ = ("last", "wall_ms")

    def __init__(self, wall_ms: Any = _wall_ms) -> None:
        self.last = 0
        self.wall_ms = wall_ms

    def now(self) -> int:
        pt = self.wall_ms() << _LOGICAL_BITS
        self.last = pt if pt > self.last else self.last + 1
        return self.last

    def observe(self, remote: int) -> None:
        if remote > self.last:
            self.last = remote

    def reset(self, floor: int) -> None:
        """Forget a future the clock ran into: continue from ``floor`` (an HLC)."""
        self.last = floor


def _entry_hash(category: str, key: str, hlc: int, node: str, deleted: bool) -> int:
    h = hashlib.blake2b(f"{category}\0{key}\0{hlc}\0{node}\0{int(deleted)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


class StateSynchronizer:
    """Synchronised key/value state (SPEC.md: StateSynchronizer).

    :param node_id: this node's id (the HLC tie-break).
    :param mesh_core: the ``MeshCore`` to synchronise through, or None (local only).
    """

    def __init__(self, node_id: str, mesh_core: MeshCore | None = None) -> None:
        self.node_id = node_id
        self.mesh_core = mesh_core
        self.state_version = 0
        self.sync_status = SyncState.SYNCED
        self.node_states: dict[str, dict[str, Any]] = {}
        self.conflict_resolution_strategy = "latest_wins"
        self.sync_interval = mesh_core.config.sync_interval if mesh_core is not None else 10.0
        self.running = False
        self.sync_task: asyncio.Task[None] | None = None
        self.sync_categories: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in DEFAULT_CATEGORIES}
        self.last_sync: datetime | None = None
        #: This node's wall clock (seconds since the epoch); tests give a node a skewed one.
        self.wall_time: Any = time.time
        #: Added to the wall clock when stamping state: negative while peers told us our
        #: clock is ahead of theirs beyond ``max_clock_offset`` (DESIGN-NOTES.md, clock skew).
        self.correction_ms = 0
        self._base = time.time() - time.monotonic()  # wall minus monotonic: a change is a clock step
        self.skewed_peers: dict[str, float] = {}  # peer -> seconds its clock is ahead of ours
        self.clock = HybridClock(self.wall_ms)
        # (category, key) -> [hlc, node, deleted, wall-time-of-tombstone]
        self._clock: dict[tuple[str, str], list[Any]] = {}
        self._digest: dict[str, int] = {}
        self.shared: set[str] | None = None
        self.max_clock_offset = 60.0
        self.tombstone_ttl = 24 * 3600.0
        self.broadcast: Any = None  # callable(kind, struct) while bound to a started mesh
        self.emit: Any = None  # callable(StateEntry): replaces shipping (model tests drive replicas by hand)
        self._pending: list[StateEntry] = []
        self.last_contact: float | None = None  # wall time we last heard from any peer
        self._rejoin_from: float | None = None  # last contact before the current rejoin
        self.collected_upto = 0  # highest HLC of a tombstone we have collected
        self.absence = 30.0  # seconds without any peer message that count as being away
        self.stats = {"applied": 0, "stale": 0, "rejected_clock": 0, "repairs": 0, "tombstones_collected": 0,
                      "full_resyncs": 0, "skew_notices_sent": 0, "clock_corrections": 0, "clock_steps": 0,
                      "restamped": 0}
        if mesh_core is not None:
            cfg = mesh_core.config
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

    def is_shared(self, category: str) -> bool:
        return self.shared is None or category in self.shared

    # -- local API -----------------------------------------------------------------

    def update_local_state(
        self, category: str, key: str, value: Any, metadata: dict[str, Any] | None = None
    ) -> None:
        """Store ``value``; bumps ``state_version`` and marks the state OUT_OF_SYNC."""
        entry = StateEntry(category, key, value, 0, self.node_id, self.state_version + 1, False, metadata or {})
        try:
            size = len(_encode(entry))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"state value for {category}/{key} cannot be encoded: {exc}") from exc
        if size > MAX_STATE_ENTRY_SIZE:
            raise StateTooLarge(f"state value for {category}/{key} is {size:,} bytes encoded; the limit is "
                                f"{MAX_STATE_ENTRY_SIZE:,} bytes (limits.MAX_STATE_ENTRY_SIZE)")
        entry.hlc = self.clock.now()
        self.state_version += 1
        self._store(entry)
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
        self._store(entry)
        self.sync_status = SyncState.OUT_OF_SYNC
        self._ship(entry)
        return True

    def get_local_state(self, category: str | None = None, key: str | None = None) -> Any:
        if category is None:
            return {c: dict(entries) for c, entries in self.sync_categories.items()}
        cat = self.sync_categories.get(category)
        if cat is None:
            return None
        if key is None:
            return dict(cat)
        entry = cat.get(key)
        return entry["value"] if entry is not None else None

    # -- merge ---------------------------------------------------------------------

    def _wins(self, entry: StateEntry, current: list[Any] | None) -> bool:
        if current is None:
            return True
        if self.conflict_resolution_strategy == "highest_version":
            cur_version = current[4]
            if entry.version != cur_version:
                return entry.version > cur_version
        return (entry.hlc, entry.node) > (current[0], current[1])

    def _store(self, entry: StateEntry, keep_deleted_at: float | None = None) -> None:
        stamp = None if entry.deleted else datetime.fromtimestamp(hlc_wall(entry.hlc)).isoformat()  # first: may raise
        ck = (entry.category, entry.key)
        old = self._clock.get(ck)
        d = self._digest.get(entry.category, 0)
        if old is not None:
            d ^= _entry_hash(entry.category, entry.key, old[0], old[1], old[2])
        d ^= _entry_hash(entry.category, entry.key, entry.hlc, entry.node, entry.deleted)
        self._digest[entry.category] = d
        self._clock[ck] = [entry.hlc, entry.node, entry.deleted,
                           time.time() if keep_deleted_at is None else keep_deleted_at, entry.version]
        cat = self.sync_categories.setdefault(entry.category, {})
        if entry.deleted:
            cat.pop(entry.key, None)
        else:
            cat[entry.key] = {
                "value": entry.value,
                "timestamp": stamp,
                "version": entry.version,
                "metadata": entry.metadata or {},
            }

    # -- clock skew (DESIGN-NOTES.md) -------------------------------------------------

    def wall_ms(self) -> int:
        """The clock state is stamped with: the wall clock plus our correction (ms)."""
        t = self.wall_time()
        base = t - time.monotonic()
        step, self._base = base - self._base, base
        if step < -CLOCK_STEP:
            self._stepped_back(int(-step * 1000), int(t * 1000))
        return int(t * 1000) + self.correction_ms

    def _stepped_back(self, ms: int, raw_ms: int) -> None:
        """The wall clock was set back by ``ms``: a correction we were applying for it is
        no longer needed; beyond that, what we stamped in the (now) future is moved back."""
        self.stats["clock_steps"] += 1
        absorbed = min(ms, -self.correction_ms) if self.correction_ms < 0 else 0
        self.correction_ms += absorbed
        if -self.correction_ms < CLOCK_STEP * 1000:  # what is left is the notice's latency, not skew
            absorbed, self.correction_ms = absorbed - self.correction_ms, 0
        log.warning("the wall clock went back %.1f s%s", ms / 1000,
                    f"; no longer correcting it ({absorbed / 1000:.1f} s)" if absorbed else "")
        if ms > absorbed:
            self._restamp_future(ms - absorbed, raw_ms + self.correction_ms)

    def _restamp_future(self, shift_ms: int, now_ms: int) -> None:
        """Our own entries stamped after ``now_ms`` were stamped by a clock ``shift_ms``
        ahead: move them back by that much, ship them again, and let the HLC continue
        from the present instead of from that future."""
        now = now_ms << _LOGICAL_BITS
        shift = shift_ms << _LOGICAL_BITS
        moved: list[StateEntry] = []
        for (c, k), v in list(self._clock.items()):
            if v[1] != self.node_id or v[0] <= now:
                continue
            e = self.sync_categories.get(c, {}).get(k)
            entry = StateEntry(c, k, None if v[2] else e["value"] if e else None, max(v[0] - shift, 1), v[1], v[4],
                               v[2], None if v[2] or e is None else e.get("metadata"))
            self._store(entry, keep_deleted_at=v[3])
            moved.append(entry)
        horizon = ((now_ms + int(self.max_clock_offset * 1000)) << _LOGICAL_BITS)
        floor = now
        for v in self._clock.values():
            if floor < v[0] <= horizon:
                floor = v[0]
        self.clock.reset(floor)
        if moved:
            self.stats["restamped"] += len(moved)
            self.state_version += 1
            log.warning("moved %d state entries stamped by our clock while it was %.1f s ahead back to the "
                        "mesh's time", len(moved), shift_ms / 1000)
            for entry in moved:
                self._ship(entry)

    def on_clock_skew(self, peer_id: str | None, m: schema.ClockSkew) -> None:
        """A peer says our clock is ahead of its clock beyond its max_clock_offset."""
        raw = int(self.wall_time() * 1000)
        ahead = self.wall_ms() - m.now_ms
        if ahead <= max(m.max_offset_ms, 0):
            return  # a notice about a skew we have corrected since
        if ahead - self.correction_ms > MAX_CLOCK_CORRECTION_MS or m.now_ms <= 0:
            _SKEW_LOG(("ahead",), logging.ERROR,
                      "node %s says our clock is %.0f s ahead of its clock: more than we correct for (%.0f days); "
                      "peers refuse our state until one of the clocks is fixed", peer_id, ahead / 1000,
                      MAX_CLOCK_CORRECTION_MS / 86_400_000)
            return
        self.stats["clock_corrections"] += 1
        self.correction_ms -= ahead
        _SKEW_LOG(("ahead",), logging.ERROR,
                  "our clock is %.1f s ahead of node %s's (its max_clock_offset is %.0f s): peers refuse state "
                  "stamped by it; until it is fixed, state is stamped with the mesh's time (%.1f s back)",
                  (raw - m.now_ms) / 1000, peer_id, m.max_offset_ms / 1000, -self.correction_ms / 1000)
        self._restamp_future(ahead, raw + self.correction_ms)

    def _peer_clock(self, peer_id: str | None, now_ms: int) -> list[tuple[int, Any]] | None:
        """A peer's clock reading (from its digest): a notice for it when it is ahead of
        ours beyond max_clock_offset; ``None`` when it is not."""
        if not now_ms:
            return None  # an older node: no reading
        offset = int(self.max_clock_offset * 1000)
        if self.correction_ms:
            raw = int(self.wall_time() * 1000)
            if raw - now_ms <= offset // 2:  # our own clock agrees with the mesh again
                log.warning("our clock agrees with node %s's again: no longer correcting it (was %.1f s)",
                            peer_id, -self.correction_ms / 1000)
                self.correction_ms = 0
                _SKEW_LOG.clear(("ahead",))
            else:
                _SKEW_LOG(("ahead",), logging.ERROR,
                          "our clock is still %.1f s ahead of node %s's; state is stamped %.1f s back until it "
                          "is fixed", (raw - now_ms) / 1000, peer_id, -self.correction_ms / 1000)
        mine = self.wall_ms()
        if peer_id is not None and now_ms - mine > offset:
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

    # -- merge (continued) -------------------------------------------------------------

    def apply_entries(self, entries: list[StateEntry]) -> int:
        """Merge remote entries (last writer wins); returns how many changed the state."""
        horizon = (self.wall_ms() + int(self.max_clock_offset * 1000)) << _LOGICAL_BITS
        changed = 0
        for e in entries:
            if not self.is_shared(e.category):
                continue
            if e.hlc > horizon:
                self.stats["rejected_clock"] += 1
                _SKEW_LOG(("skew", e.node), logging.ERROR,
                          "state from node %s is %.0f s ahead of our clock (max_clock_offset %.0f s): its writes "
                          "are ignored until its clock is right (e.g. %s/%s)", e.node,
                          hlc_wall(e.hlc) - self.wall_ms() / 1000, self.max_clock_offset, e.category, e.key)
                continue
            self.clock.observe(e.hlc)
            if self._wins(e, self._clock.get((e.category, e.key))):
                self._store(e)
                changed += 1
            else:
                self.stats["stale"] += 1
        if changed:
            self.stats["applied"] += changed
            self.state_version += 1
        self.last_sync = datetime.now()
        self.last_contact = time.time()
        return changed

    def touch(self) -> None:
        """Record contact with the mesh (any peer message)."""
        self.last_contact = time.time()

    def before_rejoin(self) -> None:
        """Called when a peer link comes up, before any state is exchanged: until a
        digest from a peer agrees with ours we are syncing, not synced (a late joiner
        must not report ``synced`` before it holds the mesh's state)."""
        if self.sync_status == SyncState.SYNCED:
            self.sync_status = SyncState.SYNCING
        now = time.time()
        if self._rejoin_from is None and self.last_contact is not None and now - self.last_contact > self.absence:
            self._rejoin_from = self.last_contact
        self.last_contact = now

    def check_resync(self, peer_collected_upto: int) -> None:
        """On the first digest after a rejoin: if the peer has collected tombstones
        newer than our last contact, we may hold keys deleted while we were away.
        Drop every shared entry older than that contact (what we wrote while away
        is newer and kept); the digest repair that follows is then a full resync.
        """
        since = self._rejoin_from
        self._rejoin_from = None
        if since is None:
            return
        horizon = (int(since * 1000) + 1) << _LOGICAL_BITS
        if peer_collected_upto < (int(since * 1000) << _LOGICAL_BITS):
            return
        stale = [ck for ck, c in self._clock.items() if self.is_shared(ck[0]) and c[0] < horizon]
        for c, k in stale:
            old = self._clock.pop((c, k))
            self._digest[c] = self._digest.get(c, 0) ^ _entry_hash(c, k, old[0], old[1], old[2])
            self.sync_categories.get(c, {}).pop(k, None)
        self.stats["full_resyncs"] += 1
        log.info("tombstones collected since our last contact: dropped %d stale entries, full resync", len(stale))

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

    # -- the sync protocol (sans-I/O: messages in, replies out) ----------------------

    def delta_messages(self, entries: list[StateEntry]) -> list[tuple[int, Any]]:
        """Deltas of at most STATE_DELTA_CHUNK entries and about STATE_CHUNK_BYTES each."""
        out: list[tuple[int, Any]] = []
        chunk: list[StateEntry] = []
        size = 0
        for e in entries:
            n = len(_encode(e))
            if chunk and (size + n > STATE_CHUNK_BYTES or len(chunk) >= STATE_DELTA_CHUNK):
                out.append((schema.KIND_STATE_DELTA, schema.StateDelta(chunk)))
                chunk, size = [], 0
            chunk.append(e)
            size += n
        if chunk:
            out.append((schema.KIND_STATE_DELTA, schema.StateDelta(chunk)))
        return out

    def digest_message(self, reply: bool = True) -> tuple[int, Any]:
        return schema.KIND_STATE_DIGEST, schema.StateDigest(self.digests(), reply, self.collected_upto,
                                                            self.wall_ms())

    def on_digest(self, peer_id: str | None, d: schema.StateDigest) -> list[tuple[int, Any]]:
        """A peer's digests: ask for what differs, or note that we are in sync.  A peer
        whose clock is ahead beyond max_clock_offset is told so instead: its state would
        be refused here, so asking for it would repeat every round."""
        self.touch()
        notice = self._peer_clock(peer_id, d.now_ms)
        if notice is not None:
            return notice
        self.check_resync(d.collected_upto)
        mine = self.digests()
        differ = [c for c, h in d.digests.items() if mine.get(c, "0") != h and self.is_shared(c)]
        differ += [c for c in mine if c not in d.digests and mine[c] != "0"]
        if differ:
            self.stats["repairs"] += 1
            return [(schema.KIND_STATE_REQUEST, schema.StateRequest(self.clocks_for(sorted(set(differ)))))]
        if d.reply:
            self.sync_status = SyncState.SYNCED
            self.last_sync = datetime.now()
            if peer_id:
                self.node_states[peer_id] = {"digests": d.digests, "seen": datetime.now().isoformat()}
        return []

    def on_request(self, req: schema.StateRequest, peer_id: str | None = None) -> list[tuple[int, Any]]:
        """A peer's clocks for some categories: send what it lacks, ask for what we lack
        (not from a peer whose clock is ahead of ours: we would refuse what it sends)."""
        out = self.delta_messages(self.entries_newer_than(req.categories))
        if peer_id is not None and peer_id in self.skewed_peers:
            return out
        mine = self.clocks_for(list(req.categories))
        if any(k not in mine.get(c, {}) or mine[c][k] < v for c, kv in req.categories.items() for k, v in kv.items()):
            out.append((schema.KIND_STATE_REQUEST, schema.StateRequest(mine)))
        return out

    def collect_tombstones(self) -> int:
        """Forget tombstones older than ``tombstone_ttl``; returns how many."""
        cutoff = time.time() - self.tombstone_ttl
        dead = [ck for ck, c in self._clock.items() if c[2] and c[3] < cutoff]
        for ck in dead:
            c = self._clock.pop(ck)
            if c[0] > self.collected_upto:
                self.collected_upto = c[0]
            self._digest[ck[0]] = self._digest.get(ck[0], 0) ^ _entry_hash(ck[0], ck[1], c[0], c[1], True)
        self.stats["tombstones_collected"] += len(dead)
        return len(dead)

    # -- anti-entropy helpers (used by MeshCore) -------------------------------------

    def digests(self) -> dict[str, str]:
        return {
            c: format(self._digest.get(c, 0) & _MASK64, "x") for c in self.sync_categories if self.is_shared(c)
        }

    def clocks_for(self, categories: list[str]) -> dict[str, dict[str, list[Any]]]:
        out: dict[str, dict[str, list[Any]]] = {c: {} for c in categories}
        for (c, k), v in self._clock.items():
            if c in out:
                out[c][k] = [v[0], v[1]]
        return out

    def entries_newer_than(self, known: dict[str, dict[str, list[Any]]]) -> list[StateEntry]:
        """Entries (and tombstones) the peer whose clocks are ``known`` lacks or has older."""
        out: list[StateEntry] = []
        for c, theirs in known.items():
            if not self.is_shared(c):
                continue
            cat = self.sync_categories.get(c, {})
            for (cc, k), v in self._clock.items():
                if cc != c:
                    continue
                t = theirs.get(k)
                if t is None or (v[0], v[1]) > (t[0], t[1]):
                    e = cat.get(k)
                    out.append(
                        StateEntry(c, k, None if v[2] else e["value"] if e else None, v[0], v[1], v[4], v[2],
                                   None if v[2] or e is None else e.get("metadata"))
                    )
        return out

    def all_shared_entries(self) -> list[StateEntry]:
        return self.entries_newer_than({c: {} for c in self.sync_categories if self.is_shared(c)})

    # -- snapshot API ----------------------------------------------------------------

    def _hash(self, categories: dict[str, Any]) -> str:
        blob = json.dumps(categories, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    async def create_snapshot(self) -> StateSnapshot:
        """A copy of the whole state, with its hash and the clocks needed to merge it."""
        categories = {c: {k: dict(v) for k, v in entries.items()} for c, entries in self.sync_categories.items()}
        clocks = {f"{c}\0{k}": [v[0], v[1], v[2], v[4]] for (c, k), v in self._clock.items()}
        return StateSnapshot(
            node_id=self.node_id,
            timestamp=datetime.now(),
            version=self.state_version,
            state_hash=self._hash(categories),
            data={"categories": categories, "version": self.state_version, "clocks": clocks},
            metadata={"conflict_resolution": self.conflict_resolution_strategy, "entries": len(clocks)},
        )

    async def apply_snapshot(self, snapshot: StateSnapshot) -> bool:
        """Merge a snapshot (last writer wins per key).  False if it is malformed."""
        try:
            categories = snapshot.data["categories"]
            if self._hash(categories) != snapshot.state_hash:
                log.warning("snapshot from %s fails its hash check; ignored", snapshot.node_id)
                return False
            clocks = snapshot.data.get("clocks") or {}
            entries: list[StateEntry] = []
            for c, kv in categories.items():
                self.sync_categories.setdefault(c, {})
                for k, v in kv.items():
                    clk = clocks.get(f"{c}\0{k}")
                    if clk is not None:
                        hlc, node, version = int(clk[0]), str(clk[1]), int(clk[3])
                    else:  # an old-format snapshot: order by its ISO timestamp
                        wall = datetime.fromisoformat(v["timestamp"]).timestamp()
                        hlc, node, version = int(wall * 1000) << _LOGICAL_BITS, snapshot.node_id, int(v.get("version", 0))
                    entries.append(StateEntry(c, k, v["value"], hlc, node, version, False, v.get("metadata") or {}))
            for ck, clk in clocks.items():
                if clk[2]:
                    c, k = ck.split("\0", 1)
                    entries.append(StateEntry(c, k, None, int(clk[0]), str(clk[1]), int(clk[3]), True, None))
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("malformed snapshot from %s; ignored", getattr(snapshot, "node_id", "?"), exc_info=True)
            return False
        saved, self.shared = self.shared, None  # a snapshot is applied whole, as asked
        try:
            self.apply_entries(entries)
        finally:
            self.shared = saved
        self.node_states[snapshot.node_id] = {
            "version": snapshot.version,
            "state_hash": snapshot.state_hash,
            "timestamp": snapshot.timestamp.isoformat(),
        }
        self.sync_status = SyncState.SYNCED
        self.last_sync = datetime.now()
        return True

    async def sync_with_node(self, node_id: str) -> bool:
        """Ask ``node_id`` for its state.  False if there is no mesh or the node is unknown."""
        core = self.mesh_core
        if core is None or node_id not in core.nodes or node_id == self.node_id:
            return False
        self.sync_status = SyncState.SYNCING
        return await core.send_to_node(
            node_id, "state_sync_request", {"requesting_node": self.node_id, "version": self.state_version}
        )

    async def handle_sync_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer a sync request with a snapshot (sent back when bound to a mesh)."""
        snap = await self.create_snapshot()
        response = {"responding_node": self.node_id, "snapshot": snap.to_dict()}
        requester = request.get("requesting_node") if isinstance(request, dict) else None
        if self.mesh_core is not None and requester and requester != self.node_id:
            await self.mesh_core.send_to_node(requester, "state_sync_response", response)
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

    def get_state_summary(self) -> dict[str, dict[str, Any]]:
        return {c: {"count": len(v), "keys": list(v)[:10]} for c, v in self.sync_categories.items()}
