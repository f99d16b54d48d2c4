"""Every compiled module and its pure-Python twin, through one parametrised fixture.

``twins`` hands a test one :class:`Twins` pair (``name``, ``compiled``, ``pure``) per
entry of :data:`PAIRS`; a test module imports the fixture and narrows it to the pairs
it covers with indirect parametrisation::

    from .twins import Twins, twins_fixture  # noqa: F401 - the fixture ``twins``

    @pytest.mark.parametrize("twins", ["fastpath"], indirect=True)
    def test_something(twins: Twins) -> None:
        for impl in twins.both: ...

``codec_impl`` and ``ring_impl`` give one implementation per test (compiled, then
pure), from the same pairs.

On the pure-Python run (``SPIRALFAST_PUREPYTHON=1``, CI's install without a compiler)
``compiled`` is the pure twin, so each test compares the twin with itself and still
runs.  Otherwise a compiled module that does not import fails the test under
``CI=true`` (where .ci/run built it: a missing build must never pass silently) and
falls back to the twin, with a warning, on a developer's machine.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from types import ModuleType

import pytest

from spiralfast.wire._native import PUREPYTHON_REQUESTED

IN_CI = os.environ.get("CI", "").lower() == "true"

#: Pair name -> (compiled module, pure-Python twin), as importable module names.
PAIRS: dict[str, tuple[str, str]] = {
    "codec": ("spiralfast.wire._codec", "spiralfast.wire._codec_py"),
    "ring": ("spiralfast.wire._ring", "spiralfast.wire._ring_py"),
    "fastpath": ("spiralfast.wire._fastpath", "spiralfast.wire._fastpath_py"),
    "event": ("spiralfast.wire._event", "spiralfast.wire._event_py"),
    "wslistener": ("spiralfast.links.ws._wslistener", "spiralfast.links.ws._wslistener_py"),
}

#: The pairs of the wire layer (``spiralfast.wire``).
WIRE_PAIRS = ["codec", "ring", "fastpath", "event"]


@dataclass(frozen=True)
class Twins:
    """A compiled module and its pure twin (``compiled is pure`` on the pure-Python run)."""

    name: str
    compiled: ModuleType
    pure: ModuleType

    @property
    def both(self) -> tuple[ModuleType, ...]:
        """The implementations to run: the compiled one first, each once."""
        return (self.pure,) if self.compiled is self.pure else (self.compiled, self.pure)

    @property
    def distinct(self) -> bool:
        """Whether the two differ (false on the pure-Python run)."""
        return self.compiled is not self.pure


def load_twins(name: str) -> Twins:
    """The pair ``name`` of :data:`PAIRS`; fails under CI when the compiled one is missing."""
    compiled_name, pure_name = PAIRS[name]
    pure = importlib.import_module(pure_name)
    if PUREPYTHON_REQUESTED:
        return Twins(name, pure, pure)
    try:
        compiled = importlib.import_module(compiled_name)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"{compiled_name} is required in CI but does not import ({exc}): not built?")
        warnings.warn(f"{compiled_name} is not built ({exc}): its twin is compared with itself",
                      stacklevel=2)
        return Twins(name, pure, pure)
    if getattr(compiled, "COMPILED", None) is not True:
        pytest.fail(f"{compiled_name} is not the compiled module ({getattr(compiled, '__file__', '?')})")
    return Twins(name, compiled, pure)


@pytest.fixture(params=list(PAIRS), name="twins")
def twins_fixture(request: pytest.FixtureRequest) -> Twins:
    """Each compiled/pure pair (narrow it with ``indirect=True`` parametrisation)."""
    return load_twins(str(request.param))


def _one_of(pair: str, which: str) -> ModuleType:
    """The compiled module (``which="compiled"``) or the twin of ``pair``, for tests that
    take one implementation at a time.  On the pure-Python run there is no compiled one:
    that case is skipped (the twin runs as ``"pure"``); a missing build fails under CI."""
    twins = load_twins(pair)
    if which == "pure":
        return twins.pure
    if not twins.distinct:
        pytest.skip(f"no compiled {pair} on this run (SPIRALFAST_PUREPYTHON or not built)")
    return twins.compiled


@pytest.fixture(params=["compiled", "pure"], name="codec_impl")
def codec_impl_fixture(request: pytest.FixtureRequest) -> ModuleType:
    """The compiled frame codec, then its twin (one implementation per test)."""
    return _one_of("codec", str(request.param))


@pytest.fixture(params=["compiled", "pure"], name="ring_impl")
def ring_impl_fixture(request: pytest.FixtureRequest) -> ModuleType:
    """The compiled ring buffer, then its twin (one implementation per test)."""
    return _one_of("ring", str(request.param))
