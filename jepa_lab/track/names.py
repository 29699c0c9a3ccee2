"""Run names that tell runs apart in the MLflow runs table.

The full configuration stays in the run's params and ``jepa_lab.*`` tags; a name only has to say
at a glance which run is which: ``smoke-ema-s0`` for a ``train`` run (spec name, strategy, seed),
``sigreg-mask_random-s1`` for a study trial (strategy, the settings that differ from the study's
base, seed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jepa_lab.spec.load import AnySpec

MAX_NAME = 96  # MLflow accepts 250; the runs table shows about this many characters
# The last part of a dotted key says little on its own for these: name the section instead
GENERIC = {"kind", "scheme", "name", "type", "value", "enabled"}


def train_run_name(spec: AnySpec) -> str:
    """``<spec name>-<strategy>-s<seed>``, e.g. ``smoke-ema-s0``."""
    return _cap(f"{spec.name}-{spec.strategy.kind}-s{spec.seed}")


def trial_run_name(spec: AnySpec, settings: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """``<strategy>-<setting>_<value>...-s<seed>``: the strategy, each of the trial's
    ``settings`` (dotted key -> value) whose value differs from the study's ``base`` experiment
    data, and the seed. E.g. ``sigreg-mask_random-lr_0.001-s1``."""
    parts: list[str] = [spec.strategy.kind]
    for key, value in settings.items():
        if key in ("seed", "strategy.kind") or _lookup(base, key) == value:
            continue
        parts.append(f"{_label(key)}_{_text(value)}")
    parts.append(f"s{spec.seed}")
    return _cap("-".join(parts))


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _label(key: str) -> str:
    parts = key.split(".")
    if len(parts) > 1 and parts[-1] in GENERIC:
        return parts[-2]
    return parts[-1].rstrip("_")  # lambda_ -> lambda


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9_.,:+\[\]]", "", text)[:24]


def _cap(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"
