"""Chooses between the compiled modules and their pure-Python twins.

``SPIRALFAST_PUREPYTHON=1`` forces the twins.  When the extensions were not built,
the twins load with one warning.  Module names are given relative to the ``spiralfast``
package (``"wire._codec"``, ``"links.ws._wslistener"``), so every layer's compiled module
loads through this one switch.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("spiralfast")

PUREPYTHON_REQUESTED = os.environ.get("SPIRALFAST_PUREPYTHON", "").strip() not in ("", "0", "false", "no")
_warned = False


def load(compiled: str, pure: str) -> ModuleType:
    """Import ``spiralfast.<compiled>`` unless forced or unavailable; else ``spiralfast.<pure>``."""
    global _warned
    if not PUREPYTHON_REQUESTED:
        try:
            return importlib.import_module(f"spiralfast.{compiled}")
        except ImportError as exc:
            if not _warned:
                _warned = True
                log.warning("spiralfast: compiled extensions unavailable (%s); using the pure-Python twin", exc)
    return importlib.import_module(f"spiralfast.{pure}")
