"""Build the compiled hot path.  Without a compiler the package still installs.

Switches (environment):
- ``SPIRALFAST_PUREPYTHON=1``: build nothing; the pure-Python twins are used.
- ``SPIRALFAST_ANNOTATE=1``: write Cython HTML annotation next to each .pyx.
- ``SPIRALFAST_DEBUG=1``: keep bounds checks on.
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PURE = os.environ.get("SPIRALFAST_PUREPYTHON", "") not in ("", "0")
DEBUG = os.environ.get("SPIRALFAST_DEBUG", "") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

# Every .pyx under spiralfast/ is a compiled module beside its pure-Python twin.
MODULES = sorted(
    str(p.with_suffix("")).replace(os.sep, ".")
    for p in Path("spiralfast").rglob("*.pyx")
)


class OptionalBuildExt(build_ext):
    """Build the extensions, but let installation go on if the compiler fails."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001
            sys.stderr.write(f"WARNING: spiralfast extensions not built ({exc}); pure-Python twin used\n")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            sys.stderr.write(f"WARNING: {ext.name} not built ({exc}); pure-Python twin used\n")


def extensions():
    if PURE:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("WARNING: Cython missing; pure-Python twin used\n")
        return []
    exts = [
        Extension(name, [name.replace(".", "/") + ".pyx"], extra_compile_args=["-O3"])
        for name in MODULES
        if os.path.exists(name.replace(".", "/") + ".pyx")
    ]
    return cythonize(
        exts,
        compiler_directives=DIRECTIVES,
        annotate=os.environ.get("SPIRALFAST_ANNOTATE", "") not in ("", "0"),
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
