"""Operations: what the node shows of itself to its operators.

- :mod:`.status`: ``get_mesh_status()``, the node table, links, counters, the topology;
- :mod:`.queries`: the observers' (CLI) query protocol;
- :mod:`.metrics`: Prometheus metrics (``GET /metrics``);
- :mod:`.http`: the HTTP endpoints (``/health``, ``/api/*``, the dashboard's files);
- :mod:`.live`: the dashboard's live feed (``/live``);
- :mod:`.server`: the server on the node's port (picows' protocol behind a first reader, through
  :mod:`spiralfast.links.ws.picows_adapter`, the only user of picows' private names);
- ``dashboard/``: the page's static files.

Each module takes a port from :mod:`spiralfast.ports.ops`, never the node itself.
"""
