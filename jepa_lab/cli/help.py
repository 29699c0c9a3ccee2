"""How ``--help`` reads: a flag shows no value type.

Typer (0.29) prints ``<bool>`` after every flag, ``--help`` and ``--fail-fast`` included, although
a flag takes no value. Flags are told apart by ``is_flag``; every other option keeps its type.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich


def _flag_shows_no_type(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_shows_no_type  # type: ignore[method-assign]
