"""docs/config_reference.md is generated from the config dataclasses and must equal the generator's output
(regenerate: ``python -m distill_toolkit.config.reference > docs/config_reference.md``)."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

from distill_toolkit.config import DataSpec, DistillationConfig, Match, ModelSpec, TrainingConfig
from distill_toolkit.config.augment import AugmentSpec
from distill_toolkit.config.reference import default_text, field_docs, render, sections, type_name, undocumented

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "config_reference.md"
REGENERATE = "python -m distill_toolkit.config.reference > docs/config_reference.md"


def test_the_checked_in_page_is_the_generators_output():
    assert PAGE.read_text() == render(), f"docs/config_reference.md is stale: run `{REGENERATE}`"


def test_the_module_prints_the_page():
    done = subprocess.run([sys.executable, "-m", "distill_toolkit.config.reference"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == render()


def test_every_field_of_every_section_is_listed_with_a_doc():
    listed = {cls for _, cls in sections()}
    assert {ModelSpec, DataSpec, AugmentSpec, TrainingConfig, DistillationConfig, Match} <= listed
    assert undocumented() == [], "add a `#:` comment above each of these fields"
    page = render()
    for _, cls in sections():
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` | " in page and field_docs(cls)[f.name], (cls.__name__, f.name)


def test_types_defaults_and_docs_read_from_the_dataclasses():
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    assert default_text(fields["learning_rate"]) == "5.0e-05" and default_text(fields["trackers"]) == "[tensorboard]"
    assert default_text(fields["max_steps"]) == "null" and type_name(int) == "int"
    hints = typing.get_type_hints(TrainingConfig)
    assert type_name(hints["max_steps"]) == "int or null"
    assert "optimiser steps" in field_docs(TrainingConfig)["max_steps"]  # a `#:` comment
    assert "Hub model ID" in field_docs(ModelSpec)["path"]  # a docstring bullet
    assert "| `batch_size` | int | `32` |" in render()
