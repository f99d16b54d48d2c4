"""The command line (``spiralfast``, ``spiralcodex``, ``python -m spiralfast``): the top
layer, importing whatever it needs from below.

:mod:`.app` holds the command tree and :func:`main`; :mod:`.common` the shared helpers;
the commands live in :mod:`.node` (``mesh start``), :mod:`.inspect` (``mesh status``,
``nodes``, ``events``, ``publish``, ``state``), :mod:`.history`, :mod:`.tasks`,
:mod:`.settings` (``config show``, with the setting flags of :mod:`.flags`) and
:mod:`.bench`; :mod:`.hud` is the live view of ``mesh status --watch``, :mod:`.identity`
a node's id and lock across restarts.  No module of this package imports :mod:`.app`
or this one: :mod:`.app` imports the command modules, they import :mod:`.common`.
"""

from __future__ import annotations

from .app import _tidy_help as _tidy_help
from .app import app, main
from .node import _banner as _banner

__all__ = ["app", "main"]
