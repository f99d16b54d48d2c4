"""The node: the ``MeshCore`` facade and its composition, the host that implements
``LinkHost``, the gate's I/O half, dispatch, outbox, the event bus, the registry and settings."""
