"""Opt-in aliasing for unchanged ``spiralcodex`` code.

:func:`install` makes ``import spiralcodex.mesh`` load spiralfast (and
``spiralcodex.persistence``, ``spiralcodex.hud`` our :mod:`spiralfast.persistence` and
:mod:`spiralfast.cli.hud`: ``from spiralcodex.hud import hud_config`` gives the settings our
HUD follows), and makes the old logger names reach ours: ``logging.getLogger("spiralcodex.mesh")`` (and
``"spiralcodex"``) return the ``spiralfast`` logger, and loggers below them
(``"spiralcodex.mesh.<x>"``) hang below it.  So old code that sets debug logging with
``logging.getLogger("spiralcodex.mesh").setLevel(logging.DEBUG)`` turns on ours.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

#: Old module names and the spiralfast modules they become.
MODULE_ALIASES = {
    "spiralcodex": "spiralfast",
    "spiralcodex.mesh": "spiralfast.mesh",
    "spiralcodex.persistence": "spiralfast.persistence",
    "spiralcodex.hud": "spiralfast.cli.hud",
}
#: Old logger names that become the ``spiralfast`` logger.
LOGGER_ALIASES = ("spiralcodex", "spiralcodex.mesh")
_installed_loggers: dict[str, logging.Logger] = {}


def install() -> None:
    """Register ``spiralcodex`` and its modules (:data:`MODULE_ALIASES`) as aliases of
    spiralfast's, for imports and for logger names.  Idempotent."""
    for old, ours in MODULE_ALIASES.items():
        sys.modules[old] = importlib.import_module(ours)
    _alias_loggers()


def uninstall() -> None:
    """Remove the aliases again (only those ``install`` made)."""
    for old_name, our_name in MODULE_ALIASES.items():
        mod = sys.modules.get(our_name)
        if mod is not None and sys.modules.get(old_name) is mod:
            del sys.modules[old_name]
    manager = logging.Logger.manager
    with _lock():
        for name, ours in list(_installed_loggers.items()):
            if manager.loggerDict.get(name) is ours:
                del manager.loggerDict[name]
            del _installed_loggers[name]


def _lock() -> Any:
    return logging._lock  # type: ignore[attr-defined]


def _alias_loggers() -> None:
    ours = logging.getLogger("spiralfast")
    manager = logging.Logger.manager
    with _lock():
        for name in LOGGER_ALIASES:
            old = manager.loggerDict.get(name)
            if old is ours:
                continue
            if isinstance(old, logging.Logger):
                # Configured before install(): carry its settings over to ours.
                if old.level != logging.NOTSET:
                    ours.setLevel(old.level)
                for h in old.handlers:
                    if h not in ours.handlers:
                        ours.addHandler(h)
                if not old.propagate:
                    ours.propagate = False
            manager.loggerDict[name] = ours
            _installed_loggers[name] = ours
        # Loggers below the old names, e.g. "spiralcodex.mesh.core", hang below ours.
        for name, obj in list(manager.loggerDict.items()):
            if name.startswith("spiralcodex.mesh.") and isinstance(obj, logging.Logger):
                obj.parent = ours
    manager._clear_cache()  # type: ignore[attr-defined]
