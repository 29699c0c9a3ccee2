"""Griffe extension: the package's docstrings use Sphinx roles (``:func:`train```) and ``::``
literal blocks; mkdocstrings renders Markdown, so each role becomes a code span and ``::`` a
colon before the (already indented) code block."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`~?\.?([^`]+)`")
LITERAL = re.compile(r"::$", re.MULTILINE)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(r"`\1`", obj.docstring.value)
            obj.docstring.value = LITERAL.sub(":", text)
