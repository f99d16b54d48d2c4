"""The public enums (the drop-in API: Enums)."""

from __future__ import annotations

from enum import Enum


class NodeStatus(Enum):
    INITIALIZING = "initializing"
    ACTIVE = "active"
    DORMANT = "dormant"
    DISCONNECTED = "disconnected"
    RITUAL_MODE = "ritual_mode"


class EventType(Enum):
    NODE_REGISTER = "node_register"
    NODE_UNREGISTER = "node_unregister"
    NODE_HEARTBEAT = "heartbeat"
    NODE_STATUS_CHANGE = "node_status_change"
    AGENT_SPAWN = "agent_spawn"
    AGENT_TERMINATE = "agent_terminate"
    AGENT_MESSAGE = "agent_message"
    AGENT_STATE_CHANGE = "agent_state_change"
    RITUAL_START = "ritual_start"
    RITUAL_END = "ritual_end"
    RITUAL_CYCLE = "ritual_cycle"
    RITUAL_RECURSION = "ritual_recursion"
    SYSTEM_ALERT = "system_alert"
    SYSTEM_METRIC = "system_metric"
    SYSTEM_ERROR = "system_error"
    CUSTOM = "custom"


class SyncState(Enum):
    SYNCED = "synced"
    SYNCING = "syncing"
    OUT_OF_SYNC = "out_of_sync"
    CONFLICT = "conflict"
    ERROR = "error"
