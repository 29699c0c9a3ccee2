"""The base of every spec section: strict, frozen models, the shared field types, and how an
offending value is quoted in a message."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

MAX_SHOWN = 80  # characters of an offending value quoted in a message
MAX_PATH = 4096  # characters of a path field (PATH_MAX on Linux)


def shorten(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr``-like text of ``value`` cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n").replace("\0", "\\0")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FieldError(ValueError):
    """A check across fields that is about particular fields: ``locs`` are their paths relative
    to the model that raises it, the first the one the check is mainly about. The spec loader
    reports the error at the line of whichever of them the file (or an override) set."""

    def __init__(self, message: str, *locs: tuple[str | int, ...] | str) -> None:
        super().__init__(message)
        self.locs = [tuple(loc.split(".")) if isinstance(loc, str) else loc for loc in locs]


class Spec(BaseModel):
    """Base of every spec section: strict, frozen, aliases accepted on input.

    Strict: a value must already have its field's type, so YAML's ``yes``/``on``/``true`` is never
    a number and ``"0.5"`` never a float; non-finite floats (``.nan``, ``.inf``) are refused in
    every float field (``allow_inf_nan=False``). The coercions kept on purpose:

    - int -> float (``lr: 1`` is 1.0; pydantic's strict mode allows it, and YAML writes ``1``);
    - list -> tuple, for :data:`Range`, ``optim.betas`` and ``eval.l2_grid`` (YAML and JSON have
      no tuples; see :func:`as_tuple`);
    - a mapping -> its section's spec class (that is what a spec file is).
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False
    )


def as_tuple(value: Any) -> Any:
    """A YAML/JSON list as the tuple a field holds (the one container coercion kept)."""
    return tuple(value) if isinstance(value, list) else value


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"range must be [low, high] with low <= high, got {list(value)}")
    return value


def _not_bool(value: Any) -> Any:
    # Literal[1, 3] compares with ==, and True == 1: refuse booleans before it does.
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


def check_path(value: str) -> str:
    """``value`` if it can name a file (no NUL byte, not empty, not too long)."""
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL byte")
    if not value.strip():
        raise ValueError("a path cannot be empty")
    if len(value) > MAX_PATH:
        raise ValueError(f"a path has at most {MAX_PATH} characters")
    return value


Range = Annotated[tuple[float, float], BeforeValidator(as_tuple), AfterValidator(_ordered)]
NotBool = BeforeValidator(_not_bool)
