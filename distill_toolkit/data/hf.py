"""Splits from anything ``datasets`` reads (``data.name: hf``): a Hub dataset ID, a local dataset folder,
one parquet/CSV/JSON(-lines) file, or a folder written by ``save_to_disk``.

``data.splits`` maps the run's ``train`` / ``dev`` / ``test`` to the dataset's split names, with
``datasets``' slices (``train[:90%]``, ``train[90%:]``, ``train+validation``). A Hub ID is read from the
local datasets cache when the user sets ``HF_HUB_OFFLINE=1``; the process environment is never changed.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
from huggingface_hub import constants as hub_constants

from distill_toolkit.config import ConfigError, DataSpec
from distill_toolkit.data.datasets import subsample
from distill_toolkit.data.errors import DataError

DEV_NAMES = ("validation", "dev", "valid", "val")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
_SPLIT_PART = re.compile(r"^\s*([^\[\]+]+?)\s*(\[[^\]]*\])?\s*$")


def load_hf_splits(spec: DataSpec) -> datasets.DatasetDict:
    """``train`` plus ``dev`` / ``test`` (those present or named in ``spec.splits``), raw, each cut to
    ``spec.max_examples`` (a seeded random subset) when set."""
    source = open_dataset(spec)
    names = split_names(spec, source)
    splits = datasets.DatasetDict({run: select_split(source, value, f"data.splits.{run}")
                                   for run, value in names.items()})
    for run, part in splits.items():
        _check_labelled(part, spec.label_column, run, names[run])
        if spec.max_examples:
            splits[run] = subsample(part, spec.max_examples, seed=spec.seed)
    return splits


def open_dataset(spec: DataSpec) -> datasets.DatasetDict:
    """Every split of the dataset at ``spec.path`` (a single file or ``Dataset`` becomes split ``train``)."""
    path, local = spec.path, Path(spec.path).expanduser()
    try:
        if local.is_dir() and is_saved_to_disk(local):
            if spec.config:
                raise ConfigError("data.config", f"{spec.path} is a save_to_disk folder, which has no "
                                  "configurations", "remove data.config")
            loaded = datasets.load_from_disk(str(local))
        elif local.is_file():
            suffix = local.suffix.lower()
            if suffix not in FILE_BUILDERS:
                raise ConfigError("data.path", f"cannot tell the format of {path} from its extension",
                                  f"use a file ending in {', '.join(FILE_BUILDERS)}, or a dataset folder")
            extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
            loaded = datasets.load_dataset(FILE_BUILDERS[suffix], data_files=str(local), **extra)
        else:
            loaded = datasets.load_dataset(path, name=spec.config)
    except ConfigError:
        raise
    except OSError as err:  # not found locally, and the Hub cannot be reached or has no such dataset
        raise _not_found(spec, err) from err
    except ValueError as err:
        if "config" in str(err).lower():  # "BuilderConfig 'x' not found. Available: [...]", "Config name is missing"
            raise ConfigError("data.config", _first_line(err), "name one of the dataset's configurations "
                              "listed above in `data.config`") from err
        raise DataError(f"data.path: cannot read {path} ({type(err).__name__}: {_first_line(err)}). Fix: check "
                        "the files (parquet, CSV with a header row, JSON lines) or the dataset folder") from err
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})


def is_saved_to_disk(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def split_names(spec: DataSpec, source: datasets.DatasetDict) -> dict[str, str]:
    """The run's splits -> the dataset's split names (or slices): ``spec.splits`` over the defaults
    (``train``, the first of :data:`DEV_NAMES` present, ``test`` when present); ``null`` drops one."""
    names = {"train": "train", "dev": next((n for n in DEV_NAMES if n in source), None),
             "test": "test" if "test" in source else None}
    names.update(spec.splits or {})
    return {run: value for run, value in names.items() if value is not None}


def select_split(source: datasets.DatasetDict, value: str, where: str) -> datasets.Dataset:
    """The split (or slice, e.g. ``train[:90%]``, or sum, ``train+validation``) ``value`` of ``source``;
    a name the dataset lacks is a :class:`ConfigError` naming ``where`` and the splits that exist."""
    available = ", ".join(source) or "none"
    parts = [_SPLIT_PART.match(part) for part in value.split("+")]
    if not all(parts):
        raise ConfigError(where, f"cannot read the split {value!r}", 'write a split name or a slice, e.g. '
                          '"train", "train[:90%]", "train[90%:]" or "train+validation"')
    missing = [m.group(1) for m in parts if m.group(1) not in source]
    if missing:
        raise ConfigError(where, f"the dataset has no split {missing[0]!r} (it has: {available})",
                          f"name one of {available}, a slice such as \"train[90%:]\", or null to leave it out")
    if len(parts) == 1 and not parts[0].group(2):
        return source[parts[0].group(1)]
    try:
        instructions = datasets.ReadInstruction.from_spec(value.replace(" ", "")).to_absolute(
            {name: len(part) for name, part in source.items()})
    except (ValueError, AssertionError) as err:
        raise ConfigError(where, f"bad slice {value!r} ({_first_line(err)})",
                          'e.g. "train[:90%]", "train[90%:]" or "train[:1000]"') from err
    pieces = [source[i.splitname].select(range(i.from_, i.to)) for i in instructions]
    return pieces[0] if len(pieces) == 1 else datasets.concatenate_datasets(pieces)


def _check_labelled(part: datasets.Dataset, column: str, run: str, value: str) -> None:
    """Refuse a split whose ``ClassLabel`` labels are all ``-1`` (GLUE's hidden test labels)."""
    if not isinstance(part.features.get(column), datasets.ClassLabel) or len(part) == 0:
        return
    if all(v == -1 for v in part[column]):
        raise DataError(f"data.splits.{run}: split {value!r} has no labels (every {column!r} is -1, as in GLUE's "
                        f"hidden test sets). Fix: set `{run}: null` under data.splits, or name a labelled split")


def _not_found(spec: DataSpec, err: Exception) -> ConfigError:
    offline = ("; HF_HUB_OFFLINE is set and it is not in the local datasets cache "
               f"({datasets.config.HF_DATASETS_CACHE})" if hub_constants.HF_HUB_OFFLINE else "")
    config = f" (configuration {spec.config!r})" if spec.config else ""
    return ConfigError("data.path", f"{spec.path!r} is not a local folder or file, and the Hub dataset{config} could "
                       f"not be loaded: {_first_line(err).rstrip('.')}{offline}",
                       "point `path` at a local dataset folder, a parquet/CSV/JSON file or a save_to_disk folder, "
                       "or load it once while online (so it is in the datasets cache) and run with HF_HUB_OFFLINE=1")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
