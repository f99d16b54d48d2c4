"""The wire layer: what travels between nodes, and the compiled hot paths beside it.

The lowest layer of the package (see docs/architecture.md).  It holds the frame codec
(``codec``; compiled ``_codec`` or its pure twin ``_codec_py``), the message schemas
(``schema``), every protocol limit (``limits``), the bounded ring buffer (``ring``), the
EventBus event and its hot path (``event``), the receive and send fast paths
(``fastpath``), bus-frame sealing (``sealing``) and node keys (``signing``).
``_native`` picks each compiled module or its pure-Python twin.

Nothing here imports from the layers above (protocol, node, links, tasks, store, ops,
cli) nor from the package's ``__init__``: only the top-level utility modules
(``errors``, ``enums``, ``_time``, ``_log``).
"""
