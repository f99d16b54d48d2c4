"""StateSynchronizer built on a fake SyncPort and a fake clock: no MeshCore, no event
loop (the snapshot calls are driven by hand; the fake port never suspends)."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from spiralfast.node.sync import StateSynchronizer
from spiralfast.ports.sync import SyncPort
from spiralfast.protocol.statesync import hlc_wall
from spiralfast.records import SyncState
from spiralfast.wire import schema

if TYPE_CHECKING:
    from spiralfast.node.core import MeshCore

    def _mesh_core_is_a_sync_port(core: MeshCore) -> SyncPort:
        return core  # mypy checks that MeshCore provides the port as it is

T = TypeVar("T")
T0 = 1_700_000_000.0


@dataclass
class Settings:
    sync_interval: float = 2.5
    shared_categories: list[str] | None = field(default_factory=lambda: ["agents"])
    max_clock_offset: float = 30.0
    tombstone_ttl: float = 100.0
    heartbeat_interval: float = 4.0
    peers: list[str] = field(default_factory=lambda: ["ws://peer"])


@dataclass
class FakePort:
    config: Settings = field(default_factory=Settings)
    nodes: dict[str, object] = field(default_factory=lambda: {"p": object()})
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def send_to_node(self, target_node_id: str, event_type: str, data: dict[str, Any]) -> bool:
        self.sent.append((target_node_id, event_type, data))
        return True


class Clock:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 100.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends to its end, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine suspended")


def make(port: FakePort | None = None) -> tuple[StateSynchronizer, FakePort, Clock]:
    port = port or FakePort()
    clock = Clock()
    s = StateSynchronizer("me", port, clock=clock.time, monotonic=clock.monotonic)
    return s, port, clock


def test_settings_come_from_the_port() -> None:
    s, port, _ = make()
    assert s.mesh_core is port
    assert (s.sync_interval, s.shared, s.max_clock_offset, s.tombstone_ttl, s.absence) == (
        2.5, {"agents"}, 30.0, 100.0, 12.0)
    assert s.sync_status == SyncState.SYNCING  # it has peers: synced only once a digest agrees
    port2 = FakePort(config=Settings(shared_categories=None, peers=[]))
    s2, _, _ = make(port2)
    assert s2.shared is None and s2.sync_status == SyncState.SYNCED


def test_the_injected_clock_stamps_state_and_times_tombstones() -> None:
    s, _, clock = make()
    s.update_local_state("agents", "k", 1)
    assert hlc_wall(s.clock.last) == T0
    ts = s.sync_categories["agents"]["k"]["timestamp"]
    assert ts is not None and ts.startswith("2023-11-14")
    clock.advance(5)
    assert s.delete_local_state("agents", "k")
    clock.advance(99)
    assert s.collect_tombstones() == 0  # 99 s < tombstone_ttl
    clock.advance(2)
    assert s.collect_tombstones() == 1


def test_a_wall_clock_set_back_is_a_step() -> None:
    s, _, clock = make()
    s.update_local_state("agents", "k", 1)
    clock.wall -= 60  # set back; the monotonic clock goes on
    s.update_local_state("agents", "j", 2)
    assert s.stats["clock_steps"] == 1 and s.stats["restamped"] == 1
    assert hlc_wall(s.clock.last) < T0  # the HLC continues from the present


def test_digest_from_a_peer_far_ahead_gets_a_notice() -> None:
    s, _, _ = make()
    notice = s.on_digest("p", schema.StateDigest({"agents": "0"}, True, 0, int((T0 + 60) * 1000)))
    assert [k for k, _ in notice] == [schema.KIND_CLOCK_SKEW] and "p" in s.skewed_peers
    assert s.on_digest("p", schema.StateDigest({"agents": "0"}, True, 0, int(T0 * 1000))) == []
    assert "p" not in s.skewed_peers and s.sync_status == SyncState.SYNCED


def test_sync_with_node_and_requests_go_through_the_port() -> None:
    s, port, _ = make()
    s.update_local_state("agents", "k", {"v": 1})
    assert run(s.sync_with_node("p")) is True
    assert port.sent[-1] == ("p", "state_sync_request", {"requesting_node": "me", "version": 1})
    assert run(s.sync_with_node("unknown")) is False and run(s.sync_with_node("me")) is False
    response = run(s.handle_sync_request({"requesting_node": "p"}))
    assert port.sent[-1] == ("p", "state_sync_response", response)
    other, _, _ = make(FakePort(config=Settings(peers=[])))
    assert run(other.handle_sync_response(response)) is True
    assert other.get_local_state("agents", "k") == {"v": 1}


def test_local_only_without_a_port() -> None:
    s = StateSynchronizer("solo", clock=lambda: T0, monotonic=lambda: 0.0)
    assert s.mesh_core is None and run(s.sync_with_node("p")) is False
    s.update_local_state("agents", "k", 1)
    assert run(s.handle_sync_request({"requesting_node": "p"}))["responding_node"] == "solo"
