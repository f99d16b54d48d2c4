"""The NATS link: ``client.py`` (nats-py through one adapter: the only module touching its
private API), ``transport.py`` (``NatsTransport``, a ``links.base.BusLink``) and
``catchup.py`` (JetStream catch-up: a ``links.base.StreamCatchUp``)."""

from __future__ import annotations

from .client import mask_url
from .settings import NatsSettings, server_list, subject_token
from .transport import CONNECT_TIMEOUT, NatsTransport

__all__ = ["CONNECT_TIMEOUT", "NatsSettings", "NatsTransport", "mask_url", "server_list", "subject_token"]
