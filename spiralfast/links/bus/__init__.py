"""The bus links (many peers behind one link): ``flow.py`` (what Redis and NATS share:
direct messages batched per target, sealed publishing, pacing on acks, meeting on the
bus), ``redis.py`` and ``nats/``.  Their sealed payloads are opened by the node's gate."""
