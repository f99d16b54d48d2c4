"""Sphinx configuration: the API reference is generated from the docstrings (autodoc);
the operator and observability guides are Markdown (MyST).  Built with no warnings
allowed: ``.ci/docs`` (``sphinx-build -W -b html docs docs/_build``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from spiralfast._version import __version__  # noqa: E402

project = "spiralfast"
author = "spiralfast maintainers"
copyright = "spiralfast maintainers, MIT licence"
version = release = __version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Docstrings use ``:param a / b:`` for paired fields and plain ``code`` literals.
autodoc_warningiserror = False

myst_heading_anchors = 3
# The Markdown guides are also read on GitHub, where links to repository files work;
# Sphinx cannot resolve those, and that is not an error here.
suppress_warnings = ["myst.xref_missing"]

html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"spiralfast {release}"


def setup(app):  # type: ignore[no-untyped-def]
    """``.. spiralfast-settings::`` renders every setting with its environment variables
    and flags, read from :mod:`spiralfast.node.settings` (so it never goes stale)."""
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    from spiralfast.node import settings

    class SettingsTable(SphinxDirective):
        def run(self):  # type: ignore[no-untyped-def]
            helps = {s.name: s.help for s in settings.field_specs()}
            helps.update(log_level="debug, info, warning, error or critical.",
                         log_format="text or json (JSON lines carry node_id).")
            lines = [".. list-table::", "   :header-rows: 1", "   :widths: 18 30 26 40", "",
                     "   * - setting", "     - environment", "     - flags", "     - meaning"]
            for name, envs, flags in settings.env_documentation():
                text = helps.get(name, "").replace("*", r"\*").replace("`", "")
                lines += [f"   * - ``{name}``", f"     - ``{envs.replace(', ', '`` ``')}``",
                          f"     - ``{flags.replace(', ', '`` ``')}``", f"     - {text}"]
            from docutils import nodes

            container = nodes.container()
            self.state.nested_parse(StringList(lines), self.content_offset, container)
            return container.children

    app.add_directive("spiralfast-settings", SettingsTable)
    return {"parallel_read_safe": True}
