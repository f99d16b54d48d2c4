"""What the NATS link needs to know (``NatsSettings``, from ``MeshConfig``), and how names
become subjects."""

from __future__ import annotations

from dataclasses import dataclass, field

from .client import mask_url


def subject_token(name: str) -> str:
    """``name`` as one subject token (and a valid stream name): letters, digits, ``_``
    and ``-`` stay, every other byte becomes ``~xx`` (so distinct names stay distinct)."""
    out = []
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch in "_-"):
            out.append(ch)
        else:
            out.extend(f"~{b:02x}" for b in ch.encode())
    return "".join(out) or "~"


def server_list(url: str | list[str] | tuple[str, ...]) -> list[str]:
    """A URL, a comma-separated string of them, or a list: the servers, in order."""
    items = [url] if isinstance(url, str) else list(url)
    return [u.strip() for item in items for u in item.split(",") if u.strip()]


@dataclass
class NatsSettings:
    """What the NATS transport needs to know (from ``MeshConfig``)."""

    node_id: str
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    mesh_name: str = "spiral_codex_mesh"
    token: str | None = None
    heartbeat_interval: float = 30.0
    replay_window: float = 120.0
    stream: bool = False
    stream_max_age: float = 3600.0  # seconds a broadcast stays in the stream
    stream_max_bytes: int = 256 * 1024 * 1024
    prefix: str = "spiralfast"
    ssl_cafile: str | None = None  # CA bundle for tls:// servers (None: the system CAs)

    @classmethod
    def from_config(cls, cfg: object, node_id: str) -> NatsSettings:
        c = getattr  # the node's MeshConfig, read by name (this layer does not import the node's)
        return cls(node_id, server_list(c(cfg, "nats_url")), c(cfg, "mesh_name"), c(cfg, "auth_token"),
                   c(cfg, "heartbeat_interval"), 60.0 + c(cfg, "max_clock_offset"), bool(c(cfg, "nats_stream")),
                   float(c(cfg, "nats_stream_max_age")), int(c(cfg, "nats_stream_max_bytes")),
                   ssl_cafile=getattr(cfg, "ssl_cafile", None))

    @property
    def wants_tls(self) -> bool:
        return any(u.startswith("tls://") for u in self.servers)

    @property
    def display_servers(self) -> str:
        return mask_url(", ".join(self.servers))
