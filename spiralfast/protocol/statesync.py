"""State-sync rules, sans-I/O: the hybrid logical clock (HLC), the last-writer-wins
store with its per-category digests, what to ask for or answer from a peer's digest or
request, and the clock-skew decisions.

The asyncio shell (:mod:`spiralfast.node.sync`, the drop-in API's ``StateSynchronizer``)
owns the clock, the loop, the logging and the sending; this module reads no clock and
touches no socket.  Times are arguments (``now: float`` seconds since the epoch,
``wall_ms: int`` milliseconds), and decisions are enums or small dataclasses.

HLC values are ``(wall ms << 16) | counter``.  An entry is ordered by ``(hlc, node)``
(the writer's node id breaks ties), or, under the ``highest_version`` strategy, by its
version first.  Each category keeps a 64-bit XOR of one hash per (key, hlc, node,
deleted): two replicas whose digests agree hold the same entries and tombstones.

Clock skew (DESIGN-NOTES.md, clock skew): state stamped more than ``max_clock_offset``
ahead of our clock is refused; a peer whose digest shows its clock that far ahead is
told so (:func:`peer_clock`) instead of being asked for state we would refuse; the node
told corrects the clock it stamps state with (:func:`notice_decision`), moves back what
it stamped in the future (:meth:`LwwStore.restamp_future`), and stops correcting once
its own clock agrees with the mesh again or steps back (:func:`step_back`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import msgspec

from ..records import StateSnapshot
from ..wire import schema
from ..wire.limits import STATE_CHUNK_BYTES
from ..wire.schema import StateEntry

LOGICAL_BITS = 16
MASK64 = (1 << 64) - 1
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

#: What the store remembers of a key: (hlc, writer node, deleted, wall time of the
#: tombstone or of the write in seconds, version).
Stamp = tuple[int, str, bool, float, int]
#: A category's entries as the old API shows them: key -> {"value", "timestamp",
#: "version", "metadata"}.
Category = dict[str, dict[str, Any]]
#: A peer's (or our) known clocks: category -> {key: [hlc, node]} (the wire form).
Clocks = dict[str, dict[str, list[Any]]]
#: One sync-protocol message to send: (message kind, its struct).
Message = tuple[int, Any]
_encode = msgspec.msgpack.Encoder().encode


def entry_size(entry: StateEntry) -> int:
    """An entry's encoded size in bytes (raises for a value msgpack cannot encode)."""
    return len(_encode(entry))


def hlc_wall(hlc: int) -> float:
    """Seconds since the epoch encoded in an HLC value."""
    return (hlc >> LOGICAL_BITS) / 1000.0


def hlc_at(wall_ms: int) -> int:
    """The smallest HLC value at wall time ``wall_ms`` (milliseconds)."""
    return wall_ms << LOGICAL_BITS


class HybridClock:
    """Hybrid logical clock: ``(wall ms << 16) | counter``; never goes backwards
    (except through :meth:`reset`, when the wall clock it followed was wrong).

    :param wall_ms: reads the wall clock in milliseconds (the synchroniser's corrected
        clock); :meth:`tick` takes the reading as an argument instead.
    """

    __slots__ = ("last", "wall_ms")

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self.last = 0
        self.wall_ms = wall_ms

    def tick(self, wall_ms: int) -> int:
        """The next value at wall time ``wall_ms``: above every value seen so far."""
        pt = wall_ms << LOGICAL_BITS
        self.last = pt if pt > self.last else self.last + 1
        return self.last

    def now(self) -> int:
        pt = self.wall_ms() << LOGICAL_BITS  # tick(), inlined: every local write comes here
        self.last = pt if pt > self.last else self.last + 1
        return self.last

    def observe(self, remote: int) -> None:
        if remote > self.last:
            self.last = remote

    def reset(self, floor: int) -> None:
        """Forget a future the clock ran into: continue from ``floor`` (an HLC)."""
        self.last = floor


def entry_hash(category: str, key: str, hlc: int, node: str, deleted: bool) -> int:
    """The 64-bit hash one (key, hlc, node, deleted) contributes to its category's digest."""
    h = hashlib.blake2b(f"{category}\0{key}\0{hlc}\0{node}\0{int(deleted)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def wins(entry: StateEntry, current: Stamp | None, strategy: str) -> bool:
    """Whether ``entry`` replaces what the store holds (last writer wins; under
    ``highest_version`` the higher version first)."""
    if current is None:
        return True
    if strategy == "highest_version" and entry.version != current[4]:
        return entry.version > current[4]
    return (entry.hlc, entry.node) > (current[0], current[1])


class LwwStore:
    """The last-writer-wins map per category, with its clocks and digests.

    ``categories`` is the old API's view (what ``sync_categories`` shows); ``clocks``
    holds a :data:`Stamp` per key, tombstones included; ``digest`` the XOR per category.
    """

    __slots__ = ("categories", "clocks", "digest")

    def __init__(self, categories: Iterable[str] = DEFAULT_CATEGORIES) -> None:
        self.categories: dict[str, Category] = {c: {} for c in categories}
        self.clocks: dict[tuple[str, str], Stamp] = {}
        self.digest: dict[str, int] = {}

    def store(self, entry: StateEntry, at: float) -> None:
        """Hold ``entry`` (the caller decided it wins); ``at`` is the wall time (seconds)
        remembered for it: a tombstone is collected ``tombstone_ttl`` after it."""
        stamp = None if entry.deleted else datetime.fromtimestamp(hlc_wall(entry.hlc)).isoformat()  # first: may raise
        c, k = entry.category, entry.key
        old = self.clocks.get((c, k))
        d = self.digest.get(c, 0)
        if old is not None:
            d ^= entry_hash(c, k, old[0], old[1], old[2])
        d ^= entry_hash(c, k, entry.hlc, entry.node, entry.deleted)
        self.digest[c] = d
        self.clocks[(c, k)] = (entry.hlc, entry.node, entry.deleted, at, entry.version)
        cat = self.categories.setdefault(c, {})
        if entry.deleted:
            cat.pop(k, None)
        else:
            cat[k] = {"value": entry.value, "timestamp": stamp, "version": entry.version,
                      "metadata": entry.metadata or {}}

    def drop(self, category: str, key: str) -> Stamp:
        """Forget a key entirely (its clock too); returns what was held."""
        old = self.clocks.pop((category, key))
        self.digest[category] = self.digest.get(category, 0) ^ entry_hash(category, key, old[0], old[1], old[2])
        self.categories.get(category, {}).pop(key, None)
        return old

    def entry(self, category: str, key: str, v: Stamp, hlc: int | None = None) -> StateEntry:
        """The wire entry for what is held under ``(category, key)`` (optionally re-stamped)."""
        e = self.categories.get(category, {}).get(key)
        return StateEntry(category, key, None if v[2] else e["value"] if e else None, v[0] if hlc is None else hlc,
                          v[1], v[4], v[2], None if v[2] or e is None else e.get("metadata"))

    def digests(self, is_shared: Callable[[str], bool]) -> dict[str, str]:
        return {c: format(self.digest.get(c, 0) & MASK64, "x") for c in self.categories if is_shared(c)}

    def clocks_for(self, categories: Iterable[str]) -> Clocks:
        out: Clocks = {c: {} for c in categories}
        for (c, k), v in self.clocks.items():
            if c in out:
                out[c][k] = [v[0], v[1]]
        return out

    def entries_newer_than(self, known: Mapping[str, Mapping[str, list[Any]]],
                           is_shared: Callable[[str], bool]) -> list[StateEntry]:
        """Entries (and tombstones) the peer whose clocks are ``known`` lacks or has older."""
        out: list[StateEntry] = []
        for c, theirs in known.items():
            if not is_shared(c):
                continue
            for (cc, k), v in self.clocks.items():
                if cc != c:
                    continue
                t = theirs.get(k)
                if t is None or (v[0], v[1]) > (t[0], t[1]):
                    out.append(self.entry(c, k, v))
        return out

    def collect_tombstones(self, cutoff: float) -> tuple[int, int]:
        """Forget tombstones remembered since before ``cutoff`` (wall seconds); returns
        how many and the highest HLC among them (0 if none)."""
        dead = [ck for ck, v in self.clocks.items() if v[2] and v[3] < cutoff]
        upto = 0
        for c, k in dead:
            v = self.clocks.pop((c, k))
            upto = max(upto, v[0])
            self.digest[c] = self.digest.get(c, 0) ^ entry_hash(c, k, v[0], v[1], True)
        return len(dead), upto

    def drop_older_than(self, horizon: int, is_shared: Callable[[str], bool]) -> int:
        """Drop every shared entry stamped before ``horizon`` (an HLC); returns how many."""
        stale = [ck for ck, v in self.clocks.items() if is_shared(ck[0]) and v[0] < horizon]
        for c, k in stale:
            self.drop(c, k)
        return len(stale)

    def restamp_future(self, node_id: str, now_ms: int, shift_ms: int, max_offset_ms: int) -> tuple[list[StateEntry], int]:
        """Our own (``node_id``'s) entries stamped after ``now_ms`` were stamped by a clock
        ``shift_ms`` ahead: move them back by that much.  Returns the moved entries (to
        ship again) and the HLC the clock should continue from: the newest stamp held
        that is not beyond ``now_ms + max_offset_ms``, or ``now_ms``."""
        now, shift = hlc_at(now_ms), hlc_at(shift_ms)
        moved: list[StateEntry] = []
        for (c, k), v in list(self.clocks.items()):
            if v[1] != node_id or v[0] <= now:
                continue
            entry = self.entry(c, k, v, max(v[0] - shift, 1))
            self.store(entry, v[3])
            moved.append(entry)
        horizon = hlc_at(now_ms + max_offset_ms)
        floor = now
        for v in self.clocks.values():
            if floor < v[0] <= horizon:
                floor = v[0]
        return moved, floor


# -- digests and requests ------------------------------------------------------------


def differing_categories(mine: Mapping[str, str], theirs: Mapping[str, str],
                         is_shared: Callable[[str], bool]) -> list[str]:
    """Categories whose digests differ (ours missing counts as empty), sorted: the ones
    to ask a peer about."""
    differ = {c for c, h in theirs.items() if mine.get(c, "0") != h and is_shared(c)}
    differ.update(c for c in mine if c not in theirs and mine[c] != "0")
    return sorted(differ)


def lacks_any(mine: Mapping[str, Mapping[str, list[Any]]], theirs: Mapping[str, Mapping[str, list[Any]]]) -> bool:
    """Whether a peer's clocks show a key we lack or hold older: then we ask back."""
    return any(k not in mine.get(c, {}) or mine[c][k] < v for c, kv in theirs.items() for k, v in kv.items())


def delta_chunks(entries: Iterable[StateEntry], size_of: Callable[[StateEntry], int],
                 max_bytes: int, max_entries: int = STATE_DELTA_CHUNK) -> list[list[StateEntry]]:
    """Split entries into deltas of at most ``max_entries`` entries and about
    ``max_bytes`` bytes each (``size_of`` gives an entry's encoded size)."""
    out: list[list[StateEntry]] = []
    chunk: list[StateEntry] = []
    size = 0
    for e in entries:
        n = size_of(e)
        if chunk and (size + n > max_bytes or len(chunk) >= max_entries):
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(e)
        size += n
    if chunk:
        out.append(chunk)
    return out


def too_far_ahead(hlc: int, wall_ms: int, max_offset: float) -> bool:
    """Whether state stamped ``hlc`` is beyond ``max_offset`` seconds ahead of ``wall_ms``."""
    return hlc > hlc_at(wall_ms + int(max_offset * 1000))


# -- rejoin ----------------------------------------------------------------------------


def rejoin_from(current: float | None, last_contact: float | None, now: float, absence: float) -> float | None:
    """When a peer link comes up: the last contact before an absence longer than
    ``absence`` seconds (kept until the first digest), else ``current``."""
    if current is None and last_contact is not None and now - last_contact > absence:
        return last_contact
    return current


def resync_horizon(since: float | None, peer_collected_upto: int) -> int | None:
    """On the first digest after a rejoin: if the peer has collected tombstones newer
    than our last contact ``since``, we may hold keys deleted while we were away; every
    shared entry stamped before the returned HLC is then dropped (a full resync).
    ``None``: nothing to drop."""
    if since is None or peer_collected_upto < hlc_at(int(since * 1000)):
        return None
    return hlc_at(int(since * 1000) + 1)


# -- clock skew ------------------------------------------------------------------------


def clock_step(base: float, wall: float, monotonic: float) -> tuple[float, float]:
    """``(step, new base)``: how far the wall clock jumped against the monotonic clock
    since ``base`` (wall minus monotonic) was taken.  A step below ``-CLOCK_STEP`` is
    the clock set back."""
    new = wall - monotonic
    return new - base, new


@dataclass(frozen=True, slots=True)
class StepBack:
    """What a step back of the wall clock by ``ms`` does to the correction.

    :ivar absorbed: milliseconds of correction no longer needed (the step did it).
    :ivar correction_ms: the correction from now on.
    :ivar restamp_ms: how far our entries stamped in the (now) future move back (0: none).
    """

    absorbed: int
    correction_ms: int
    restamp_ms: int


def step_back(ms: int, correction_ms: int) -> StepBack:
    """The wall clock was set back by ``ms``: a correction we were applying for it is no
    longer needed; beyond that, what we stamped in the (now) future is moved back."""
    absorbed = min(ms, -correction_ms) if correction_ms < 0 else 0
    correction_ms += absorbed
    if -correction_ms < CLOCK_STEP * 1000:  # what is left is the notice's latency, not skew
        absorbed, correction_ms = absorbed - correction_ms, 0
    return StepBack(absorbed, correction_ms, ms - absorbed if ms > absorbed else 0)


class Notice(Enum):
    """What to do with a peer's notice that our clock is ahead of its clock."""

    STALE = "stale"  # we are within its offset now (corrected since): nothing
    ABSURD = "absurd"  # more than MAX_CLOCK_CORRECTION_MS, or no reading: log, do not correct
    CORRECT = "correct"  # subtract ``ahead`` from the correction and restamp the future


def notice_decision(ahead_ms: int, correction_ms: int, peer_now_ms: int, max_offset_ms: int) -> Notice:
    """``ahead_ms``: our corrected clock minus the peer's reading in its notice."""
    if ahead_ms <= max(max_offset_ms, 0):
        return Notice.STALE
    if ahead_ms - correction_ms > MAX_CLOCK_CORRECTION_MS or peer_now_ms <= 0:
        return Notice.ABSURD
    return Notice.CORRECT


def correction_ends(raw_ms: int, peer_now_ms: int, offset_ms: int) -> bool:
    """While correcting: our own (uncorrected) clock agrees with a peer's reading again."""
    return raw_ms - peer_now_ms <= offset_ms // 2


class PeerClock(Enum):
    """A peer's clock reading (from its digest) against ours."""

    UNKNOWN = "unknown"  # an older node: no reading
    AHEAD = "ahead"  # beyond max_clock_offset: tell it, do not ask it for state
    WITHIN = "within"


def peer_clock(peer_now_ms: int, mine_ms: int, offset_ms: int) -> PeerClock:
    """``peer_now_ms``: the peer's reading (0: none); ``mine_ms``: our corrected clock."""
    if not peer_now_ms:
        return PeerClock.UNKNOWN
    if peer_now_ms - mine_ms > offset_ms:
        return PeerClock.AHEAD
    return PeerClock.WITHIN


# -- a replica ---------------------------------------------------------------------


class Replica:
    """The sans-I/O half of a state-sync replica: the store, the merge, digests and
    requests, tombstone collection and the counters.  Times are arguments; the asyncio
    shell (``StateSynchronizer``) adds the clock, the loop, the logging and the sending.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.store = LwwStore(DEFAULT_CATEGORIES)
        self.state_version = 0
        self.conflict_resolution_strategy = "latest_wins"
        self.shared: set[str] | None = None
        self.max_clock_offset = 60.0
        self.tombstone_ttl = 24 * 3600.0
        self.skewed_peers: dict[str, float] = {}  # peer -> seconds its clock is ahead of ours
        self.collected_upto = 0  # highest HLC of a tombstone we have collected
        self.stats = {"applied": 0, "stale": 0, "rejected_clock": 0, "repairs": 0, "tombstones_collected": 0,
                      "full_resyncs": 0, "skew_notices_sent": 0, "clock_corrections": 0, "clock_steps": 0,
                      "restamped": 0}

    @property
    def sync_categories(self) -> dict[str, Category]:
        """category -> key -> {"value", "timestamp", "version", "metadata"}."""
        return self.store.categories

    @sync_categories.setter
    def sync_categories(self, value: dict[str, Category]) -> None:
        self.store.categories = value

    def is_shared(self, category: str) -> bool:
        return self.shared is None or category in self.shared

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

    def get_state_summary(self) -> dict[str, dict[str, Any]]:
        return {c: {"count": len(v), "keys": list(v)[:10]} for c, v in self.sync_categories.items()}

    def merge(self, entries: Iterable[StateEntry], now: float, wall_ms: int, observe: Callable[[int], None]) -> tuple[int, list[StateEntry]]:
        """Merge remote entries (last writer wins) at wall time ``now`` (seconds), our
        corrected clock reading ``wall_ms``; ``observe`` sees every accepted HLC.  Returns
        how many changed the state and the entries refused as too far ahead."""
        horizon = hlc_at(wall_ms + int(self.max_clock_offset * 1000))
        changed = 0
        refused: list[StateEntry] = []
        store, clocks, strategy, is_shared = self.store, self.store.clocks, self.conflict_resolution_strategy, self.is_shared
        for e in entries:
            if not is_shared(e.category):
                continue
            if e.hlc > horizon:
                self.stats["rejected_clock"] += 1
                refused.append(e)
                continue
            observe(e.hlc)
            if wins(e, clocks.get((e.category, e.key)), strategy):
                store.store(e, now)
                changed += 1
            else:
                self.stats["stale"] += 1
        if changed:
            self.stats["applied"] += changed
            self.state_version += 1
        return changed, refused

    def collect(self, now: float) -> int:
        """Forget tombstones older than ``tombstone_ttl`` at wall time ``now``; returns how many."""
        n, upto = self.store.collect_tombstones(now - self.tombstone_ttl)
        if upto > self.collected_upto:
            self.collected_upto = upto
        self.stats["tombstones_collected"] += n
        return n

    def resync(self, since: float | None, peer_collected_upto: int) -> int | None:
        """A full resync when the peer collected tombstones newer than ``since`` (see
        :func:`resync_horizon`): how many stale entries were dropped, or None."""
        horizon = resync_horizon(since, peer_collected_upto)
        if horizon is None:
            return None
        self.stats["full_resyncs"] += 1
        return self.store.drop_older_than(horizon, self.is_shared)

    def delta_messages(self, entries: list[StateEntry]) -> list[Message]:
        """Deltas of at most STATE_DELTA_CHUNK entries and about STATE_CHUNK_BYTES each."""
        return [(schema.KIND_STATE_DELTA, schema.StateDelta(chunk))
                for chunk in delta_chunks(entries, entry_size, STATE_CHUNK_BYTES, STATE_DELTA_CHUNK)]

    def repair_request(self, theirs: Mapping[str, str]) -> list[Message]:
        """A request for the categories whose digests differ from a peer's, or none."""
        differ = differing_categories(self.digests(), theirs, self.is_shared)
        if not differ:
            return []
        self.stats["repairs"] += 1
        return [(schema.KIND_STATE_REQUEST, schema.StateRequest(self.clocks_for(differ)))]

    def on_request(self, req: schema.StateRequest, peer_id: str | None = None) -> list[Message]:
        """A peer's clocks for some categories: send what it lacks, ask for what we lack
        (not from a peer whose clock is ahead of ours: we would refuse what it sends)."""
        out = self.delta_messages(self.entries_newer_than(req.categories))
        if peer_id is not None and peer_id in self.skewed_peers:
            return out
        mine = self.clocks_for(list(req.categories))
        if lacks_any(mine, req.categories):
            out.append((schema.KIND_STATE_REQUEST, schema.StateRequest(mine)))
        return out

    def restamp(self, shift_ms: int, now_ms: int) -> tuple[list[StateEntry], int]:
        """Our entries stamped after ``now_ms`` move back by ``shift_ms`` (see
        :meth:`LwwStore.restamp_future`): the moved entries and the HLC to continue from."""
        moved, floor = self.store.restamp_future(self.node_id, now_ms, shift_ms, int(self.max_clock_offset * 1000))
        if moved:
            self.stats["restamped"] += len(moved)
            self.state_version += 1
        return moved, floor

    def snapshot(self, timestamp: datetime) -> StateSnapshot:
        """A copy of the whole state, with its hash and the clocks needed to merge it."""
        categories = {c: {k: dict(v) for k, v in entries.items()} for c, entries in self.sync_categories.items()}
        clocks = {f"{c}\0{k}": [v[0], v[1], v[2], v[4]] for (c, k), v in self.store.clocks.items()}
        return StateSnapshot(
            node_id=self.node_id, timestamp=timestamp, version=self.state_version, state_hash=state_hash(categories),
            data={"categories": categories, "version": self.state_version, "clocks": clocks},
            metadata={"conflict_resolution": self.conflict_resolution_strategy, "entries": len(clocks)},
        )

    def snapshot_entries(self, snapshot: StateSnapshot) -> list[StateEntry] | None:
        """The entries of a snapshot to merge; None when it fails its hash check.  Raises
        ``KeyError``, ``TypeError``, ``ValueError`` or ``AttributeError`` when it is malformed."""
        categories = snapshot.data["categories"]
        if state_hash(categories) != snapshot.state_hash:
            return None
        for c in categories:
            self.sync_categories.setdefault(c, {})
        return snapshot_entries(snapshot.node_id, snapshot.data)

    def digests(self) -> dict[str, str]:
        return self.store.digests(self.is_shared)

    def clocks_for(self, categories: list[str]) -> Clocks:
        return self.store.clocks_for(categories)

    def entries_newer_than(self, known: Clocks) -> list[StateEntry]:
        """Entries (and tombstones) the peer whose clocks are ``known`` lacks or has older."""
        return self.store.entries_newer_than(known, self.is_shared)

    def all_shared_entries(self) -> list[StateEntry]:
        return self.entries_newer_than({c: {} for c in self.sync_categories if self.is_shared(c)})


# -- snapshots -------------------------------------------------------------------------


def state_hash(categories: Mapping[str, Any]) -> str:
    """The snapshot hash of the old API: SHA-256 of the categories as sorted JSON."""
    blob = json.dumps(categories, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def snapshot_entries(node_id: str, data: Mapping[str, Any]) -> list[StateEntry]:
    """The entries (tombstones included) a snapshot's data holds; an old-format snapshot
    (without clocks) is ordered by its ISO timestamps.  Raises ``KeyError``,
    ``TypeError``, ``ValueError`` or ``AttributeError`` when it is malformed."""
    categories = data["categories"]
    clocks = data.get("clocks") or {}
    entries: list[StateEntry] = []
    for c, kv in categories.items():
        for k, v in kv.items():
            clk = clocks.get(f"{c}\0{k}")
            if clk is not None:
                hlc, node, version = int(clk[0]), str(clk[1]), int(clk[3])
            else:
                wall = datetime.fromisoformat(v["timestamp"]).timestamp()
                hlc, node, version = hlc_at(int(wall * 1000)), node_id, int(v.get("version", 0))
            entries.append(StateEntry(c, k, v["value"], hlc, node, version, False, v.get("metadata") or {}))
    for ck, clk in clocks.items():
        if clk[2]:
            c, k = ck.split("\0", 1)
            entries.append(StateEntry(c, k, None, int(clk[0]), str(clk[1]), int(clk[3]), True, None))
    return entries
