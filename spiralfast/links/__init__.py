"""Transports: each implements ``spiralfast.links.base.Link`` and is given a ``LinkHost``
(the node) and its own settings, never the node's internals."""
