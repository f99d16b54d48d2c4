"""The compiled modules really load in the compiled run; the twin loads on request."""

from __future__ import annotations

import os
import subprocess
import sys

from spiralfast import codec, event, fastpath, ring
from spiralfast._native import PUREPYTHON_REQUESTED


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
         "from spiralfast import codec, event, fastpath, ring; "
         "print(codec.COMPILED, ring.COMPILED, fastpath.COMPILED, event.COMPILED)"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.split() == ["False", "False", "False", "False"]


def test_install_without_a_compiler_has_no_extensions() -> None:
    """In CI's no-compiler job (.ci/run sets SPIRALFAST_NO_COMPILER=1 and CC=/bin/false),
    the install must have gone on without building anything."""
    if not os.environ.get("SPIRALFAST_NO_COMPILER"):
        return
    import importlib.util

    for name in ("_codec", "_ring", "_fastpath", "_event", "links._wslistener"):
        assert importlib.util.find_spec(f"spiralfast.{name}") is None, f"{name} was built"
