"""``--set PATH=VALUE`` overrides applied to a config mapping before it becomes dataclasses.

``PATH`` is dotted: ``training.max_steps``, list items by index (``distillation.matches.0.weight``),
free-form mappings by key (``teacher.config.num_hidden_layers``). ``VALUE`` is YAML read by
:func:`~distill_toolkit.config.base.load_yaml` (``1e-4`` is a number, ``[tensorboard]`` a list, so a
whole list is replaced). Unknown section and field names are refused later by
:meth:`~distill_toolkit.config.base.Serializable.from_dict`, with the closest known names.
"""

from __future__ import annotations

from typing import Any

import yaml

from distill_toolkit.config.base import ConfigError, load_yaml

_EXAMPLE = "e.g. --set training.max_steps=50, --set distillation.matches.0.weight=2"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``data`` with every ``PATH=VALUE`` of ``overrides`` applied in order (``data`` is changed too)."""
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set {item}", "an override must look like section.key=value", _EXAMPLE)
        dotted, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {dotted}", f"cannot read the value {raw!r} as YAML "
                              f"({str(err).splitlines()[0]})", "quote it, e.g. --set 'training.run_name=\"a: b\"'") \
                from err
        set_path(data, dotted.strip().split("."), value)
    return data


def set_path(data: dict, keys: list[str], value: Any) -> None:
    """Set ``data[k0][k1]...`` to ``value``; a missing or null section becomes a mapping, a list is
    indexed by an integer key; an index out of range or a key into a plain value is a :class:`ConfigError`."""
    node: Any = data
    for depth, key in enumerate(keys):
        here, last = ".".join(keys[:depth + 1]), depth == len(keys) - 1
        if not key:
            raise ConfigError(f"--set {'.'.join(keys)}", "has an empty name between dots", _EXAMPLE)
        parent = ".".join(keys[:depth])
        if isinstance(node, list):
            if not (key.lstrip("-").isdigit() and -len(node) <= int(key) < len(node)):
                indices = f"an index 0..{len(node) - 1}, or " if node else ""
                raise ConfigError(f"--set {here}", f"{parent} is a list of {len(node)} item(s), so {key!r} is not "
                                  "an index of it", f"use {indices}replace the whole list: --set '{parent}=[...]'")
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {here}", f"{parent} holds the value {node!r}, not a section or a list",
                              f"set {parent} itself, e.g. --set {parent}=...")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}
            node = node[key]
