"""Receive hot path (compiled, or the pure twin): see ``_fastpath_py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._native import load

_impl = load("wire._fastpath", "wire._fastpath_py")

COMPILED: bool = _impl.COMPILED
if TYPE_CHECKING:  # the twin's annotations: the same API as the compiled module's .pyi
    from ._fastpath_py import Dedupe, EventSender, EventSink, iso_from_epoch
else:
    Dedupe = _impl.Dedupe
    EventSink = _impl.EventSink
    EventSender = _impl.EventSender
    iso_from_epoch = _impl.iso_from_epoch

__all__ = ["COMPILED", "Dedupe", "EventSender", "EventSink", "iso_from_epoch"]
