"""Reading spec files: YAML with line numbers -> dict -> dotted overrides -> validation.

This is the one path every setting takes (spec files, CLI ``--set``, grid cells, Optuna
suggestions). Every problem becomes one line ``FILE:LINE: field.path: message (got VALUE)`` (or
``--set KEY=VALUE: ...`` for overrides), all of them at once, raised as :class:`SpecError`.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from jepa_lab.spec.base import FieldError, shorten
from jepa_lab.spec.experiment import UNION_TAGS, ExperimentSpec
from jepa_lab.spec.world import WorldSpec, is_world

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]

MAX_NODES = 50_000  # expanded YAML nodes; far above any real spec, far below an alias bomb
MAX_BYTES = 1_000_000
MAX_SHOWN_PATH = 80  # x4: characters of a file path quoted in a message


class SpecError(Exception):
    """A spec could not be read or validated; ``messages`` holds one line per problem."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (YAML would silently keep the last)."""

    def __init__(self, key: object, first: int, again: int) -> None:
        self.key, self.first, self.again = key, first, again
        super().__init__(f"duplicate key {shorten(key)!r} (lines {first} and {again})")


# libyaml's parser where PyYAML has it (several times faster); the constructor stays the safe one
if typing.TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SpecLoader(_SafeLoader):
    """PyYAML's safe loader (no ``!!python`` tags), refusing duplicate keys, and reading ``1e-3``
    as a number as YAML 1.2 does (YAML 1.1 makes it the string "1e-3")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden by the mapping's own: that is their use
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


class SpecDumper(yaml.SafeDumper):
    """Writes what :class:`SpecLoader` reads back the same (the string "1e-3" gets quotes)."""


for _cls in (SpecLoader, SpecDumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def parse_yaml(text: str) -> Any:
    """``text`` read with :class:`SpecLoader` (for ``--set`` values and plain copies)."""
    return yaml.load(text, Loader=SpecLoader)


class Source:
    """Where each key of a spec came from: a line of a file, or a ``--set`` override."""

    def __init__(self, path: str, lines: dict[Loc, int] | None = None) -> None:
        self.path = path
        self.lines = lines or {}
        self.overrides: dict[Loc, str] = {}

    def where(self, loc: Loc) -> str:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.overrides:
                return f"--set {shorten(self.overrides[loc[:end]])}"
            if end and loc[:end] in self.lines:
                return f"{self.path}:{self.lines[loc[:end]]}"
        return f"{self.path}:{self.lines.get((), 1)}"

    def rank(self, loc: Loc) -> int:
        """How directly ``loc`` was written: 2 by an override, 1 by its own key in the file, else
        0. A check about several fields is reported at the most directly written of them."""
        if any(loc[:end] in self.overrides for end in range(1, len(loc) + 1)):
            return 2
        return 1 if loc in self.lines else 0


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Number of nodes ``node`` becomes once aliases are expanded (memoised per node)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts as small here; the loader rejects it later
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        memo[key] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[key]


def _record_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int], line: int) -> None:
    """Map every key path under ``node`` to the 1-based line of its key (first occurrence)."""
    if loc in lines:
        return  # reached again through an alias
    lines[loc] = line
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*loc, key_node.value)
                _record_lines(value_node, child, lines, key_node.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*loc, index), lines, item.start_mark.line + 1)


def _check_file(file: Path, shown: str) -> bytes:
    """The bytes of a spec file, or a one-line ``FILE:0:`` error saying why it is not one."""
    if "\0" in str(file):
        raise SpecError([f"{shown}:0: a path cannot contain a NUL byte"])
    try:
        if file.is_dir():
            raise SpecError([f"{shown}:0: is a directory, not a spec file"])
        if not file.exists():
            raise SpecError([f"{shown}:0: no such file: check the path"])
        if not file.is_file():
            raise SpecError([f"{shown}:0: not a regular file: not a spec file"])
        if file.stat().st_size > MAX_BYTES:
            raise SpecError([f"{shown}:0: file is larger than {MAX_BYTES} bytes: not a spec file"])
        raw = file.read_bytes()
    except OSError as exc:
        raise SpecError([f"{shown}:0: cannot read: {exc.strerror or exc}"]) from None
    if b"\0" in raw:
        raise SpecError([f"{shown}:1: binary file (NUL bytes): not a YAML spec file"])
    return raw


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Source]:
    """Parse a YAML mapping safely, refusing huge files, alias bombs and duplicate keys; keep
    line numbers."""
    shown = shorten(str(path), 4 * MAX_SHOWN_PATH)
    text = _check_file(Path(path), shown).decode("utf-8", errors="replace")
    loader = SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise SpecError(
                [f"{shown}:1: YAML expands to more than {MAX_NODES} nodes (alias bomb?): refused"]
            )
        data = loader.construct_document(node) if node is not None else None
    except DuplicateKeyError as exc:
        key = shorten(str(exc.key))
        raise SpecError(
            [
                f"{shown}:{exc.again}: {key}: duplicate key (first at line {exc.first}, again at "
                f"line {exc.again}): keep one"
            ]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([f"{shown}:{line}: YAML syntax error: {problem}"]) from None
    except RecursionError:
        raise SpecError([f"{shown}:1: YAML nests too deeply: refused"]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError([f"{shown}:1: expected a mapping of sections, got {type(data).__name__}"])
    lines: dict[Loc, int] = {}
    if node is not None:
        _record_lines(node, (), lines, 1)
    return data, Source(shown, lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise SpecError([f"--set {shorten(item)}: expected KEY.PATH=VALUE, e.g. mask.ratio=0.6"])
    try:
        value = parse_yaml(raw) if raw.strip() else raw
    except DuplicateKeyError as exc:
        raise SpecError([f"--set {shorten(item)}: {exc}"]) from None
    except (yaml.YAMLError, ValueError):  # ValueError: an integer too long to convert
        value = raw
    return [p.strip() for p in parts], value


def _plain(value: Any) -> Any:
    """A deep copy of YAML data (mappings, lists, scalars) that shares nothing."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str], source: Source, prefix: Loc = ()
) -> dict[str, Any]:
    """A copy of ``data`` with dotted ``KEY=VALUE`` overrides merged in (values parsed as YAML).

    Setting the tag of a tagged-union section (``strategy.kind``, ``mask.scheme``, ``data.name``)
    to a new variant replaces that section by the variant's defaults first, so
    ``--set strategy.kind=sigreg`` on an EMA spec does not drag EMA fields along. Tags are applied
    before other keys, whatever their order on the command line.
    """
    try:
        result: dict[str, Any] = _plain(dict(data))
    except RecursionError:
        raise SpecError([f"{source.path}:1: YAML nests too deeply (a recursive alias?)"]) from None
    parsed = [(item, *_parse_override(item)) for item in overrides]
    parsed.sort(key=lambda p: not (len(p[1]) >= 2 and UNION_TAGS.get(p[1][-2]) == p[1][-1]))
    for item, parts, value in parsed:
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError([f"--set {shorten(item)}: {where} is a value, not a section"])
            node = child
        last = parts[-1]
        tag_section = len(parts) >= 2 and UNION_TAGS.get(parts[-2]) == last
        if tag_section and node.get(last) != value:
            node.clear()
        node[last] = value
        source.overrides[(*prefix, *parts)] = item
    return result


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes an annotation admits (through Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _model_at(model: type[BaseModel], path: Loc, data: Any) -> type[BaseModel] | None:
    """The spec class of the section at ``path`` (tagged unions resolved with ``data``)."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None or not isinstance(part, str):
            return None
        field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        data = data.get(part) if isinstance(data, dict) else None
        candidates = _models_in(field.annotation) if field is not None else []
        if len(candidates) > 1 and isinstance(data, dict):
            tag = UNION_TAGS.get(part)
            candidates = [
                c
                for c in candidates
                if tag and data.get(tag) in typing.get_args(c.model_fields[tag].annotation)
            ]
        current = candidates[0] if len(candidates) == 1 else None
    return current


def _display_loc(loc: Loc, data: Any) -> Loc:
    """Drop the variant names pydantic inserts into the locations of tagged-union errors."""
    shown: list[str | int] = []
    for part in loc:
        if isinstance(data, dict) and part not in data:
            tag = next((t for t in UNION_TAGS.values() if data.get(t) == part), None)
            if tag is not None:
                continue
        shown.append(part)
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            data = None
    return tuple(shown)


def _variant_hint(model: type[BaseModel], loc: Loc, data: Any) -> str:
    """For a field of another variant of a tagged union (``strategy.lambda`` on an EMA spec):
    which variant has it, else ''."""
    if len(loc) < 2 or not isinstance(loc[-2], str) or loc[-2] not in UNION_TAGS:
        return ""
    section, tag, name = loc[-2], UNION_TAGS[loc[-2]], str(loc[-1])
    parent = _model_at(model, loc[:-2], data)
    field = None if parent is None else parent.model_fields.get(section)
    if field is None:
        return ""
    having = [
        value
        for variant in _models_in(field.annotation)
        if any(name in (n, f.alias) for n, f in variant.model_fields.items())
        for value in typing.get_args(variant.model_fields[tag].annotation)
    ]
    if not having:
        return ""
    node: Any = data
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    current = node.get(tag) if isinstance(node, dict) else None
    kinds = " or ".join(repr(h) for h in having)
    return (
        f"'{name}' is a field of {section} {tag} {kinds}, not {current!r}: set "
        f"{section}.{tag}: {having[0]} to use it, or remove it"
    )


def _message(model: type[BaseModel], error: Any, data: Any, loc: Loc) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1], data)
        variant = _variant_hint(model, loc, data)
        if variant:
            return variant
        if owner is not None:
            allowed = sorted(f.alias or n for n, f in owner.model_fields.items())
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            return f"unknown field: {hint}allowed: {', '.join(allowed)}"
        return "unknown field"
    if kind == "union_tag_invalid":
        expected = error["ctx"]["expected_tags"]
        return f"unknown {loc[-1]} {shorten(error['ctx']['tag'])!r}: expected one of {expected}"
    if kind == "missing":
        return "field required"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = error.get("input")
    if isinstance(value, dict) or (kind == "value_error" and not loc):
        return msg
    return f"{msg} (got {shorten(value)})"


def validate(model: type[M], data: Any, source: Source) -> M:
    """``model.model_validate(data)``, with every error turned into one located line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = _display_loc(tuple(error["loc"]), data)
            if error["type"] == "union_tag_invalid":  # point at the tag itself
                loc = (*loc, error["ctx"]["discriminator"].strip("'"))
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, FieldError) and cause.locs:
                # a check across fields: at the field it is about that the file or --set wrote
                loc = max(((*loc, *sub) for sub in cause.locs), key=source.rank)
                message = str(cause)
            else:
                message = _message(model, error, data, loc)
            dotted = ".".join(shorten(str(p)) for p in loc) or "(top level)"
            lines.append(f"{source.where(loc)}: {dotted}: {message}")
        raise SpecError(lines) from None


def load(model: type[M], path: str | Path, overrides: Iterable[str] = ()) -> M:
    """Read ``path``, merge ``overrides`` and validate as ``model``."""
    data, source = read_yaml(path)
    return validate(model, apply_overrides(data, overrides, source), source)


AnySpec = ExperimentSpec | WorldSpec


def spec_model(data: Any) -> type[ExperimentSpec] | type[WorldSpec]:
    """The spec class of spec data: a world model (``kind: world_model``) or an image run."""
    return WorldSpec if isinstance(data, dict) and is_world(data) else ExperimentSpec


def validate_any(data: Any, source: Source) -> AnySpec:
    """:func:`validate` as the spec class that ``data`` names (:func:`spec_model`)."""
    return validate(spec_model(data), data, source)


def load_any(path: str | Path, overrides: Iterable[str] = ()) -> AnySpec:
    """Read ``path``, merge ``overrides`` and validate as an image or world-model spec."""
    data, source = read_yaml(path)
    return validate_any(apply_overrides(data, overrides, source), source)
