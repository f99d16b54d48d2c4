"""The spiralfast exception tree.

``SpiralError`` is the root.  Configuration mistakes are ``ConfigError`` (also a
``ValueError``); anything wrong with bytes that came from the network is a
``ProtocolError`` (``FrameError`` for framing/payload, ``HandshakeError`` and
``AuthError`` for joining); transport failures are ``LinkError``.
"""

from __future__ import annotations


class SpiralError(Exception):
    """Base class of every spiralfast error."""


class ConfigError(SpiralError, ValueError):
    """A configuration value is invalid; the message names the field."""


class ProtocolError(SpiralError):
    """A peer sent something the protocol does not allow."""


class FrameError(ProtocolError, ValueError):
    """A frame (or a message payload inside it) is malformed or exceeds a limit."""


class HandshakeError(ProtocolError):
    """The joining handshake failed (wrong mesh, wrong version, timeout)."""


class AuthError(HandshakeError):
    """The peer failed the shared-token challenge."""


class LinkError(SpiralError):
    """A transport link could not be opened or was lost."""


class RingFull(SpiralError, OverflowError):
    """A ring buffer with the ``reject`` policy is full."""


__all__ = [
    "SpiralError",
    "ConfigError",
    "ProtocolError",
    "FrameError",
    "HandshakeError",
    "AuthError",
    "LinkError",
    "RingFull",
]
