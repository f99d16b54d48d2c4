"""Membership, sans-I/O: who is in the mesh, by heartbeats, gossip and leaves.

``Membership`` owns the node table (``nodes``, shared with the registry: one source
of truth).  It never touches a socket, a task or a clock: every method takes the
monotonic ``now`` it should use and returns effects for the asyncio shell to carry
out, as typed dataclasses (:data:`Effect`):

- :class:`Joined`: a node became known;
- :class:`Lost`: a node left (``"left"``), fell silent (``"silent"``) or was removed;
  the shell closes its link and stops dialling it;
- :class:`Dial`: gossip named an endpoint we have no link to (or a suspected node's
  endpoint: a successful dial refutes the suspicion);
- :class:`Suspected` / :class:`Refuted`: a suspicion began / ended;
- :class:`SendPing`: send ``Ping(nonce, us)`` to that node (over a bus that reaches it
  only, or by any route: link, bus or relay);
- :class:`SendPingReq`: ask ``helper`` to probe ``target`` for us;
- :class:`SendAck`: tell ``to`` that ``node_id`` answered the probe ``nonce``.

The shell matches them with ``match``/``isinstance``.  Randomness (nonces, the choice of
probe helpers) comes from an injected ``rng``; wall-clock timestamps shown in node
records (``last_heartbeat``) from an injected ``wall`` function.

Failure detection reads only ``now`` (monotonic), by two rules:

- a node silent for ``SILENCE_FACTOR`` heartbeat intervals is lost (``"silent"``); a node
  that is slow or stopped (SIGSTOP keeps its TCP links open) is judged by this rule only;
- a node whose direct link was closed *by the peer's side* (a dead process's socket is
  closed by its kernel) is suspected at once, unless a newer link to it is up.  It is
  probed SWIM-style: directly over any bus that reaches it, and indirectly through up to
  ``PROBE_HELPERS`` live members (``PingReq``), ``PROBE_ROUNDS`` times within
  ``suspicion_timeout``; its endpoint is dialled again.  Anything heard from it (a
  heartbeat over a bus, a new link, an answer to a probe, relayed by a helper) refutes the
  suspicion; otherwise it is lost (``"unreachable"``) when the timeout ends, whatever
  ``heartbeat_interval`` is.  Links this node closed itself (a slow peer) suspect nobody.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from ..enums import NodeStatus
from ..records import MeshNode
from ..wire import schema
from ..wire.signing import self_record_bytes, verify

__all__ = [
    "Dial", "Effect", "Joined", "Lost", "Membership", "NodeTable", "Refuted", "Rng", "SendAck",
    "SendPing", "SendPingReq", "Suspected", "Suspicion", "endpoint_claim",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Joined:
    """``node`` became known (a new member)."""

    node: MeshNode


@dataclass(frozen=True, slots=True)
class Lost:
    """``node_id`` left (``"left"``), fell silent (``"silent"``), did not answer its
    probes (``"unreachable"``) or was removed."""

    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dial:
    """Dial ``endpoint``, expecting ``node_id`` there."""

    endpoint: str
    node_id: str


@dataclass(frozen=True, slots=True)
class Suspected:
    """A suspicion of ``node_id`` began (its link was closed by its side)."""

    node_id: str


@dataclass(frozen=True, slots=True)
class Refuted:
    """The suspicion of ``node_id`` ended: it is alive (``how``: what proved it)."""

    node_id: str
    how: str


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send ``Ping(nonce, us)`` to ``node_id``: over a bus that reaches it only
    (``any_route`` False), or by any route (link, bus or relay)."""

    node_id: str
    nonce: int
    any_route: bool


@dataclass(frozen=True, slots=True)
class SendPingReq:
    """Ask ``helper`` to probe ``target`` for us (its answer carries ``nonce``)."""

    helper: str
    target: str
    nonce: int


@dataclass(frozen=True, slots=True)
class SendAck:
    """Tell ``to`` that ``node_id`` answered the probe ``nonce``."""

    to: str
    node_id: str
    nonce: int


#: One decision of :class:`Membership` for the shell to carry out.
Effect = Joined | Lost | Dial | Suspected | Refuted | SendPing | SendPingReq | SendAck


class NodeTable(Protocol):
    """The node table membership keeps (``MeshRegistry``): one source of truth."""

    @property
    def nodes(self) -> dict[str, MeshNode]: ...

    def register_node(self, node: MeshNode) -> bool: ...

    def unregister_node(self, node_id: str) -> bool: ...

    def update_node_heartbeat(self, node_id: str, data: dict[str, Any]) -> bool: ...


class Rng(Protocol):
    """The randomness membership needs (``random.Random`` has it; tests seed one)."""

    def getrandbits(self, k: int, /) -> int: ...

    def sample(self, population: Sequence[_T], k: int) -> list[_T]: ...


#: A node silent this many heartbeat intervals is removed (the drop-in API: 3).
SILENCE_FACTOR = 3
#: Gossip records about other nodes accepted per message; more is hostile.
MAX_GOSSIP_RECORDS = 1024
#: A removed node is not learnt again from other nodes' gossip for this many heartbeat
#: intervals (a peer that has not noticed yet would bring it back); from itself, at once.
RELEARN_FACTOR = 2 * SILENCE_FACTOR
#: Record fields a node may announce about itself (gossip of its own record).
_SELF_FIELDS = ("name", "status", "capabilities", "recursion_depth", "entropy_level", "metadata",
                "websocket_endpoint")
#: Seconds a suspected node has to answer before it is removed (``MeshConfig.suspicion_timeout``).
DEFAULT_SUSPICION_TIMEOUT = 3.0
#: Live members asked to probe a suspected node in each round (SWIM's k).
PROBE_HELPERS = 3
#: Probe rounds within the suspicion timeout (the first at once): one lost probe or one
#: helper that died too does not decide.
PROBE_ROUNDS = 3
#: Probes this node runs for other nodes at once (their PingReqs); more are ignored.
MAX_FORWARDS = 256


class Suspicion:
    """A suspected node: since when, until when, and the nonce its probes carry."""

    __slots__ = ("since", "deadline", "nonce", "next_probe")

    def __init__(self, since: float, deadline: float, nonce: int) -> None:
        self.since = since
        self.deadline = deadline
        self.nonce = nonce
        self.next_probe = since


def endpoint_claim(record: dict[str, Any], mesh: str) -> bytes:
    """What a node signs about its endpoint (``signing.self_record_bytes``): its id, its
    WebSocket endpoint, its incarnation and public key (from ``metadata``) and the mesh -
    a claim replayed for another node id, key, process or mesh does not verify."""
    meta = record.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return self_record_bytes({"node_id": record.get("node_id"), "websocket_endpoint": record.get("websocket_endpoint"),
                              "incarnation": meta.get("incarnation"), "public_key": meta.get("public_key"),
                              "mesh": mesh})


class Membership:
    """The node table of one node and the rules that change it.

    :param local: this node's record (kept in ``nodes`` while running).
    :param registry: the ``MeshRegistry`` whose ``nodes`` dict is the table.
    :param heartbeat_interval: seconds between heartbeats (failure detection scales).
    :param suspicion_timeout: seconds a suspected node has to answer a probe.
    :param rng: randomness for nonces and the choice of helpers (tests pass a seeded one).
    :param wall: the wall clock for the records' ``last_heartbeat`` (display only).
    """

    def __init__(self, local: MeshNode, registry: NodeTable, heartbeat_interval: float,
                 suspicion_timeout: float = DEFAULT_SUSPICION_TIMEOUT, rng: Rng | None = None,
                 wall: Callable[[], datetime] = datetime.now) -> None:
        self.local = local
        self.node_id = local.node_id
        self.registry = registry
        self.nodes: dict[str, MeshNode] = registry.nodes
        self.heartbeat_interval = heartbeat_interval
        self.last_seen: dict[str, float] = {}  # node id -> monotonic time last heard of
        self.linked: set[str] = set()  # node ids we have a direct, authenticated link to
        self.removed: dict[str, float] = {}  # node id -> monotonic time it was removed
        self.now = 0.0  # the latest monotonic time we were given
        self.suspicion_timeout = suspicion_timeout
        self.suspects: dict[str, Suspicion] = {}  # node id -> its suspicion
        #: Probes run for others: our nonce -> (asker, the asker's nonce, target, expiry).
        self.forwards: dict[int, tuple[str, int, str, float]] = {}
        self.rng: Rng = rng if rng is not None else random.Random()
        self.wall = wall
        #: Signed endpoints (``enable_signed_endpoints``): this node signs its own
        #: endpoint claim, and an endpoint learnt from someone else's gossip is kept and
        #: dialled only when the node it names signed it.  None: unchecked (unit tests).
        self.signer: Callable[[bytes], bytes] | None = None
        self.mesh = ""
        self.pinned: Callable[[str], bytes | None] = lambda nid: None
        self.endpoints_refused = 0  # gossiped endpoints not signed by the node they name
        self._signed_for: tuple[Any, ...] | None = None

    def enable_signed_endpoints(self, sign: Callable[[bytes], bytes], mesh: str,
                                pinned: Callable[[str], bytes | None] | None = None) -> None:
        """Sign this node's endpoint with ``sign`` (its Ed25519 key) and accept a gossiped
        endpoint only under a signature of the key pinned for its node id (``pinned``;
        else the key its node's own record gave us; else the key the record carries)."""
        self.signer, self.mesh = sign, mesh
        if pinned is not None:
            self.pinned = pinned
        self._signed_for = None
        self.sign_local()

    def sign_local(self) -> None:
        """(Re)sign this node's endpoint claim in its record's metadata (``endpoint_sig``)."""
        if self.signer is None:
            return
        meta, ep = self.local.metadata, self.local.websocket_endpoint
        what = (ep, meta.get("incarnation"), meta.get("public_key"), self.mesh)
        if what == self._signed_for:
            return
        if ep:
            meta["endpoint_sig"] = self.signer(endpoint_claim(self.local.to_dict(), self.mesh)).hex()
        else:
            meta.pop("endpoint_sig", None)
        self._signed_for = what

    def endpoint_ok(self, record: dict[str, Any]) -> bool:
        """May the endpoint in ``record`` (second hand: gossip relayed by a member) be
        kept and dialled?  Only when the node it names signed it (issue 23 #7)."""
        if self.signer is None:
            return True
        nid = record.get("node_id")
        meta = record.get("metadata")
        if not isinstance(nid, str) or not isinstance(meta, dict):
            self.endpoints_refused += 1
            return False
        pub_hex, sig_hex = meta.get("public_key"), meta.get("endpoint_sig")
        try:
            pub, sig = bytes.fromhex(pub_hex), bytes.fromhex(sig_hex)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.endpoints_refused += 1
            return False
        want = self.pinned(nid)
        if want is None:
            known = self.nodes.get(nid)
            k = known.metadata.get("public_key") if known is not None else None
            if isinstance(k, str):
                try:
                    want = bytes.fromhex(k)
                except ValueError:
                    want = None
        if (want is not None and want != pub) or not verify(pub, endpoint_claim(record, self.mesh), sig):
            self.endpoints_refused += 1
            return False
        return True

    @property
    def silence_limit(self) -> float:
        return SILENCE_FACTOR * self.heartbeat_interval

    # -- the local node -------------------------------------------------------------

    def join_local(self) -> None:
        self.local.status = NodeStatus.ACTIVE
        self.local.last_heartbeat = self.wall()
        self.registry.register_node(self.local)

    def leave_local(self) -> list[str]:
        """The node stops: forget every other node; returns their ids."""
        self.local.status = NodeStatus.DISCONNECTED
        gone = [n for n in self.nodes if n != self.node_id]
        for nid in gone:
            self.registry.unregister_node(nid)
        self.last_seen.clear()
        self.linked.clear()
        self.suspects.clear()
        self.forwards.clear()
        return gone

    def local_record(self) -> dict[str, Any]:
        self.local.last_heartbeat = self.wall()
        self.sign_local()
        return self.local.to_dict()

    def heartbeat(self, wall: float) -> schema.Heartbeat:
        ln = self.local
        ln.last_heartbeat = self.wall()
        return schema.Heartbeat(self.node_id, ln.status.value, ln.recursion_depth, ln.entropy_level, wall)

    # -- inbound ---------------------------------------------------------------------

    def seen(self, record: dict[str, Any], now: float, *, authoritative: bool = False) -> list[Effect]:
        """A record of a node: a new node joins; a known one is refreshed.
        ``authoritative``: the record comes from that node itself over an
        authenticated route, so its fields replace ours."""
        nid = record.get("node_id")
        if not isinstance(nid, str) or not nid or nid == self.node_id:
            return []
        node = self.nodes.get(nid)
        self.last_seen[nid] = now
        self.now = now
        effects = self._refute(nid, "heard")
        if node is None:
            try:
                node = MeshNode.from_dict(record)
            except (KeyError, TypeError, ValueError, AttributeError):
                node = MeshNode.from_dict({"node_id": nid, "name": "codex_node_" + nid[:8]})
            node.last_heartbeat = self.wall()
            self.registry.register_node(node)
            return [Joined(node)]
        node.last_heartbeat = self.wall()
        if authoritative:
            self._update(node, record)
        elif (record.get("websocket_endpoint") and isinstance(record["websocket_endpoint"], str)
              and self.endpoint_ok(record)):
            node.websocket_endpoint = record["websocket_endpoint"]
        if node.status == NodeStatus.DISCONNECTED:
            node.status = NodeStatus.ACTIVE
        return effects

    def _update(self, node: MeshNode, record: dict[str, Any]) -> None:
        try:
            fresh = MeshNode.from_dict({**node.to_dict(), **{k: record[k] for k in _SELF_FIELDS if k in record}})
        except (KeyError, TypeError, ValueError, AttributeError):
            return
        caps_changed = fresh.capabilities != node.capabilities
        for k in _SELF_FIELDS:
            setattr(node, k, getattr(fresh, k))
        if caps_changed:  # keep the registry's capability index current
            self.registry.register_node(node)

    def link_ready(self, peer_id: str, record: dict[str, Any] | None, now: float) -> list[Effect]:
        """An authenticated member link to ``peer_id`` is up."""
        self.linked.add(peer_id)
        rec = dict(record) if isinstance(record, dict) else {}
        rec["node_id"] = peer_id
        return self.seen(rec, now, authoritative=True)

    def link_lost(self, peer_id: str, now: float | None = None, *, by_peer: bool = False) -> list[Effect]:
        """The direct link to ``peer_id`` closed: it is shown as disconnected while
        nothing else is heard from it.  ``by_peer``: the peer's side closed it (its
        process stopped or died: a node that is only slow or paused keeps its links
        open), so it is suspected at once and probed; else (we closed it: a slow peer)
        it stays a member until silent or gone."""
        self.linked.discard(peer_id)
        node = self.nodes.get(peer_id)
        if node is None or node is self.local:
            return []
        node.status = NodeStatus.DISCONNECTED
        if not by_peer or now is None:
            return []
        self.now = now
        return self.suspect(peer_id, now)

    # -- suspicion (SWIM-style indirect probes) --------------------------------------

    def suspect(self, node_id: str, now: float) -> list[Effect]:
        """Suspect ``node_id`` (a known node we have no link to): probe it now and
        remove it at ``now + suspicion_timeout`` unless something refutes it."""
        node = self.nodes.get(node_id)
        if node is None or node is self.local or node_id in self.linked or node_id in self.suspects:
            return []
        s = self.suspects[node_id] = Suspicion(now, now + self.suspicion_timeout, self._nonce())
        node.status = NodeStatus.DISCONNECTED
        effects: list[Effect] = [Suspected(node_id)]
        effects += self._probe(node_id, s, now)
        if node.websocket_endpoint:  # a node that is alive answers a new dial at once
            effects.append(Dial(node.websocket_endpoint, node_id))
        return effects

    def is_suspect(self, node_id: str) -> bool:
        return node_id in self.suspects

    def _nonce(self) -> int:
        return self.rng.getrandbits(62) + 1

    def _probe(self, node_id: str, s: Suspicion, now: float) -> list[Effect]:
        """One probe round: a Ping over any bus that reaches the suspect (a direct
        route), and PingReqs to up to PROBE_HELPERS live members we are linked to."""
        s.next_probe = now + self.suspicion_timeout / PROBE_ROUNDS
        effects: list[Effect] = [SendPing(node_id, s.nonce, False)]
        live = sorted(n for n in self.linked if n != node_id and n not in self.suspects and n in self.nodes)
        for helper in self.rng.sample(live, min(PROBE_HELPERS, len(live))):
            effects.append(SendPingReq(helper, node_id, s.nonce))
        return effects

    def _refute(self, node_id: str, how: str) -> list[Effect]:
        if self.suspects.pop(node_id, None) is None:
            return []
        return [Refuted(node_id, how)]

    def _heard(self, node_id: str, now: float) -> list[Effect]:
        """``node_id`` itself spoke to us (authenticated): it is alive."""
        node = self.nodes.get(node_id)
        if node is None or node is self.local:
            return []
        if self.last_seen.get(node_id, now) < now:
            self.last_seen[node_id] = now
        node.last_heartbeat = self.wall()
        if node.status == NodeStatus.DISCONNECTED:
            node.status = NodeStatus.ACTIVE
        return self._refute(node_id, "heard")

    def on_ping(self, m: schema.Ping, sender: str | None, now: float) -> list[Effect]:
        """A probe of us: answer whoever asked (a Ping straight from its prober also
        proves the prober alive)."""
        effects = self._heard(m.reply_to, now) if sender == m.reply_to else []
        if m.reply_to != self.node_id:
            effects.append(SendAck(m.reply_to, self.node_id, m.nonce))
        return effects

    def on_ping_req(self, m: schema.PingReq, sender: str | None, now: float) -> list[Effect]:
        """``sender`` suspects ``m.target`` and asks us to probe it: we Ping it by any
        route and pass its Ack back (bounded: MAX_FORWARDS at once)."""
        if sender is None or sender == self.node_id:
            return []
        if m.target == self.node_id:  # it asks about us: we are alive
            return [SendAck(sender, self.node_id, m.nonce)]
        if m.target not in self.nodes:
            return []
        self._expire_forwards(now)
        if len(self.forwards) >= MAX_FORWARDS:
            return []
        nonce = self._nonce()
        self.forwards[nonce] = (sender, m.nonce, m.target, now + self.suspicion_timeout)
        return [SendPing(m.target, nonce, True)]

    def on_ack(self, m: schema.Ack, sender: str | None, now: float) -> list[Effect]:
        """An answer to a probe: ours (the suspicion ends), or one we ran for another
        node (passed back to it)."""
        effects: list[Effect] = []
        if sender is not None and sender == m.node_id:
            effects += self._heard(m.node_id, now)
        fwd = self.forwards.pop(m.nonce, None)
        if fwd is not None and fwd[2] == m.node_id:
            effects.append(SendAck(fwd[0], m.node_id, fwd[1]))
        s = self.suspects.get(m.node_id)
        if s is not None and s.nonce == m.nonce:
            effects += self._refute(m.node_id, f"answered through {sender}")
        return effects

    def _expire_forwards(self, now: float) -> None:
        if self.forwards:
            for n in [n for n, f in self.forwards.items() if f[3] <= now]:
                del self.forwards[n]

    def hold_suspicions(self, seconds: float) -> None:
        """This node could not hear answers for ``seconds`` (not reading, or not
        running): the suspects' time to answer moves on by as much."""
        for s in self.suspects.values():
            s.deadline += seconds

    def on_heartbeat(self, hb: schema.Heartbeat, now: float) -> list[Effect]:
        effects = self.seen({"node_id": hb.node_id, "name": "codex_node_" + hb.node_id[:8], "status": hb.status}, now)
        if hb.node_id in self.nodes:
            self.registry.update_node_heartbeat(
                hb.node_id,
                {"status": hb.status, "recursion_depth": hb.recursion_depth, "entropy_level": hb.entropy_level},
            )
        return effects

    def on_gossip(self, g: schema.Gossip, sender: str | None, now: float, *, learn: bool,
                  dial: bool) -> list[Effect]:
        """Gossip from ``sender``: its own record refreshes it; other records are
        learnt (``learn``: over a shared bus, where gossip is how nodes meet) and
        their endpoints dialled (``dial``)."""
        effects: list[Effect] = []
        for rec in g.nodes[:MAX_GOSSIP_RECORDS]:
            if not isinstance(rec, dict):
                continue
            nid = rec.get("node_id")
            if not isinstance(nid, str) or not nid or nid == self.node_id:
                continue
            if nid == sender:
                effects += self.seen(rec, now, authoritative=True)
            elif learn:
                effects += self.learn(rec, now)
            ep = rec.get("websocket_endpoint")
            if (dial and isinstance(ep, str) and ep and nid not in self.linked
                    and (nid == sender or self.endpoint_ok(rec))):  # signed by the node it names
                effects.append(Dial(ep, nid))
        return effects

    def learn(self, record: dict[str, Any], now: float) -> list[Effect]:
        """A record of a node from another node's gossip (second hand): it introduces a
        node we do not know, but never keeps a known one alive; only the node itself does
        (a killed node, still listed by every survivor's gossip, would never expire)."""
        nid = record.get("node_id")
        if not isinstance(nid, str):
            return []
        node = self.nodes.get(nid)
        if node is not None:
            ep = record.get("websocket_endpoint")
            if ep and isinstance(ep, str) and self.endpoint_ok(record):
                node.websocket_endpoint = ep
            return []
        gone = self.removed.get(nid)
        if gone is not None and now - gone < RELEARN_FACTOR * self.heartbeat_interval:
            return []
        if record.get("websocket_endpoint") and not self.endpoint_ok(record):
            record = {**record, "websocket_endpoint": None}  # known, never dialled: not signed by it
        return self.seen(record, now)

    def on_leave(self, node_id: str) -> list[Effect]:
        return self.remove(node_id, "left")

    def remove(self, node_id: str, reason: str) -> list[Effect]:
        self.last_seen.pop(node_id, None)
        self.suspects.pop(node_id, None)
        if node_id != self.node_id and node_id in self.nodes:
            self.removed[node_id] = self.now
        self.linked.discard(node_id)
        if node_id == self.node_id or not self.registry.unregister_node(node_id):
            return []
        return [Lost(node_id, reason)]

    def alive(self, node_id: str, now: float) -> None:
        """Something other than a heartbeat proves ``node_id`` is alive (frames from it
        keep arriving while our own backlog delays its heartbeats behind them)."""
        if node_id in self.last_seen and self.last_seen[node_id] < now:
            self.last_seen[node_id] = now
            node = self.nodes.get(node_id)
            if node is not None:
                node.last_heartbeat = self.wall()

    def stalled(self, seconds: float) -> None:
        """This node did not run for ``seconds`` (a blocked loop, SIGSTOP): the silence
        was ours, not the peers'.  Their clocks move on by as much."""
        for nid in self.last_seen:
            self.last_seen[nid] += seconds
        self.hold_suspicions(seconds)

    # -- time ------------------------------------------------------------------------

    def sweep(self, now: float) -> list[Effect]:
        """Failure detection: every node silent longer than the limit is lost; so is
        every suspect whose time to answer is over; the others are probed again."""
        limit = self.silence_limit
        self.now = now
        forget = RELEARN_FACTOR * self.heartbeat_interval
        for nid in [n for n, t in self.removed.items() if now - t >= forget]:
            del self.removed[nid]
        self._expire_forwards(now)
        effects: list[Effect] = []
        for nid, s in list(self.suspects.items()):
            if now >= s.deadline:
                effects += self.remove(nid, "unreachable")
            elif now >= s.next_probe:
                effects += self._probe(nid, s, now)
        for nid in [n for n in self.nodes if n != self.node_id]:
            if now - self.last_seen.get(nid, now) > limit:
                effects += self.remove(nid, "silent")
            elif nid not in self.last_seen:  # added by the user (register_node): start its clock
                self.last_seen[nid] = now
        return effects
