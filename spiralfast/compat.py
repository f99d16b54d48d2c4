"""Opt-in aliasing: ``install()`` makes ``import spiralcodex.mesh`` load spiralfast."""

from __future__ import annotations

import sys


def install() -> None:
    """Register ``spiralcodex`` and ``spiralcodex.mesh`` as aliases of spiralfast."""
    import spiralfast
    import spiralfast.mesh

    sys.modules["spiralcodex"] = spiralfast
    sys.modules["spiralcodex.mesh"] = spiralfast.mesh


def uninstall() -> None:
    """Remove the aliases again (only those ``install`` made)."""
    import spiralfast

    if sys.modules.get("spiralcodex") is spiralfast:
        del sys.modules["spiralcodex"]
    if sys.modules.get("spiralcodex.mesh") is spiralfast.mesh:
        del sys.modules["spiralcodex.mesh"]
