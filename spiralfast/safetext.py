"""The one place where text is made safe to show: secrets masked, member-chosen text
made inert for a terminal.

- ``mask_secrets(text)``: every URL in ``text`` with its password (``user:****@``), a
  bare token in the user info of a NATS URL (``nats://****@host``) and secret query
  parameters (``?password=****``, ``sslpassword``, ``token``...) masked.  The banner,
  log lines, ``config show``, ``/api/status``, the dashboard feed and the benchmark
  output all show URLs through it.
- ``clean(text)``: control characters (C0, DEL, C1, and the bidirectional overrides)
  replaced by visible escapes (``\\x1b``, ``\\n``, ``\\u202e``): an ESC sequence, an
  OSC 52 clipboard write or a cursor movement chosen by a member reaches the operator's
  terminal as text, never as a command.
- ``markup(text)``: ``clean`` and then Rich markup escaped, for Rich tables and the HUD:
  ``[bold]`` chosen by a member is shown as ``[bold]``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SECRET_PARAMS", "clean", "json_safe", "markup", "mask_secrets", "mask_url"]

#: Query parameters whose values are secrets (compared case-insensitively).
SECRET_PARAMS = frozenset({
    "password", "passwd", "pass", "pwd", "sslpassword", "sslkey_password", "token", "auth_token",
    "access_token", "auth", "secret", "client_secret", "api_key", "apikey", "key", "nkey", "jwt",
    "user_password", "credentials",
})
#: Schemes whose bare user info (no ``:``) is a token, not a user name.
_TOKEN_USERINFO = ("nats", "tls", "ws", "wss")
MASK = "****"

# scheme://userinfo@ ... : the user info up to the last '@' before the host ends.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*)://(?P<info>[^/?#\s\"'<>]*)@")
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)=(?P<value>[^&#\s'\"]*)")


def _mask_info(m: re.Match[str]) -> str:
    scheme, info = m.group("scheme"), m.group("info")
    if ":" in info:
        user = info.split(":", 1)[0]
        return f"{scheme}://{user}:{MASK}@"
    if info and scheme.lower().split("+")[0] in _TOKEN_USERINFO:
        return f"{scheme}://{MASK}@"
    return m.group(0)


def _mask_param(m: re.Match[str]) -> str:
    if m.group("name").lower() in SECRET_PARAMS and m.group("value"):
        return f"{m.group('lead')}{m.group('name')}={MASK}"
    return m.group(0)


def mask_secrets(text: Any) -> str:
    """``text`` (any object, as ``str``) with the secrets of every URL in it masked."""
    s = str(text)
    if "://" not in s and "=" not in s:
        return s
    s = _USERINFO.sub(_mask_info, s)
    if "=" in s:
        s = _QUERY_PARAM.sub(_mask_param, s)
    return s


def mask_url(url: Any) -> str:
    """One URL (or a text holding URLs) with its secrets masked: ``mask_secrets``."""
    return mask_secrets(url)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0, DEL, C1, and the Unicode bidirectional controls (they reorder what follows).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape_control(m: re.Match[str]) -> str:
    ch = m.group(0)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: Any) -> str:
    """``text`` (any object, as ``str``) with every control character shown as an escape."""
    s = text if isinstance(text, str) else str(text)
    return _CONTROL.sub(_escape_control, s)


def markup(text: Any) -> str:
    """``clean(text)`` with Rich markup escaped: safe inside a Rich table or HUD line."""
    from rich.markup import escape

    return escape(clean(text))


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def json_safe(text: str) -> str:
    """JSON text (from ``orjson.dumps``, which escapes C0 already) with DEL, C1 and the
    bidirectional controls escaped too (``\\u009b``): the same JSON value, read back
    exactly, and nothing in it a terminal would act on.  These characters only occur
    inside JSON strings, where ``\\uXXXX`` is their exact equivalent."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
