"""The config reference page, generated from the dataclasses: every field of every section, its type,
default and doc.

    python -m distill_toolkit.config.reference > docs/config_reference.md

The sections are found from :class:`~distill_toolkit.config.ExperimentConfig` down (fields typed as a config
dataclass, plus :data:`NESTED_AS_DATA`). A field's doc is the ``#:`` comment on the lines just above it (or
after it, on its line), as Sphinx reads attribute docs, or else its bullet in the class docstring
(``- ``name``: text``). The checked-in ``docs/config_reference.md`` is compared with :func:`render` by the
tests, so it cannot go stale.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from typing import Any, Union

import yaml

from distill_toolkit.config.augment import AugmentSpec
from distill_toolkit.config.base import Serializable
from distill_toolkit.config.distillation import DistillationConfig, Match
from distill_toolkit.config.experiment import DataSpec, ExperimentConfig

#: sections a YAML file writes as a mapping (or a list of them) that their dataclass holds as plain data
NESTED_AS_DATA = {(DataSpec, "augment"): (AugmentSpec, "augment"),
                  (DistillationConfig, "matches"): (Match, "matches[i]")}
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^=]+(?:=.*)?$")
_DOC_COMMENT = re.compile(r"#:\s?(.*)$")
_NAMES_THEN_COLON = re.compile(r"(?:^|(?<=; ))((?:``\w+``(?:,\s*|\s+and\s+)?)+)(?:\s*\(([^)]*)\))?:\s*")
_TYPE_NAMES = {type(None): "null", dict: "mapping", str: "string", bool: "bool", int: "int", float: "float",
               list: "list"}


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: doc}`` for the dataclass ``cls``: ``#:`` comments first, then docstring bullets."""
    names = {f.name for f in dataclasses.fields(cls)}
    docs = _docstring_bullets(inspect.getdoc(cls) or "", names)
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(_DOC_COMMENT.search(stripped).group(1))
            continue
        match = _FIELD_LINE.match(line.split("#", 1)[0].rstrip())
        if match and match.group(1) in names:
            trailing = _DOC_COMMENT.search(line)
            text = " ".join(pending + ([trailing.group(1)] if trailing else [])).strip()
            if text:
                docs[match.group(1)] = text
        pending = []
    return docs


def _docstring_bullets(doc: str, names: set) -> dict[str, str]:
    """Docs from the docstring's bullets: ``- ``name``: text`` (continuation lines joined), also
    ``- ``a``: text; ``b``: text`` and ``- ``a``, ``b``: text`` (both names get that text)."""
    bullets: list[str] = []
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith("- "):
            bullets.append(stripped[2:] if stripped.startswith("- ``") else "")
        elif bullets and bullets[-1] and line.startswith("  ") and stripped:
            bullets[-1] += " " + stripped
        elif not stripped:
            bullets.append("")  # a blank line ends the bullet before it
    found: dict[str, str] = {}
    for bullet in filter(None, bullets):
        heads = list(_NAMES_THEN_COLON.finditer(bullet))
        for i, head in enumerate(heads):
            text = bullet[head.end():heads[i + 1].start() if i + 1 < len(heads) else len(bullet)]
            text = f"({head.group(2)}) {text}" if head.group(2) else text  # ``lora`` (students only): ...
            for name in re.findall(r"``(\w+)``", head.group(1)):
                if name in names and name not in found:
                    found[name] = text.strip().rstrip(";").strip()
    return found


def type_name(kind: Any) -> str:
    """An annotation as a YAML user reads it: ``Optional[int]`` is ``int or null``."""
    if kind is Any:
        return "any"
    if typing.get_origin(kind) is Union:
        return " or ".join(dict.fromkeys(type_name(k) for k in typing.get_args(kind)))
    kind = typing.get_origin(kind) or kind
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return f"mapping ({kind.__name__})"
    return _TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def default_text(f: dataclasses.Field) -> str:
    """A field's default as YAML (``null``, ``[tensorboard]``, ``{}``)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(its section's defaults)"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: reST literals and roles as Markdown code, pipes escaped."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", text).replace("``", "`")
    return text.replace("|", "\\|").replace("\n", " ")


def section_table(cls: type) -> str:
    """The Markdown table of ``cls``'s fields: name, type, default, doc."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    rows = ["| field | type | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        rows.append(f"| `{f.name}` | {_cell(type_name(hints.get(f.name, Any)))} | `{_cell(default_text(f))}` | "
                    f"{_cell(docs.get(f.name, ''))} |")
    return "\n".join(rows)


def sections() -> list[tuple[str, type]]:
    """``(where, dataclass)`` for every section of a run's file, from :class:`ExperimentConfig` down. A
    dataclass met at several places (the teacher's and the student's model section) is listed once."""
    places: dict[type, list[str]] = {}

    def visit(cls: type, where: str) -> None:
        places.setdefault(cls, []).append(where)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            inner = f"{where}.{f.name}" if where else f.name
            for kind in typing.get_args(hints[f.name]) or (hints[f.name],):
                if isinstance(kind, type) and dataclasses.is_dataclass(kind) and issubclass(kind, Serializable):
                    visit(kind, inner)
            if (cls, f.name) in NESTED_AS_DATA:
                kind, name = NESTED_AS_DATA[(cls, f.name)]
                visit(kind, f"{where}.{name}")

    visit(ExperimentConfig, "")
    return [(" / ".join(dict.fromkeys(wheres)), cls) for cls, wheres in places.items() if cls is not ExperimentConfig]


def undocumented() -> list[str]:
    """``Section.field`` for every field the page would list without a doc (the tests want none)."""
    return [f"{cls.__name__}.{f.name}" for _, cls in sections() for f in dataclasses.fields(cls)
            if not field_docs(cls).get(f.name)]


def render() -> str:
    """The whole page, as ``docs/config_reference.md`` holds it."""
    parts = ["# Config reference", "",
             "Every field of every section of a run's YAML file (`distill-toolkit train CONFIG.yaml`), with its type,",
             "default and meaning. Generated from the dataclasses in `distill_toolkit/config/` by",
             "`python -m distill_toolkit.config.reference > docs/config_reference.md`; do not edit by hand",
             "(`tests/test_config_reference.py` fails when the page and the code differ).", "",
             "Types are as YAML writes them: `null` leaves a field unset, `1e-4` is a number, a `mapping` is",
             "`{key: value}`. Any field can be changed from the command line with `--set SECTION.FIELD=VALUE`",
             "(list items by index: `--set distillation.matches.0.weight=2`).", ""]
    for where, cls in sections():
        summary = _cell((inspect.getdoc(cls) or "").split("\n\n")[0]).replace("\\|", "|")
        parts += [f"## `{where}` ({cls.__name__})", "", summary, "", section_table(cls), ""]
    return "\n".join(parts)


def main() -> int:
    """Print the page (``python -m distill_toolkit.config.reference``)."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
