"""Clock skew (issue: delivery, item 4).  A node whose clock runs ahead of a peer's by
more than ``max_clock_offset`` is told so, corrects the clock it stamps state with,
and the mesh converges; once its clock is put back, the mesh converges within two
anti-entropy rounds and no delete is resurrected.

The sans-I/O tests route the sync protocol's messages between replicas by hand (so
rounds can be counted); the mesh test runs the same protocol through real links, the
gate and the node host."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from spiralfast import schema
from spiralfast.node.sync import StateSynchronizer, hlc_wall
from spiralfast.schema import StateEntry
from spiralfast.testing import LocalMesh

from .waiting import wait_until

SKEW = 120.0


class Pair:
    """Two replicas; ``deliver`` controls whether shipped deltas arrive."""

    def __init__(self) -> None:
        self.a = StateSynchronizer("a")
        self.b = StateSynchronizer("b")
        self.deliver = True
        self.sent: dict[str, list[tuple[int, Any]]] = {"a": [], "b": []}
        for me, other in ((self.a, self.b), (self.b, self.a)):
            me.emit = self._emit_to(other)

    def _emit_to(self, other: StateSynchronizer) -> Any:
        def emit(entry: StateEntry) -> None:
            if self.deliver:
                other.apply_entries([entry])
        return emit

    def other(self, s: StateSynchronizer) -> StateSynchronizer:
        return self.b if s is self.a else self.a

    def route(self, to: StateSynchronizer, frm: StateSynchronizer, msgs: list[tuple[int, Any]]) -> None:
        """Deliver ``msgs`` from ``frm`` to ``to`` and, in turn, every reply."""
        for kind, obj in msgs:
            self.sent[frm.node_id].append((kind, obj))
            if kind == schema.KIND_STATE_DELTA:
                to.apply_entries(obj.entries)
            elif kind == schema.KIND_STATE_REQUEST:
                self.route(frm, to, to.on_request(obj, frm.node_id))
            elif kind == schema.KIND_STATE_DIGEST:
                self.route(frm, to, to.on_digest(frm.node_id, obj))
            elif kind == schema.KIND_CLOCK_SKEW:
                to.on_clock_skew(frm.node_id, obj)

    def round(self) -> None:
        """One anti-entropy round: each replica's digest to the other."""
        self.route(self.b, self.a, [self.a.digest_message()])
        self.route(self.a, self.b, [self.b.digest_message()])

    def agree(self) -> bool:
        return self.a.digests() == self.b.digests()


def skewed(s: StateSynchronizer, seconds: float) -> None:
    s.wall_time = lambda: time.time() + seconds


def fixed(s: StateSynchronizer) -> None:
    s.wall_time = time.time


def test_skewed_node_is_told_corrects_and_a_later_write_elsewhere_wins() -> None:
    p = Pair()
    skewed(p.b, SKEW)
    p.b.update_local_state("agents", "k", "from-b")  # stamped 120 s ahead
    assert p.a.get_local_state("agents", "k") is None and p.a.stats["rejected_clock"] == 1

    p.round()  # a sees b's clock in its digest: tells b instead of asking for state
    assert "b" in p.a.skewed_peers
    assert any(k == schema.KIND_CLOCK_SKEW for k, _ in p.sent["a"])
    assert p.b.stats["clock_corrections"] == 1
    assert -SKEW * 1000 - 2000 < p.b.correction_ms < -SKEW * 1000 + 2000
    # what b stamped in the future was moved back and shipped again: a has it now
    assert p.a.get_local_state("agents", "k") == "from-b"
    assert abs(hlc_wall(p.b.clock.last) - time.time()) < 2

    p.a.update_local_state("agents", "k", "from-a")  # a later, correct write replaces it everywhere
    assert p.b.get_local_state("agents", "k") == "from-a"
    p.round()
    assert p.agree() and "b" not in p.a.skewed_peers


def test_no_endless_repair_loop_while_a_peer_is_ahead() -> None:
    """Even a node that never corrects (an older build) costs one notice per round,
    not a repair exchange of every entry per round."""
    p = Pair()
    skewed(p.b, SKEW)
    p.b.on_clock_skew = lambda *_: None  # type: ignore[method-assign]  # ignores notices
    p.deliver = False
    for i in range(50):
        p.b.update_local_state("agents", f"k{i}", i)
    p.round()  # the first round: a learns of the skew from b's digest
    refused = p.a.stats["rejected_clock"]
    for _ in range(5):
        p.sent = {"a": [], "b": []}
        p.round()
        kinds_a = [k for k, _ in p.sent["a"]]
        assert kinds_a.count(schema.KIND_STATE_REQUEST) == 0  # a never asks b for state it would refuse
        assert kinds_a.count(schema.KIND_CLOCK_SKEW) == 1
        assert not [k for k, _ in p.sent["b"] if k == schema.KIND_STATE_DELTA]
    assert p.a.stats["rejected_clock"] == refused  # nothing shipped and refused again


def test_clock_put_back_converges_within_two_rounds_and_no_delete_is_resurrected() -> None:
    p = Pair()
    p.a.update_local_state("agents", "shared", "base")
    skewed(p.b, SKEW)
    p.deliver = False  # b is cut off while its clock is wrong: nobody tells it
    p.b.update_local_state("agents", "while-skewed", "b")
    assert hlc_wall(p.b.clock.last) > time.time() + SKEW - 5

    fixed(p.b)  # the clock is put back
    p.b.update_local_state("agents", "after-fix", "b")
    assert p.b.stats["clock_steps"] == 1 and p.b.stats["restamped"] >= 1
    assert abs(hlc_wall(p.b.clock.last) - time.time()) < 2  # the HLC does not stay ahead

    rounds = 0
    while not p.agree() and rounds < 2:
        p.round()
        rounds += 1
    assert p.agree(), "not converged within two anti-entropy rounds of the fix"
    assert p.a.get_local_state("agents", "while-skewed") == "b"
    assert p.a.get_local_state("agents", "after-fix") == "b"

    # a peer deletes what b wrote after the fix: the delete wins on both sides
    p.deliver = True
    assert p.a.delete_local_state("agents", "after-fix")
    assert p.b.get_local_state("agents", "after-fix") is None
    p.round()
    p.round()
    assert p.agree()
    assert p.a.get_local_state("agents", "after-fix") is None
    assert p.b.get_local_state("agents", "after-fix") is None


def test_a_correction_ends_when_the_clock_is_right_again() -> None:
    p = Pair()
    skewed(p.b, SKEW)
    p.round()
    assert p.b.correction_ms < 0
    fixed(p.b)  # a step back: the correction is absorbed at once
    assert p.b.wall_ms() == pytest.approx(int(time.time() * 1000), abs=1500)
    assert p.b.correction_ms == 0

    # slewed rather than stepped back (no jump seen): the next digest from a peer ends it
    q = Pair()
    skewed(q.b, SKEW)
    q.round()
    assert q.b.correction_ms < 0
    q.b._base -= SKEW  # as if the wall clock had been slewed back slowly
    fixed(q.b)
    q.route(q.b, q.a, [q.a.digest_message()])
    assert q.b.correction_ms == 0


def test_skew_over_the_mesh_logs_once_and_converges(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with LocalMesh(3, heartbeat_interval=0.2, sync_interval=0.1) as mesh:
            a, b, c = mesh.nodes
            skewed(b.state, SKEW)
            for i in range(20):
                b.state.update_local_state("agents", f"k{i}", i)
            await wait_until(lambda: all(len(n.state.get_local_state("agents") or {}) == 20 for n in (a, c)), 'all(len(n.state.get_local_state("agents") or {}) == 20 for n in (a, c))', timeout=10)
            assert b.state.stats["clock_corrections"] >= 1
            a.state.update_local_state("agents", "k0", "from-a")  # a later write elsewhere replaces b's
            await wait_until(lambda: b.state.get_local_state("agents", "k0") == "from-a", 'b.state.get_local_state("agents", "k0") == "from-a"')
            await wait_until(lambda: a.state.digests() == b.state.digests() == c.state.digests(), 'a.state.digests() == b.state.digests() == c.state.digests()', timeout=5)
            before = sum(n.state.stats["repairs"] for n in mesh.nodes)
            await asyncio.sleep(1.0)  # a window that means time: ten rounds in which no repair loop may start
            assert sum(n.state.stats["repairs"] for n in mesh.nodes) - before <= 2
            assert all(n.node_id in a.nodes for n in (b, c))  # nobody declared dead

            fixed(b.state)
            b.state.update_local_state("agents", "late", 1)
            await wait_until(lambda: a.state.get_local_state("agents", "late") == 1, 'a.state.get_local_state("agents", "late") == 1')
            a.state.delete_local_state("agents", "late")
            await wait_until(lambda: b.state.get_local_state("agents", "late") is None, 'b.state.get_local_state("agents", "late") is None')
            await wait_until(lambda: a.state.digests() == b.state.digests() == c.state.digests(), 'a.state.digests() == b.state.digests() == c.state.digests()', timeout=5)
            a.state.update_local_state("agents", "fence", 1)  # a later write: rounds have passed once it is everywhere
            await wait_until(lambda: all(n.state.get_local_state("agents", "fence") == 1 for n in (b, c)), 'all(n.state.get_local_state("agents", "fence") == 1 for n in (b, c))')
            await wait_until(lambda: a.state.digests() == b.state.digests() == c.state.digests(), 'a.state.digests() == b.state.digests() == c.state.digests()', timeout=5)
            assert b.state.get_local_state("agents", "late") is None  # not resurrected

    with caplog.at_level(logging.ERROR, logger="spiralfast.node.sync"):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "spiralfast.node.sync"]
    # one line per condition per minute: a peer ahead (seen by a and by c), our clock ahead (b)
    assert len(errors) <= 3, [r.getMessage() for r in errors]


def test_malformed_or_absurd_notices_change_nothing() -> None:
    """Review finding: ClockSkew(now_ms=-2**62) from a member drove the stamping clock
    into year -146136543; now such numbers are refused at decode time, and a notice
    asking for more than a week of correction is logged, not applied."""
    import msgspec

    for kind, bad in ((schema.ClockSkew, [-(2**62), 0]), (schema.ClockSkew, [1, -1]),
                      (schema.OriginEnd, ["abcs", -1]), (schema.OriginEnd, ["abcs", 2**64 - 1]),
                      (schema.StateDigest, [{}, True, 0, -5])):
        with pytest.raises(msgspec.ValidationError):
            msgspec.msgpack.decode(msgspec.msgpack.encode(bad), type=kind)

    s = StateSynchronizer("b")
    s.on_clock_skew("m", schema.ClockSkew(1, 0))  # "you are 56 years ahead"
    assert s.correction_ms == 0 and s.stats["clock_corrections"] == 0
    s.update_local_state("agents", "k", 1)  # still works, stamped now
    assert abs(hlc_wall(s.clock.last) - time.time()) < 2

    async def main() -> None:
        async with LocalMesh(2, heartbeat_interval=0.2) as mesh:
            a, m = mesh.nodes
            before = a.gate.stats["frame_errors"]
            link = m.outbox.links[a.node_id]
            # an insider's frame carrying an out-of-range notice: refused and counted, nothing applied
            from spiralfast.codec import FrameWriter
            w = FrameWriter()
            w.add(schema.KIND_CLOCK_SKEW, 0, b"", b"", [-(2**62), 0])
            link.send_frame(bytes(w.finish()))
            await wait_until(lambda: a.gate.stats["frame_errors"] == before + 1, 'a.gate.stats["frame_errors"] == before + 1')  # it arrived and was refused
            assert a.state.correction_ms == 0
            a.state.update_local_state("agents", "after", 1)
            await wait_until(lambda: m.state.get_local_state("agents", "after") == 1, 'm.state.get_local_state("agents", "after") == 1')
            assert a.gate.stats["frame_errors"] == before + 1  # counted (metric: bad_messages_total)
            assert m.node_id in a.nodes  # and the link is still up

    asyncio.run(main())
