"""Fuzz ``jepa-lab validate``: mutate the shipped spec and study files many ways and check that
every bad file gets clear ``FILE:LINE: message`` lines and exit 2, never a traceback.

Each mutant is one of the files in ``studies/`` changed once (seeded: ``--seed``): a key deleted,
a value of another type, a huge value, NaN or infinity, a duplicate key, broken YAML, NUL bytes,
a very long key, an unknown field, a value nested one level too deep or a mapping flattened, a
document that is not a mapping. Mutants are written beside copies of the shipped files (so
relative ``base:`` paths resolve) and validated in this process through the CLI (typer's
``CliRunner``); ``--subprocess N`` re-runs N of them as ``python -m jepa_lab validate`` to check
that both agree. Reported (and written as JSON): exit codes, tracebacks (exit 1, or
``Traceback`` in the output: must be 0), error lines without the ``FILE:LINE:`` shape, the
longest error line, per mutation kind, and the offending inputs.

    python bench/fuzz.py --mutants 1000 --json bench/results/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
STUDIES = REPO / "studies"
LINE = re.compile(r"^error: .+?:\d+: \S")  # error: FILE:LINE: message
OTHER_VALUES: list[Any] = ["text", [1, 2], {"a": 1}, True, None, 3, 0.5, -1, 0, ""]
HUGE: list[Any] = [10**30, -(10**30), 1e308, -1e308, 2**63, "x" * 100_000, list(range(10_000))]
NONFINITE = [math.nan, math.inf, -math.inf]

Doc = Any  # a parsed YAML document


def children(doc: Doc) -> list[tuple[Any, Any]]:
    if isinstance(doc, dict):
        return list(doc.items())
    return list(enumerate(doc)) if isinstance(doc, list) else []


def paths(doc: Doc, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path (mapping keys and list indices) in ``doc``, leaves and branches."""
    found = []
    items = children(doc)
    for key, value in items:
        found.append((*prefix, key))
        found += paths(value, (*prefix, key))
    return found


def mappings(doc: Doc, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every mapping in ``doc`` (``()``: the document itself)."""
    found = [prefix] if isinstance(doc, dict) else []
    items = children(doc)
    for key, value in items:
        found += mappings(value, (*prefix, key))
    return found


def get(doc: Doc, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def put(doc: Doc, path: tuple[Any, ...], value: Any) -> None:
    get(doc, path[:-1])[path[-1]] = value


# ------------------------------------------------------------------ mutations on the data


def delete(doc: Doc, rng: random.Random) -> Doc:
    path = rng.choice(paths(doc))
    del get(doc, path[:-1])[path[-1]]
    return doc


def swap_type(doc: Doc, rng: random.Random) -> Doc:
    path = rng.choice(paths(doc))
    old = get(doc, path)
    put(doc, path, rng.choice([v for v in OTHER_VALUES if type(v) is not type(old)]))
    return doc


def huge(doc: Doc, rng: random.Random) -> Doc:
    put(doc, rng.choice(leaves(doc)), rng.choice(HUGE))
    return doc


def nonfinite(doc: Doc, rng: random.Random) -> Doc:
    numeric = [p for p in leaves(doc) if isinstance(get(doc, p), int | float)]
    numeric = [p for p in numeric if not isinstance(get(doc, p), bool)] or leaves(doc)
    put(doc, rng.choice(numeric), rng.choice(NONFINITE))
    return doc


def long_key(doc: Doc, rng: random.Random) -> Doc:
    get(doc, rng.choice(mappings(doc)))["k" * rng.choice([1_000, 100_000])] = 1
    return doc


def unknown_field(doc: Doc, rng: random.Random) -> Doc:
    get(doc, rng.choice(mappings(doc)))[rng.choice(["bogus", "Name", "steps_", "lr "])] = 1
    return doc


def wrong_nesting(doc: Doc, rng: random.Random) -> Doc:
    path = rng.choice(paths(doc))
    value = get(doc, path)
    if isinstance(value, dict) and value and rng.random() < 0.5:  # flatten: lift its keys up
        parent = get(doc, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
            parent.update({k: v for k, v in value.items() if k not in parent})
            return doc
    put(doc, path, {rng.choice(["value", str(path[-1])]): value})  # one level too deep
    return doc


def not_a_mapping(doc: Doc, rng: random.Random) -> Doc:
    return rng.choice([[doc], "a string", 42, None, [], {}])


def leaves(doc: Doc) -> list[tuple[Any, ...]]:
    found = [p for p in paths(doc) if not isinstance(get(doc, p), dict | list)]
    return found or paths(doc)


DATA: dict[str, Callable[[Doc, random.Random], Doc]] = {
    "delete": delete,
    "type_swap": swap_type,
    "huge": huge,
    "nonfinite": nonfinite,
    "long_key": long_key,
    "unknown_field": unknown_field,
    "wrong_nesting": wrong_nesting,
    "not_a_mapping": not_a_mapping,
}

# ------------------------------------------------------------------ mutations on the text


def key_lines(text: str) -> list[int]:
    lines = text.splitlines()
    return [i for i, line in enumerate(lines) if re.match(r"^\s*[\w.]+:", line)] or [0]


def duplicate_key(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    i = rng.choice(key_lines(text))
    return "\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]) + "\n"


def bad_yaml(text: str, rng: random.Random) -> str:
    lines = text.splitlines() or [""]
    i = rng.randrange(len(lines))
    broken = rng.choice(
        [
            lines[i] + " [unclosed",
            lines[i] + ": : :",
            "\t" + lines[i],
            lines[i] + ' "unterminated',
            "  - " + lines[i],
            lines[i] + " &a *b",
            "!!python/object/apply:os.system ['true']",
            "key: !!binary notbase64",
            "%YAML 9.9",
            "---\n---\nname: two",
        ]
    )
    if rng.random() < 0.2:
        return text[: rng.randrange(max(1, len(text)))]  # cut anywhere
    return "\n".join([*lines[:i], broken, *lines[i + 1 :]]) + "\n"


def nul_bytes(text: str, rng: random.Random) -> str:
    if rng.random() < 0.3 and "base:" in text:
        return re.sub(r"base: .*", 'base: "a\\0b"', text, count=1)
    at = rng.randrange(max(1, len(text)))
    return text[:at] + "\0" * rng.choice([1, 3]) + text[at:]


TEXT: dict[str, Callable[[str, random.Random], str]] = {
    "duplicate_key": duplicate_key,
    "bad_yaml": bad_yaml,
    "nul_bytes": nul_bytes,
}
KINDS = [*DATA, *TEXT]


def mutate(source: Path, kind: str, rng: random.Random) -> str:
    text = source.read_text()
    if kind in TEXT:
        return TEXT[kind](text, rng)
    doc = DATA[kind](yaml.safe_load(text), rng)
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------ running validate


OVERLONG = 2000  # characters: an error line longer than this is reported as offending


def judge(code: int, output: str, crashed: bool) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("ok: ")]
    return {
        "exit_code": code,
        "traceback": crashed or code == 1 or "Traceback" in output,
        "unshaped": [line[:300] for line in errors if not LINE.match(line)],
        "longest": max((len(line) for line in errors), default=0),
        # an error line longer than a screen of text is a bug too: values and keys are shortened
        "overlong": [line[:300] for line in errors if len(line) > OVERLONG],
    }


def validate_in_process(path: Path) -> dict[str, Any]:
    from typer.testing import CliRunner

    from jepa_lab.cli.main import app

    result = CliRunner().invoke(app, ["validate", str(path)])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    return judge(result.exit_code, result.output, crashed)


def validate_subprocess(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "jepa_lab", "validate", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )
    return judge(done.returncode, done.stdout + done.stderr, False)


def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    sources = sorted(STUDIES.glob("*.yaml"))
    results, offending, samples = [], [], []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        folder = Path(tmp)
        for source in sources:
            shutil.copy(source, folder / source.name)
        for i in range(args.mutants):
            source, kind = rng.choice(sources), KINDS[i % len(KINDS)]
            try:
                text = mutate(source, kind, rng)
            except (IndexError, KeyError, TypeError):  # no place for this mutation here
                text = bad_yaml(source.read_text(), rng)
                kind = "bad_yaml"
            path = folder / f"m{i:05d}_{source.name}"
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
            found = validate_in_process(path)
            found |= {"mutant": i, "kind": kind, "source": source.name}
            results.append(found)
            if found["traceback"] or found["unshaped"] or found["overlong"]:
                offending.append({**found, "input": text[:600]})
            if i < args.subprocess:
                again = validate_subprocess(path)
                samples.append({"mutant": i, "agree": again["exit_code"] == found["exit_code"]})
            path.unlink()
    by_kind: dict[str, Counter[str]] = {}
    for r in results:
        counter = by_kind.setdefault(r["kind"], Counter())
        counter[f"exit {r['exit_code']}"] += 1
        counter["tracebacks"] += r["traceback"]
        counter["unshaped lines"] += len(r["unshaped"])
    codes = Counter(r["exit_code"] for r in results)
    return {
        "mutants": len(results),
        "seed": args.seed,
        "exit_codes": {str(k): v for k, v in sorted(codes.items())},
        "tracebacks": sum(r["traceback"] for r in results),
        "unshaped_lines": sum(len(r["unshaped"]) for r in results),
        "mutants_with_unshaped_lines": sum(bool(r["unshaped"]) for r in results),
        "longest_error_line": max((r["longest"] for r in results), default=0),
        "overlong_lines": sum(len(r["overlong"]) for r in results),
        "subprocess_checked": len(samples),
        "subprocess_agree": sum(s["agree"] for s in samples),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "wall_s": round(time.monotonic() - began, 1),
        "offending": offending,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'kind':<14} {'n':>5} {'exit 0':>7} {'exit 2':>7} {'other':>6} {'tb':>4} "
          f"{'unshaped':>9}")  # fmt: skip
    for kind, c in report["by_kind"].items():
        n = sum(v for k, v in c.items() if k.startswith("exit "))
        other = n - c.get("exit 0", 0) - c.get("exit 2", 0)
        print(f"{kind:<14} {n:>5} {c.get('exit 0', 0):>7} {c.get('exit 2', 0):>7} {other:>6} "
              f"{c['tracebacks']:>4} {c['unshaped lines']:>9}")  # fmt: skip
    print(
        f"{report['mutants']} mutants in {report['wall_s']} s: exit codes {report['exit_codes']}, "
        f"{report['tracebacks']} tracebacks, {report['unshaped_lines']} lines without FILE:LINE "
        f"(in {report['mutants_with_unshaped_lines']} mutants), longest error line "
        f"{report['longest_error_line']} characters; subprocess agrees "
        f"{report['subprocess_agree']}/{report['subprocess_checked']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subprocess", type=int, default=5, help="re-run this many as processes")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    report = fuzz(args)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
