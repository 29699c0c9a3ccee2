"""The base of every spec section: strict, frozen models, the shared field types, and how an
offending value is quoted in a message."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

MAX_SHOWN = 80  # characters of an offending value quoted in a message


def shorten(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr``-like text of ``value`` cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Spec(BaseModel):
    """Base of every spec section: strict, frozen, aliases accepted on input."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"range must be [low, high] with low <= high, got {list(value)}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
