"""Bounded lock-free ring buffer (compiled, or the pure twin): see ``_ring_py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._native import load

_impl = load("wire._ring", "wire._ring_py")

COMPILED: bool = _impl.COMPILED
if TYPE_CHECKING:  # the twin's annotations: the same API as the compiled module's .pyi
    from ._ring_py import Ring
else:
    Ring = _impl.Ring
POLICIES: tuple[str, ...] = _impl.POLICIES

__all__ = ["COMPILED", "Ring", "POLICIES"]
