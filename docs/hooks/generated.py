"""MkDocs hook: pages made from other files, so nothing is written twice.

- ``index.md``: the README's opening (everything before ``## Everyday use``), its ``docs/``
  links made relative to the site.
- ``spec.md`` and ``world-spec.md``: the JSON Schemas (``jepa-lab schema``, ``jepa-lab schema
  --world``) as one table per section: field, type, default, bounds, description.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
README_END = "## Everyday use"
SCHEMAS = {
    "spec.md": ("docs/jepa-lab.schema.json", "Experiment spec", "jepa-lab schema"),
    "world-spec.md": ("docs/jepa-lab-world.schema.json", "World spec", "jepa-lab schema --world"),
}
BOUNDS = {
    "minimum": ">= {}",
    "exclusiveMinimum": "> {}",
    "maximum": "<= {}",
    "exclusiveMaximum": "< {}",
    "minLength": "length >= {}",
    "maxLength": "length <= {}",
    "minItems": "items >= {}",
    "maxItems": "items <= {}",
    "pattern": "`{}`",
}


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "index.md", content=index_page()))
    for page, (schema, title, command) in SCHEMAS.items():
        content = schema_page(json.loads((ROOT / schema).read_text()), title, schema, command)
        files.append(File.generated(config, page, content=content))
    return files


def index_page() -> str:
    text = (ROOT / "README.md").read_text()
    opening = text.split(README_END, 1)[0].rstrip()
    return opening.replace("](docs/", "](") + "\n"


def schema_page(schema: dict[str, Any], title: str, source: str, command: str) -> str:
    lines = [
        f"# {title} reference",
        "",
        f"Generated from `{source}` (`{command}` refreshes it) when the site is built. Every",
        "section forbids unknown fields; a field without a default is required.",
        "",
    ]
    sections = {schema["title"]: schema, **schema.get("$defs", {})}
    for name, section in sections.items():
        lines += [f"## {name}", ""]
        if section.get("description"):
            lines += [cell(section["description"]), ""]
        lines += ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
        required = set(section.get("required", []))
        for field, prop in section.get("properties", {}).items():
            default = "required" if field in required else code(prop.get("default"))
            row = [f"`{field}`", type_of(prop), default, bounds(prop), prop.get("description", "")]
            lines.append("| " + " | ".join(cell(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "const" in prop:
        return code(prop["const"])
    if "enum" in prop:
        return " \\| ".join(code(v) for v in prop["enum"])
    for key in ("oneOf", "anyOf", "allOf"):
        if key in prop:
            return " or ".join(type_of(p) for p in prop[key])
    kind = prop.get("type", "any")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(type_of(p) for p in prop["prefixItems"]) + "]"
        if "items" in prop:
            return f"list of {type_of(prop['items'])}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of {type_of(prop['additionalProperties'])}"
    return str(kind)


def bounds(prop: dict[str, Any]) -> str:
    found = [form.format(prop[key]) for key, form in BOUNDS.items() if key in prop]
    return ", ".join(found)


def code(value: Any) -> str:
    return "" if value is None else f"`{json.dumps(value)}`"


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
