"""One registry of named classes, shared by the strategy and task registries (losses keep functions)."""

from __future__ import annotations

from typing import Callable, Optional


class ClassRegistry:
    """Classes found by name. ``kind`` words the errors (e.g. ``"strategy"``), ``base_path`` names the base
    class they must subclass, ``unknown`` is the error type for an unknown name, ``fix`` ends its message."""

    def __init__(self, kind: str, base_path: str, field: str, unknown: type, fix: str):
        self.kind, self.base_path, self.field, self.unknown, self.fix = kind, base_path, field, unknown, fix
        self.classes: dict[str, type] = {}

    def register(self, base: type, name: str, cls: Optional[type] = None, overwrite: bool = False) -> Callable:
        """Register ``cls`` (a subclass of ``base``) under ``name``; without ``cls``, a decorator."""

        def add(klass):
            if not (isinstance(klass, type) and issubclass(klass, base)):
                raise TypeError(f"{self.kind} {name!r} must be a subclass of {self.base_path}")
            if name in self.classes and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            klass.name = name
            self.classes[name] = klass
            return klass

        return add if cls is None else add(cls)

    def get(self, name: str) -> type:
        """The class registered under ``name``; unknown names raise ``unknown``, listing the known ones."""
        if name not in self.classes:
            plural = "strategies" if self.kind == "strategy" else self.kind + "s"
            prefix = f"{self.field}: " if self.kind == "task" else ""
            raise self.unknown(f"{prefix}unknown {self.kind} {name!r}. Known {plural}: {', '.join(self.names())}. "
                               + self.fix)
        return self.classes[name]

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self.classes)
