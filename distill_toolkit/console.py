"""What the command line and the examples show: known-harmless library notices hidden unless ``--verbose``.

A newcomer running ``make demo`` or ``distill-toolkit train`` should see the run (what is fetched, the
progress of training, the results), not the notices every healthy run triggers:

- transformers 5's *load report* when the only keys it lists are a head or pooler that is new (``MISSING``,
  e.g. a classifier put on a pretrained encoder) or left out (``UNEXPECTED``, e.g. ``AutoModel`` on a saved
  classifier). A report that lists anything else (an encoder block missing, a shape mismatch, a
  conversion error) is still shown: it may mean a wrong checkpoint.
- transformers' "Loading weights" and "Writing model shards" bars (weights load in well under a second here).
- DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." warning, printed whenever DeepSpeed is
  imported on a machine without a GPU.

This is the application's choice, so only the CLI and the examples call :func:`configure_console`; library
modules never filter logs. It uses logging filters and transformers' tqdm hook only: the process environment
is left as it is, and every other warning of those loggers still shows.
"""

from __future__ import annotations

import logging
import re

from transformers.utils import logging as hf_logging

#: heads and poolers a task puts on (or leaves off) a pretrained body: their keys in a load report are expected
HEAD_MODULES = frozenset({"classifier", "qa_outputs", "score", "pooler", "cls", "lm_head", "position_ids"})
REPORT_STATUSES = ("MISSING", "UNEXPECTED", "MISMATCH", "CONVERSION", "OWNED", "SKIPPED")
QUIET_BARS = ("Loading weights", "Writing model shards")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRANSFORMERS_LOADING = "transformers.modeling_utils"  # the logger from_pretrained writes its report to
_DEEPSPEED = "DeepSpeed"


def report_keys(message: str) -> list[tuple[str, str]]:
    """The ``(key, status)`` rows of a transformers load report (``Key | Status | ...`` table), colours removed."""
    rows = []
    for line in _ANSI.sub("", message).splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) >= 2 and cells[1] in REPORT_STATUSES:
            rows.append((cells[0], cells[1]))
    return rows


def is_harmless_load_report(message: str) -> bool:
    """Whether ``message`` is a load report whose every row is a new (``MISSING``) or dropped
    (``UNEXPECTED``) key of a head or pooler (:data:`HEAD_MODULES`)."""
    if "LOAD REPORT" not in message:
        return False
    rows = report_keys(message)
    return bool(rows) and all(status in ("MISSING", "UNEXPECTED") and HEAD_MODULES & set(key.split("."))
                              for key, status in rows)


class HarmlessLoadReports(logging.Filter):
    """Drops the load reports :func:`is_harmless_load_report` accepts; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_harmless_load_report(record.getMessage())


class CpuAcceleratorNotice(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU" warning; every other DeepSpeed record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


_FILTERS = ((_TRANSFORMERS_LOADING, HarmlessLoadReports()), (_DEEPSPEED, CpuAcceleratorNotice()))


def _quiet_bars(factory, args, kwargs):
    """transformers' tqdm hook: the bars named in :data:`QUIET_BARS` are made disabled, the others are kept."""
    if kwargs.get("desc") in QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def configure_console(verbose: bool = False) -> None:
    """Hide the known-harmless notices (``verbose=False``) or show everything again (``verbose=True``).

    Filters are attached to the ``transformers.modeling_utils`` and ``DeepSpeed`` loggers (DeepSpeed
    keeps a logger's filters when it sets the logger up on import, so this may run before DeepSpeed is
    imported). Calling it again with the same value changes nothing.
    """
    for name, quiet in _FILTERS:
        (logging.getLogger(name).removeFilter if verbose else logging.getLogger(name).addFilter)(quiet)
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5
    if set_hook is not None:
        previous = set_hook(None if verbose else _quiet_bars)
        if verbose and previous not in (None, _quiet_bars):  # someone else's hook: keep it
            set_hook(previous)
