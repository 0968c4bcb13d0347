"""What a run records about itself: the resolved config, the command that started it and the package versions.

The record is ``config.yaml``, written into ``output_dir`` when training starts and copied into every
checkpoint and every export. Its body is the config itself (every section the run was given), so
``distill-toolkit train config.yaml`` runs it again; its header holds the command, the number of
processes and the package versions as ``# key: value`` comment lines, read back by
:func:`read_config_yaml`::

    # distill_toolkit run record: the resolved config of this run ...
    # command: distill-toolkit train sst2.yaml --set training.max_steps=50
    # processes: 2
    # versions: torch=2.13.0 transformers=5.2.0 accelerate=1.16.0 ... distill_toolkit=0.1.0
    teacher: {...}
    training: {...}
"""

from __future__ import annotations

import json
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional, Union

import yaml

CONFIG_FILE = "config.yaml"
# The packages whose versions decide what a run computes, recorded with every run.
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "deepspeed", "distill_toolkit")
_HEADER = ("# distill_toolkit run record: the resolved config of this run (every section, defaults filled in).\n"
           "# Run it again with `distill-toolkit train config.yaml`; the lines below are comments.\n")
_KEYS = ("command", "processes", "versions")


def package_versions(packages: tuple = PACKAGES) -> dict[str, str]:
    """``{package: installed version}`` (``not installed`` for a missing one)."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def launch_command(argv: Optional[list] = None) -> str:
    """The command line of this process as a user would type it (``sys.argv``, its program shortened).

    ``.../bin/distill-toolkit`` becomes ``distill-toolkit``; ``.../distill_toolkit/cli.py`` (as run by
    ``python -m`` or ``accelerate launch -m``) becomes ``python -m distill_toolkit.cli``; a script
    stays as given, behind ``python``.
    """
    argv = [str(a) for a in (sys.argv if argv is None else argv)] or [""]
    program, rest = argv[0], argv[1:]
    path = Path(program)
    if path.name == "cli.py" and path.parent.name == "distill_toolkit":
        head = ["python", "-m", "distill_toolkit.cli"]
    elif path.suffix == ".py":
        head = ["python", program]
    elif program in ("", "-c"):
        head = ["python", "-c", "..."] if program == "-c" else ["python"]
    else:
        head = [path.name]
    return shlex.join(head + rest)


def resolved_config(training, distillation, run_config: Optional[dict] = None) -> dict:
    """The run's config as plain data: ``run_config`` (e.g. ``ExperimentConfig.to_dict()``) when given,
    else the two sections the loop holds (``training``, ``distillation``)."""
    config = run_config if run_config is not None else {"training": training.to_dict(),
                                                        "distillation": distillation.to_dict()}
    return json.loads(json.dumps(config, default=str))  # tuples -> lists, anything odd -> its str


def run_info(num_processes: int = 1, argv: Optional[list] = None) -> dict:
    """``{"command", "processes", "versions"}`` of this process: the header of ``config.yaml``."""
    return {"command": launch_command(argv), "processes": num_processes, "versions": package_versions()}


def config_yaml(config: dict, info: dict) -> str:
    """The text of ``config.yaml``: the header of :func:`run_info` as comments, then ``config`` as YAML."""
    versions = " ".join(f"{k}={v.replace(' ', '_')}" for k, v in info.get("versions", {}).items())
    lines = [f"# command: {' '.join(str(info.get('command', '')).splitlines())}",
             f"# processes: {info.get('processes', 1)}", f"# versions: {versions}"]
    return _HEADER + "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False)


def write_config_yaml(folder: Union[str, Path], config: dict, info: dict) -> Path:
    """Write :func:`config_yaml` as ``folder/config.yaml``; returns its path."""
    path = Path(folder) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(config, info), encoding="utf-8")
    return path


def read_config_yaml(path: Union[str, Path]) -> tuple[dict, dict]:
    """``(config, info)`` from a ``config.yaml`` written by :func:`write_config_yaml`.

    ``info`` holds what the header recorded (``command``, ``processes``, ``versions``); a file
    without a header (e.g. the user's own YAML) gives an empty ``info``.
    """
    text = Path(path).read_text(encoding="utf-8")
    info: dict = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep and key in _KEYS:
            info[key] = value
    if "versions" in info:
        info["versions"] = dict(item.split("=", 1) for item in info["versions"].split() if "=" in item)
    if "processes" in info:
        info["processes"] = int(info["processes"]) if info["processes"].isdigit() else info["processes"]
    return yaml.safe_load(text) or {}, info


def flat_config(config: dict, versions: Optional[dict] = None) -> dict:
    """``config`` flattened for trackers: ``section.field`` keys whose values are numbers, strings, booleans
    or None (a list or mapping as its JSON text), plus ``versions.PACKAGE`` for each of ``versions``."""
    flat: dict = {}
    for section, body in config.items():
        items = body.items() if isinstance(body, dict) else [(None, body)]
        for key, value in items:
            name = str(section) if key is None else f"{section}.{key}"
            plain = isinstance(value, (int, float, str, bool)) or value is None
            flat[name] = value if plain else json.dumps(value, default=str)
    for package, version in (versions or {}).items():
        flat[f"versions.{package}"] = version
    return flat
