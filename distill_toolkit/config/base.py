"""What every config section shares: the error type, value checks, and dict/YAML/JSON round trips."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Union

import yaml


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


class Serializable:
    """Dict/YAML/JSON round-tripping shared by the config dataclasses."""

    @classmethod
    def from_dict(cls, data: dict, prefix: str = ""):
        """Build from a mapping; unknown keys raise a :class:`ConfigError` listing the known ones."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(prefix or cls.__name__, f"expected a mapping, got {type(data).__name__}",
                              "write this section as `key: value` pairs")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{prefix}{unknown[0]}" if prefix else unknown[0],
                f"unknown field in {cls.__name__}",
                f"remove it or use one of: {', '.join(sorted(known))}",
            )
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
    """The mapping in a YAML (``yaml.safe_load``) or JSON file; a :class:`ConfigError` names a missing
    file, a syntax error (with its line) or a tag the safe loader refuses (e.g. ``!!python/object``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found", "pass the path of an existing .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), f"not UTF-8 text (byte offset {err.start})", "save the file as UTF-8") from err
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
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
