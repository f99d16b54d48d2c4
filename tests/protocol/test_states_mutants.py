"""A node's one state and its kind (spiralfast.protocol.states), as the mutation run
(tools/mutation.sh, docs/mutation.md) asked for: every kind, the spellings a state may
come in (an enum, a string, upper case, an unknown name) and the ``suspected`` override."""

from __future__ import annotations

import pytest

from spiralfast.enums import NodeStatus
from spiralfast.protocol import states
from spiralfast.protocol.states import node_state, node_states, state_kind


def test_node_state_is_the_status_value() -> None:
    assert node_state({"status": NodeStatus.ACTIVE}) == "active"
    assert node_state({"status": "dormant"}) == "dormant"  # a plain string stays as it is
    assert node_state({"status": NodeStatus.DISCONNECTED, "suspect": False}) == "disconnected"


def test_node_state_suspected_overrides_the_status() -> None:
    assert node_state({"status": NodeStatus.DISCONNECTED, "suspect": True}) == states.SUSPECTED == "suspected"
    # only a real True counts (a record's flag is a bool; a truthy string is not a suspicion)
    assert node_state({"status": NodeStatus.DISCONNECTED, "suspect": "yes"}) == "disconnected"


def test_node_state_without_a_status() -> None:
    assert node_state({}) == "None"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (NodeStatus.ACTIVE, "live"),
        ("active", "live"),
        ("ACTIVE", "live"),  # case does not matter
        ("ritual_mode", "live"),
        ("suspected", "suspect"),
        ("unreachable", "suspect"),  # in SUSPECT_STATES without the prefix
        ("suspect_probe", "suspect"),  # the prefix alone is enough
        ("Suspected", "suspect"),
        (NodeStatus.DISCONNECTED, "down"),
        ("dead", "down"),
        ("left", "down"),
        ("warp", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_state_kind(status: object, kind: str) -> None:
    assert state_kind(status) == kind


def test_the_kinds_partition_the_known_states() -> None:
    for st in states.LIVE_STATES:
        assert state_kind(st) == "live"
    for st in states.SUSPECT_STATES:
        assert state_kind(st) == "suspect"
    for st in states.DOWN_STATES:
        assert state_kind(st) == "down"


def test_node_states_lists_every_status_and_suspected() -> None:
    out = node_states()
    assert set(out) == {s.value for s in NodeStatus} | {"suspected"}
    assert out["suspected"] == "suspect"
    assert out["active"] == "live" and out["disconnected"] == "down"
    assert all(out[s.value] == state_kind(s) for s in NodeStatus)
