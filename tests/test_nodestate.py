"""One node state for every view: the HUD's topology draws links as the dashboard does."""

from __future__ import annotations

from spiralfast.cli.hud import status_label, topology_from_status
from spiralfast.protocol.states import node_state, node_states, state_kind


def _status() -> dict[str, object]:
    return {
        "node_id": "me",
        "links": [{"peer": "a"}, {"peer": "b"}, {"peer": "c"}],
        "nodes": [
            {"node_id": "me", "status": "active", "metadata": {}},
            {"node_id": "a", "status": "active", "metadata": {"links": ["me", "b"]}},
            {"node_id": "b", "status": "disconnected", "suspect": True, "metadata": {"links": ["me"]}},
            {"node_id": "c", "status": "disconnected", "metadata": {"links": ["me", "a"]}},
        ],
    }


def test_hud_links_only_between_live_nodes() -> None:
    topo = topology_from_status(_status())
    assert topo["nodes"] == ["a", "b", "c", "me"]  # every listed node is shown ...
    assert topo["links"] == [("a", "me")]  # ... but linked only when both ends are live


def test_hud_links_all_live_nodes() -> None:
    st = _status()
    for n in st["nodes"]:  # type: ignore[attr-defined]
        n["status"], n["suspect"] = "active", False
    assert topology_from_status(st)["links"] == [("a", "b"), ("a", "c"), ("a", "me"), ("b", "me"), ("c", "me")]


def test_states_and_labels_agree() -> None:
    sus = {"status": "disconnected", "suspect": True}
    assert node_state(sus) == "suspected" and state_kind(node_state(sus)) == "suspect"
    assert status_label(sus) == "suspected"  # the same name in the HUD, the CLI and the dashboard
    assert state_kind(node_state({"status": "disconnected"})) == "down"
    assert state_kind("something-new") == "unknown"
    assert {k for k, v in node_states().items() if v == "live"} >= {"active", "initializing"}
