"""Packaging (issue 6): launch files and DeepSpeed configs shipped in the package and printed by name, one
copy of each, one version, the license, py.typed, a `test` extra that covers the suite's imports, and a
wheel that installs into a clean venv, prints a launch config and trains a tiny model from a YAML naming a Hub
ID out of a local cache and an HF dataset folder."""

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import datasets
import pytest
import yaml

import distill_toolkit
from distill_toolkit.cli import main
from distill_toolkit.utils.launch_files import (ds_config, ds_config_names, launch_config, launch_config_names)
from test_hf_data import CLASSES, class_features, rows, save_model, save_to_disk
from test_hub_models import cache_model

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distill_toolkit"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_top_level_folders_are_the_package_folders():
    """One copy: launch/ and ds_configs/ at the root are links to the package's folders."""
    for name in ("launch", "ds_configs"):
        assert (ROOT / name).resolve() == (PACKAGE / name).resolve()
        assert (ROOT / name).is_symlink()
    assert (PACKAGE / "launch" / "zero3.yaml").is_file() and not (PACKAGE / "launch" / "zero3.yaml").is_symlink()


def test_shipped_files_are_found_by_name():
    assert launch_config_names() == sorted(p.stem for p in (PACKAGE / "launch").iterdir())
    assert {"ddp", "fsdp2", "multi_node", "single", "slurm", "zero2", "zero3", "zero3_offload"} <= set(
        launch_config_names())
    assert ds_config_names() == ["zero2", "zero3", "zero3_offload"]
    assert launch_config("zero3") == launch_config("zero3.yaml") == (PACKAGE / "launch" / "zero3.yaml").read_text()
    assert launch_config("slurm").startswith("#!/bin/bash")
    assert json.loads(ds_config("zero2.json"))["zero_optimization"]["stage"] == 2
    with pytest.raises(ValueError, match="no launch config named 'zero4'.*zero3"):
        launch_config("zero4")


def test_every_launch_file_names_a_shipped_ds_config():
    for name in launch_config_names():
        text = launch_config(name)
        for line in text.splitlines():
            if line.strip().startswith("deepspeed_config_file:"):
                path = line.split(":", 1)[1].strip()
                assert path.startswith("ds_configs/") and Path(path).stem in ds_config_names(), (name, path)


def test_cli_prints_a_launch_config_and_a_ds_config(capsys):
    assert main(["launch-config", "zero3"]) == 0
    printed = capsys.readouterr()
    assert printed.out == launch_config("zero3")
    assert yaml.safe_load(printed.out)["deepspeed_config"]["deepspeed_config_file"] == "ds_configs/zero3.json"
    assert "distill-toolkit ds-config zero3 > ds_configs/zero3.json" in printed.err
    assert main(["ds-config", "zero3_offload"]) == 0
    assert json.loads(capsys.readouterr().out)["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert main(["launch-config"]) == 0
    assert capsys.readouterr().out.split() == launch_config_names()
    assert main(["ds-config", "zero9"]) == 2
    assert "zero2, zero3, zero3_offload" in capsys.readouterr().err


def test_one_version_read_from_the_installed_metadata():
    assert distill_toolkit.__version__ == metadata.version("distill_toolkit") == PYPROJECT["project"]["version"]
    assert PYPROJECT["project"]["version"] not in (PACKAGE / "__init__.py").read_text()  # not written twice


def test_license_matches_pyproject_and_py_typed_ships():
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190
    assert (PACKAGE / "py.typed").is_file()
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["distill_toolkit"]
    assert {"py.typed", "launch/*.yaml", "launch/*.sh", "ds_configs/*.json"} <= set(data)


def _distribution(requirement: str) -> str:
    name = requirement.split(";")[0]
    for sep in "<>=!~[ ":
        name = name.split(sep)[0]
    return name.lower().replace("_", "-")


def _imported_modules(folder: Path) -> set:
    found = set()
    for path in list(folder.glob("*.py")) + list((folder / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_the_test_extra_holds_everything_the_suite_imports():
    extras = PYPROJECT["project"]["optional-dependencies"]  # `make test` installs test + served (the llama.cpp server)
    declared = {_distribution(r) for r in PYPROJECT["project"]["dependencies"] + extras["test"] + extras["served"]}
    local = {p.stem for folder in ("tests", "tests/scripts", "examples", "benchmarks") for p in (ROOT / folder).glob(
        "*.py")} | {"distill_toolkit"}
    providers = metadata.packages_distributions()
    missing = {}
    for module in _imported_modules(ROOT / "tests") - local - set(sys.stdlib_module_names):
        dists = {_distribution(d) for d in providers.get(module, [module])}
        installed_by = dists & declared
        # a module may come with a declared package (psutil with accelerate, tokenizers with transformers)
        required_by_declared = any(_distribution(req) in dists for d in declared if _installed(d)
                                   for req in (metadata.requires(d) or []))
        if not installed_by and not required_by_declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported by tests but in neither the dependencies nor the test extra: {missing}"


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


# ---- a real wheel in a clean venv -----------------------------------------------------------

def _run(cmd, cwd, timeout=240):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_wheel_installs_into_a_clean_venv_prints_a_launch_config_and_trains(tmp_path):
    source, dist = tmp_path / "source", tmp_path / "dist"  # built from a clean copy: no stale build/ folder
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        source.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "distill_toolkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-w", dist, "-q"],
         tmp_path)
    wheel = next(dist.glob("distill_toolkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("distill_toolkit/launch/zero3.yaml", "distill_toolkit/launch/slurm.sh",
                    "distill_toolkit/ds_configs/zero2.json", "distill_toolkit/py.typed"):
        assert shipped in names, shipped
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    venv = tmp_path / "wheelvenv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile"]  # no .pyc compiling: faster
    _run(pip + ["torch==2.13.0"], tmp_path, timeout=400)  # pinned: an unpinned torch pulls a multi-GB CUDA build
    _run(pip + [wheel], tmp_path, timeout=400)
    away = tmp_path / "elsewhere"  # not the repository: the files must come from the installed package
    away.mkdir()
    printed = _run([venv / "bin" / "distill-toolkit", "launch-config", "zero3"], away).stdout
    assert printed == launch_config("zero3")
    assert json.loads(_run([venv / "bin" / "distill-toolkit", "ds-config", "zero2"], away).stdout) == json.loads(
        ds_config("zero2"))
    version = _run([venv / "bin" / "python", "-c", "import distill_toolkit; print(distill_toolkit.__version__)"],
                   away).stdout.strip()
    assert version == PYPROJECT["project"]["version"]
    _train_from_a_hub_id_and_a_dataset_folder(venv, away)


def _train_from_a_hub_id_and_a_dataset_folder(venv: Path, away: Path) -> None:
    """The installed command trains a tiny student from a YAML naming a Hub model ID, read from a local HF
    cache (hub layout under HF_HOME, HF_HUB_OFFLINE=1), and a `save_to_disk` dataset folder."""
    home = away / "hf_home"
    cache_model(home, "acme/tiny-sentiment", save_model(away / "model_files"))
    data = save_to_disk(away / "data", train=datasets.Dataset.from_dict(rows(24, 1), features=class_features()),
                        validation=datasets.Dataset.from_dict(rows(8, 2), features=class_features()))
    config = away / "run.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": {"path": "acme/tiny-sentiment"}, "student": {"init_from": "teacher", "layers": [1]},
        "data": {"name": "hf", "path": str(data), "max_length": 16},
        "training": {"output_dir": str(away / "out"), "max_steps": 2, "batch_size": 8, "trackers": [],
                     "progress_bar": False},
        "distillation": {"temperature": 2, "hard_label_weight": 0.5}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHONPATH"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([str(venv / "bin" / "distill-toolkit"), "train", str(config)], cwd=away, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout[done.stdout.index("{"):])["global_step"] == 2
    exported = away / "out" / "final"
    assert json.loads((exported / "config.json").read_text())["id2label"] == {str(i): n for i, n in enumerate(CLASSES)}
    assert (exported / "model.safetensors").is_file() and (away / "out" / "config.yaml").is_file()
