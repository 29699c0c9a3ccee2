"""The base of every spec section: strict, frozen models, and the shared field types."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every spec section: strict, frozen, aliases accepted on input."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"range must be [low, high] with low <= high, got {list(value)}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
