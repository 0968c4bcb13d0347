"""What every config section shares: the error type, value checks, and dict/YAML/JSON round trips."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that reads floats as YAML 1.2 does: ``1e-4`` and ``5E-5`` are numbers
    (YAML 1.1, PyYAML's default, wants a dot, so ``1e-4`` would be the string ``"1e-4"``)."""


ConfigLoader.add_implicit_resolver(  # copies SafeLoader's resolvers first: yaml.safe_load is unchanged
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML with :class:`ConfigLoader` (safe: plain values only, YAML 1.2 floats)."""
    return yaml.load(text, Loader=ConfigLoader)


class ConfigError(ValueError):
    """A configuration value is wrong. The message names the field and the fix."""

    def __init__(self, field_name: str, problem: str, fix: str):
        self.field = field_name
        super().__init__(f"{field_name}: {problem}. Fix: {fix}")


def check(cond: bool, field_name: str, problem: str, fix: str) -> None:
    """Raise :class:`ConfigError` (``field_name``, ``problem``, ``fix``) unless ``cond``."""
    if not cond:
        raise ConfigError(field_name, problem, fix)


def is_int(x: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_finite_number(x: Any) -> bool:
    """An int or float (not a bool) that is finite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping", type(None): "null"}
_PYTHON_ALIKES = {str: (str, os.PathLike), list: (list, tuple)}


def _fits(value: Any, kind: Any) -> bool:
    """Whether ``value`` (as read from YAML/JSON) fits the annotation ``kind``; ints pass as floats."""
    origin = typing.get_origin(kind)
    if kind is Any:
        return True
    if origin is Union:
        return any(_fits(value, k) for k in typing.get_args(kind))
    if origin is not None:
        return _fits(value, origin)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return is_int(value)
    kind = _PYTHON_ALIKES.get(kind, kind)  # what Python callers may pass where a file holds str / list
    return isinstance(value, kind) if isinstance(kind, (type, tuple)) else True


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is Union:
        return " or ".join(dict.fromkeys(_describe(k) for k in typing.get_args(kind)))
    kind = typing.get_origin(kind) or kind
    return _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def _quoted(text: str, kind: Any) -> bool:
    """Whether ``text`` would fit ``kind`` without its quotes (``"32"`` for an integer)."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return False
    return not isinstance(value, str) and _fits(value, kind)


def check_types(config: Any, where: str) -> None:
    """Every field of the dataclass ``config`` holds a value of its annotated type, else a
    :class:`ConfigError` naming ``where.field`` (e.g. ``batch_size: "32"``, a quoted number)."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, kind = getattr(config, f.name), hints.get(f.name, Any)
        if _fits(value, kind):
            continue
        fix = f"set it to {_describe(kind)}"
        if isinstance(value, str) and _quoted(value, kind):
            fix = f"write it without quotes, e.g. `{f.name}: {value}`"
        raise ConfigError(f"{where}.{f.name}", f"must be {_describe(kind)}, got {type(value).__name__} {value!r}",
                          fix)


class Serializable:
    """Dict/YAML/JSON round-tripping shared by the config dataclasses."""

    @classmethod
    def from_dict(cls, data: dict, prefix: str = ""):
        """Build from a mapping; an unknown key raises a :class:`ConfigError` with the closest known names
        ("did you mean `num_epochs`?") and the list of them."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(prefix or cls.__name__, f"expected a mapping, got {type(data).__name__}",
                              "write this section as `key: value` pairs")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            name = str(unknown[0])
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(f'`{c}`' for c in close)}? " if close else ""
            raise ConfigError(f"{prefix}{name}", f"unknown field in {cls.__name__}",
                              f"{hint}Known fields: {', '.join(sorted(known))}")
        return cls(**cls._convert_nested(dict(data), prefix))

    @classmethod
    def _convert_nested(cls, data: dict, prefix: str) -> dict:
        return data

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Union[str, Path]) -> None:
        """Write this config to ``path`` as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = (yaml.safe_dump(self.to_dict(), sort_keys=False)
                if path.suffix in (".yaml", ".yml") else json.dumps(self.to_dict(), indent=2))
        path.write_text(text)

    @classmethod
    def load(cls, path: Union[str, Path]):
        """Read a config from a YAML or JSON file (safe loader only) and validate its values."""
        config = cls.from_dict(read_config_file(path))
        config.validate()
        return config


def read_config_file(path: Union[str, Path]) -> dict:
    """The mapping in a YAML (:func:`load_yaml`: safe, YAML 1.2 floats) or JSON file; a :class:`ConfigError`
    names a missing file, a syntax error (with its line) or a tag the safe loader refuses (``!!python/object``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found", "pass the path of an existing .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), f"not UTF-8 text (byte offset {err.start})", "save the file as UTF-8") from err
    try:
        data = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(str(path), f"unsafe or unknown YAML tag: {err.problem} {err.problem_mark}".strip(),
                          "write plain values (the loader never builds Python objects)") from err
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), f"cannot parse: {err}".replace("\n", " "), "fix the syntax of the file") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"the file holds a {type(data).__name__}, not sections",
                          "write `training:`, `distillation:` ... as top-level keys")
    return data
