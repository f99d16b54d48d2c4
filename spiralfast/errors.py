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


class StateTooLarge(SpiralError, ValueError):
    """A state value too large to ever be synchronised (``limits.MAX_STATE_ENTRY_SIZE``)."""


class RingFull(SpiralError, OverflowError):
    """A ring buffer with the ``reject`` policy is full."""


class TaskError(SpiralError):
    """A task handler raised on the node that ran it.

    :param type_name: the remote exception's type name (e.g. ``"ValueError"``).
    :param message: the remote exception's message (``str(exc)``).
    :param task_type: the task type that failed.
    :param node_id: the node that ran the handler.
    """

    def __init__(self, type_name: str, message: str, *, task_type: str | None = None,
                 node_id: str | None = None) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.task_type = task_type
        self.node_id = node_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_task_error, (self.type_name, self.message, self.task_type, self.node_id))


def _task_error(type_name: str, message: str, task_type: str | None, node_id: str | None) -> TaskError:
    return TaskError(type_name, message, task_type=task_type, node_id=node_id)


class NoNodeForTask(SpiralError, LookupError):
    """No node of the mesh (this one included) serves the task type."""


class TaskTimeout(SpiralError, TimeoutError):
    """A task got no result within its timeout on any of its attempts."""


__all__ = [
    "SpiralError",
    "ConfigError",
    "ProtocolError",
    "FrameError",
    "HandshakeError",
    "AuthError",
    "LinkError",
    "RingFull",
    "TaskError",
    "NoNodeForTask",
    "TaskTimeout",
]
