"""Small HTTP endpoints on the mesh port: ``/health`` and ``/api/*`` JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

from .observe import _jsonable, envelope, nodes_table

if TYPE_CHECKING:
    from .core import MeshCore


class HttpEndpoints:
    def __init__(self, core: MeshCore) -> None:
        self.core = core

    def _json(self, obj: Any, status: int = 200) -> Any:
        body = orjson.dumps(_jsonable(obj))
        if status == 200:
            resp = WSUpgradeResponse.create_ok_response(body, {"Content-Type": "application/json"})
        else:
            resp = WSUpgradeResponse.create_error_response(status, body, {"Content-Type": "application/json"})
        return WSUpgradeResponseWithListener(resp, None)

    def respond(self, request: Any) -> Any:
        path = request.path.split(b"?", 1)[0].decode(errors="replace")
        core = self.core
        if path == "/health":
            return self._json({"status": "ok" if core.running else "stopping", "node_id": core.node_id})
        if path == "/api/status":
            return self._json(core.get_mesh_status())
        if path == "/api/nodes":
            return self._json(nodes_table(core))
        if path == "/api/events":
            return self._json([envelope(e) for e in list(core.recent_events)[-100:]])
        return self._json({"error": "not found", "path": path}, 404)
