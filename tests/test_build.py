"""The compiled modules really load in the compiled run; the twin loads on request."""

from __future__ import annotations

import os
import subprocess
import sys

from spiralfast.wire import codec, event, fastpath, ring
from spiralfast.wire._native import PUREPYTHON_REQUESTED


def test_selected_implementation_matches_the_switch() -> None:
    if PUREPYTHON_REQUESTED:
        assert codec.COMPILED is False
        assert ring.COMPILED is False
        assert fastpath.COMPILED is False
        assert event.COMPILED is False
    else:
        assert codec.COMPILED is True, "compiled codec did not load (extension not built?)"
        assert ring.COMPILED is True, "compiled ring did not load (extension not built?)"
        assert fastpath.COMPILED is True, "compiled receive/send path did not load"
        assert event.COMPILED is True, "compiled RitualEvent/bus path did not load"
        from spiralfast.links import ws

        assert ws.LISTENER_COMPILED is True, "compiled picows listener did not load"


def test_purepython_switch_forces_the_twin() -> None:
    env = dict(os.environ, SPIRALFAST_PUREPYTHON="1")
    out = subprocess.run(
        [sys.executable, "-c",
         "from spiralfast.wire import codec, event, fastpath, ring; "
         "print(codec.COMPILED, ring.COMPILED, fastpath.COMPILED, event.COMPILED)"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.split() == ["False", "False", "False", "False"]


EXTENSIONS = ("wire._codec", "wire._ring", "wire._fastpath", "wire._event", "links.ws._wslistener")


def test_extensions_exist_exactly_when_a_compiler_did() -> None:
    """Asserts in each of CI's three runs (.ci/run): in the no-compiler job
    (SPIRALFAST_NO_COMPILER=1, CC=/bin/false) the install went on without building
    anything, and the node falls back to the twins even when nobody asks for them;
    in the compiled runs (release and bounds-checked) every extension was built, as a
    shared library next to its pure twin."""
    import importlib.util

    specs = {name: importlib.util.find_spec(f"spiralfast.{name}") for name in EXTENSIONS}
    probe = subprocess.run(
        [sys.executable, "-c",
         "from spiralfast.wire import codec, event, fastpath, ring; "
         "print(codec.COMPILED, ring.COMPILED, fastpath.COMPILED, event.COMPILED)"],
        env={k: v for k, v in os.environ.items() if k != "SPIRALFAST_PUREPYTHON"},
        capture_output=True, text=True, check=True,
    )
    if os.environ.get("SPIRALFAST_NO_COMPILER"):
        assert [n for n, s in specs.items() if s is not None] == [], "built without a compiler?"
        assert probe.stdout.split() == ["False"] * 4  # the fallback, unasked
    else:
        assert [n for n, s in specs.items() if s is None] == [], "extensions missing: not built"
        for name, spec in specs.items():
            assert spec is not None and spec.origin is not None and spec.origin.endswith(".so"), (name, spec)
            twin = importlib.util.find_spec(f"spiralfast.{name}_py")
            assert twin is not None and twin.origin is not None and twin.origin.endswith(".py"), name
        assert probe.stdout.split() == ["True"] * 4  # compiled unless the switch says otherwise
