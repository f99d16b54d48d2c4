"""Ports: the small typed Protocols each subsystem needs from the node (what ``MeshCore``
provides through its adapters).  No I/O here; subsystems take these instead of the node."""
