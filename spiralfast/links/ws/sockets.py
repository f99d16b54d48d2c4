"""The WebSocket port's sockets and the operating system around them: the listening
socket, quiet reports of accept errors and failed TLS handshakes, TLS failures in one
line, and the file descriptor limit."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import ssl

from ..._log import RateLimitedLog

log = logging.getLogger("spiralfast.ws")

#: What the loop hands its exception handler.
ExceptionContext = dict[str, object]

class _ListeningSocket(socket.socket):
    """The server's socket.  When accept() runs out of file descriptors, the server
    (aiofastnet) stops reading the socket for a second by calling
    ``sock.remove_reader``, which plain sockets lack: without this it would spin on the
    error and flood the log."""

    loop: asyncio.AbstractEventLoop

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)


def _listening_socket(host: str, port: int, loop: asyncio.AbstractEventLoop) -> socket.socket:
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = _ListeningSocket(family, socket.SOCK_STREAM)
    sock.loop = loop
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    _quiet_accept_errors(loop)
    return sock


_ACCEPT_LOG = RateLimitedLog(log)


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of file descriptors, the server reports every retry (each second) to the
    loop's exception handler with a traceback; report it with back-off instead.  A TLS
    handshake that fails is reported there too (by aiofastnet, once with an exception
    class instead of an instance, which made the default handler write a ``--- Logging
    error ---`` traceback of its own): it is counted and logged where it happens (the
    server's door, the dialler), so the report is dropped.  An application's handler set
    before the node started still gets every other report."""
    previous = loop.get_exception_handler()
    if getattr(previous, "_spiralfast_quiet", False):
        return

    def handler(lp: asyncio.AbstractEventLoop, ctx: ExceptionContext) -> None:
        message = str(ctx.get("message", ""))
        if "out of system resource" in message:
            _ACCEPT_LOG("emfile", logging.ERROR, "out of file descriptors: not accepting connections for now (%s)",
                        ctx.get("exception"))
            return
        if message.startswith("SSL handshake failed"):
            return
        exc = ctx.get("exception")
        if isinstance(exc, type):  # a class where an instance belongs: no traceback to print
            ctx = {**ctx, "exception": exc()}
        if previous is not None:
            previous(lp, ctx)
        else:
            lp.default_exception_handler(ctx)

    handler._spiralfast_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def tls_reason(exc: BaseException) -> str:
    """A TLS failure in one line, with what to do about a refused certificate."""
    text = str(exc)
    verify = getattr(exc, "verify_message", None)
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"TLS certificate refused ({verify or getattr(exc, 'reason', None) or 'not verified'}; {text}): "
                "set ssl_cafile (--cafile) to the CA that signed the peer's certificate")
    return f"TLS failed ({text or type(exc).__name__})"


def _raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64
