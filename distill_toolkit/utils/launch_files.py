"""The launch files and DeepSpeed configs shipped inside the package, found by name.

They live in the package (``distill_toolkit/launch/``, ``distill_toolkit/ds_configs/``; the
repository's top-level ``launch/`` and ``ds_configs/`` are links to these folders, so there is one
copy) and are read with :mod:`importlib.resources`, so an installed wheel serves them too::

    distill-toolkit launch-config zero3 > zero3.yaml
    distill-toolkit ds-config zero3 > ds_configs/zero3.json   # the file zero3.yaml names
"""

from __future__ import annotations

from importlib import resources

LAUNCH_DIR = "launch"
DS_CONFIG_DIR = "ds_configs"
_SUFFIXES = {LAUNCH_DIR: (".yaml", ".sh"), DS_CONFIG_DIR: (".json",)}


def _folder(kind: str):  # an importlib.resources Traversable
    return resources.files("distill_toolkit").joinpath(kind)


def _files(kind: str) -> dict:
    """``{name without suffix: file}`` of one shipped folder."""
    found = {}
    for entry in _folder(kind).iterdir():
        for suffix in _SUFFIXES[kind]:
            if entry.is_file() and entry.name.endswith(suffix):
                found[entry.name[: -len(suffix)]] = entry
    return dict(sorted(found.items()))


def launch_config_names() -> list[str]:
    """The names of the shipped launch files (``ddp``, ``zero3``, ``slurm`` ...)."""
    return list(_files(LAUNCH_DIR))


def ds_config_names() -> list[str]:
    """The names of the shipped DeepSpeed configs (``zero2``, ``zero3``, ``zero3_offload``)."""
    return list(_files(DS_CONFIG_DIR))


def _text(kind: str, name: str, what: str) -> str:
    files = _files(kind)
    key = name
    for suffix in _SUFFIXES[kind]:
        key = key[: -len(suffix)] if key.endswith(suffix) else key
    if key not in files:
        raise ValueError(f"no {what} named {name!r}. Fix: use one of {', '.join(files)}")
    return files[key].read_text(encoding="utf-8")


def launch_config(name: str) -> str:
    """The text of shipped launch file ``name`` (``zero3`` or ``zero3.yaml``; ``slurm`` is ``slurm.sh``);
    an unknown name raises ``ValueError`` listing the known ones."""
    return _text(LAUNCH_DIR, name, "launch config")


def ds_config(name: str) -> str:
    """The text of shipped DeepSpeed config ``name`` (``zero2`` or ``zero2.json``); an unknown name raises
    ``ValueError`` listing the known ones."""
    return _text(DS_CONFIG_DIR, name, "DeepSpeed config")


def ds_config_named_by(launch_text: str) -> list[str]:
    """The ``ds_configs/*.json`` paths a launch file's text refers to (``deepspeed_config_file``)."""
    return [line.split(":", 1)[1].strip() for line in launch_text.splitlines()
            if line.strip().startswith("deepspeed_config_file:")]
