"""Bounded lock-free ring buffer (compiled, or the pure twin): see ``_ring_py``."""

from __future__ import annotations

from ._native import load

_impl = load("_ring", "_ring_py")

COMPILED: bool = _impl.COMPILED
Ring = _impl.Ring
POLICIES: tuple[str, ...] = _impl.POLICIES

__all__ = ["COMPILED", "Ring", "POLICIES"]
