"""Export of the trained student: gathered to the main process, written with safetensors.

Two routes lead to the same folder, loadable by plain ``transformers`` (``model.safetensors``,
``config.json``, the tokenizer), with a model card (``README.md``) and the run's ``config.yaml``:

- during training, :func:`export_student` writes ``output_dir/final`` and ``output_dir/best``;
- afterwards, :func:`export_checkpoint` (``distill-toolkit export CHECKPOINT_DIR OUT_DIR``) writes any
  checkpoint, verified against its manifest first.

A checkpoint's weights are the whole trained module (keys ``student.*`` and the strategy's
projections). What else the export needs is kept in the checkpoint by :func:`save_student_files`,
under ``student/``: the files the student's ``save_pretrained`` writes besides its weights (config,
generation config, ``heads.json`` of a multi-head student), its tokenizer, ``student.json`` (the
student's class), and under DeepSpeed or FSDP the gathered student weights (``model.safetensors``),
since the engine's own files cannot be read without its machinery. A checkpoint written before
``student/`` existed takes the config and tokenizer from its run's ``final/`` (or ``best/``) export.

A LoRA student (``student.lora``, a ``peft`` model) is exported as its base model with the adapters
merged in, still a plain ``transformers`` folder, plus ``adapter/`` (peft's adapter files) unless
``student.lora.save_adapter`` is false; its checkpoint's ``student/`` holds the base's config files and
the adapter's ``adapter/adapter_config.json`` (see :mod:`distill_toolkit.lora`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file

from distill_toolkit.engine.checkpoint import META_FILE, STATE_FILE, newest_intact_checkpoint
from distill_toolkit.engine.engine_state import MODEL_FILE, engine_kind
from distill_toolkit.engine.manifest import MANIFEST, MARKER, CheckpointError, manifest_problems
from distill_toolkit.engine.model_card import model_card
from distill_toolkit.engine.run_info import CONFIG_FILE, read_config_yaml
from distill_toolkit.lora import (ADAPTER_DIR, adapter_config, base_model, empty_like, exports_adapter, is_lora,
                                  read_adapter_config, save_adapter_config, save_merged)

PREFIX = "student."
STUDENT_DIR = "student"
STUDENT_INFO = "student.json"
CARD_FILE = "README.md"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")
_NOT_COPIED = (CARD_FILE, CONFIG_FILE, STUDENT_INFO, MANIFEST, MARKER)


class NonFiniteWeightsError(FloatingPointError):
    """The student to export holds NaN or infinite values; the message names the tensors."""


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an infinity, with their counts."""
    bad = []
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad.append(f"{name} ({count} of {value.numel()} values)")
    return bad


def _refuse_non_finite(bad: list[str], directory: Path) -> None:
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(
            f"export to {directory} refused: the student has non-finite weights in {shown}. Training diverged; "
            "nothing was written. Fix: resume from an earlier checkpoint with a lower training.learning_rate or "
            "training.max_grad_norm set")


def _check_finite(accelerator: Accelerator, state: dict, directory: Path) -> None:
    """Raise :class:`NonFiniteWeightsError` on every rank if the main process's ``state`` is not finite."""
    box = [non_finite_tensors(state) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    _refuse_non_finite(box[0], directory)


def student_state_dict(accelerator: Accelerator, module) -> dict:
    """The student's tensors (``student.`` prefix removed), gathered onto the main process (ZeRO-3 / FSDP
    shards included; other ranks may get an empty dict). Collective: every rank calls it."""
    state = accelerator.get_state_dict(module)
    return {k[len(PREFIX):]: v.contiguous() for k, v in (state or {}).items() if k.startswith(PREFIX)}


def _publish(partial: Path, directory: Path) -> None:
    """Move a finished ``.partial`` folder into place, replacing what was there."""
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(partial, directory)


def _fresh_partial(directory: Path) -> Path:
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def export_student(accelerator: Accelerator, module, directory: Path, tokenizer=None,
                   extra_files: Optional[dict] = None) -> Path:
    """Write the student (``save_pretrained`` for Hugging Face models) and its tokenizer to ``directory``.

    ``extra_files`` (``{file name: text}``, e.g. the model card and ``config.yaml``) are written beside
    it. The folder is written beside its final place and renamed into it, so an interrupted export
    never leaves a half-written model behind. A student with NaN or infinite weights is refused with
    :class:`NonFiniteWeightsError` naming the tensors, before anything is written.
    """
    directory = Path(directory)
    student_state = student_state_dict(accelerator, module)  # gathers shards (ZeRO-3 / FSDP) onto the main process
    _check_finite(accelerator, student_state, directory)  # ZeRO-3: only the main process holds the state
    if accelerator.is_main_process:
        student = accelerator.unwrap_model(module).student
        partial = _fresh_partial(directory)
        if is_lora(student):  # the base with the adapters merged in (plain transformers), and adapter/
            missing = save_merged(partial, empty_like(base_model(student)), adapter_config(student), student_state,
                                  exports_adapter(student))
            if missing:
                raise RuntimeError(f"export to {directory}: the LoRA student's state lacks {missing[:5]}")
        elif hasattr(student, "save_pretrained"):
            student.save_pretrained(partial, state_dict=student_state, safe_serialization=True)
        else:
            save_file(student_state, str(partial / MODEL_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        for name, text in (extra_files or {}).items():
            (partial / name).write_text(text, encoding="utf-8")
        _publish(partial, directory)
    accelerator.wait_for_everyone()
    return directory


# ---- what a checkpoint keeps for export ---------------------------------------------------

def _is_weight_file(name: str) -> bool:
    return name.endswith(_WEIGHT_SUFFIXES)


def transformers_class(student) -> Optional[str]:
    """The name of ``student``'s class when it is one of ``transformers``' own models (rebuilt from its config);
    for a LoRA student, its base model's class (the exports hold the merged base)."""
    student = base_model(student)
    cls = type(student)
    is_model = isinstance(student, transformers.PreTrainedModel)
    return cls.__name__ if is_model and getattr(transformers, cls.__name__, None) is cls else None


def card_classes(student) -> dict:
    """``model_class`` / ``custom_class`` of :func:`~distill_toolkit.engine.model_card.model_card` for ``student``:
    its transformers class, or (a module without ``save_pretrained``) its own class to load the tensors into."""
    name = transformers_class(student)
    custom = None if name or hasattr(student, "save_pretrained") else \
        f"{type(student).__module__}.{type(student).__qualname__}"
    return {"model_class": name, "custom_class": custom}


def save_student_files(folder: Path, student, tokenizer=None, weights: Optional[dict] = None) -> Path:
    """Write ``folder/student/``: the student's non-weight ``save_pretrained`` files, its tokenizer, a
    ``student.json`` naming its class, and ``weights`` (the gathered student, for DeepSpeed / FSDP) if given.
    A LoRA student's files are its base model's, with the adapter's config in ``student/adapter/``."""
    target = Path(folder) / STUDENT_DIR
    target.mkdir(parents=True, exist_ok=True)
    if hasattr(student, "save_pretrained"):
        with tempfile.TemporaryDirectory() as tmp:  # the config files without the weights
            base_model(student).save_pretrained(tmp, state_dict={}, safe_serialization=True)
            for path in Path(tmp).iterdir():
                if path.is_file() and not _is_weight_file(path.name):
                    shutil.copy2(path, target / path.name)
    if tokenizer is not None:
        tokenizer.save_pretrained(target)
    cls = type(student)
    info = {"class": f"{cls.__module__}.{cls.__qualname__}", "transformers_class": transformers_class(student),
            "weights": MODEL_FILE if weights is not None else None}
    if is_lora(student):
        save_adapter_config(student, target)
        info.update(lora_adapter=ADAPTER_DIR, save_adapter=exports_adapter(student))
    (target / STUDENT_INFO).write_text(json.dumps(info, indent=1))
    if weights is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(target / MODEL_FILE),
                  metadata={"format": "pt"})
    return target


def checkpoint_extras(accelerator: Accelerator, module, tokenizer=None,
                      files: Optional[dict] = None) -> Callable[[Path], None]:
    """The ``extras`` of :func:`~distill_toolkit.engine.checkpoint.save_checkpoint` for a Trainer's checkpoint:
    :func:`save_student_files` plus ``files`` (``{name: text}``). Collective under DeepSpeed and FSDP,
    where the student is gathered here, so every rank calls it."""
    gathered = student_state_dict(accelerator, module) if engine_kind(accelerator) != "torch" else None
    student = accelerator.unwrap_model(module).student

    def extras(folder: Path) -> None:
        save_student_files(folder, student, tokenizer, gathered)
        for name, text in (files or {}).items():
            (folder / name).write_text(text, encoding="utf-8")

    return extras


# ---- export of a checkpoint ---------------------------------------------------------------

def checkpoint_to_export(path: Path) -> Path:
    """``path`` itself when it is a checkpoint (``step_N``); for a run's ``output_dir``, its newest intact one."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"export: {path} does not exist. Fix: give a checkpoint folder "
                              "(OUTPUT_DIR/checkpoints/step_N) or a run's output_dir")
    if (path / META_FILE).exists() or (path / MARKER).exists() or (path / MANIFEST).exists():
        return path
    if (path / "checkpoints").is_dir():
        newest = newest_intact_checkpoint(str(path))
        if newest is None:
            raise CheckpointError(f"export: {path / 'checkpoints'} holds no intact checkpoint. Fix: give one "
                                  "checkpoint folder, or export the run's final/ folder as it is")
        return newest
    raise CheckpointError(f"export: {path} is neither a checkpoint (no {META_FILE}) nor a run's output_dir (no "
                          "checkpoints/). Fix: give OUTPUT_DIR/checkpoints/step_N or OUTPUT_DIR")


def _verified(checkpoint: Path) -> None:
    if not (checkpoint / MARKER).is_file():
        raise CheckpointError(f"export: {checkpoint} is not a complete checkpoint (no {MARKER} marker; the run "
                              "that wrote it was probably killed mid-save). Fix: export an earlier checkpoint")
    problems = manifest_problems(checkpoint)
    if problems:
        raise CheckpointError(f"export: {checkpoint} does not match its {MANIFEST}: {' | '.join(problems)}. "
                              "Nothing was written. Fix: export an earlier checkpoint, or restore the damaged files")


def _student_source(checkpoint: Path) -> Optional[Path]:
    """Where the student's config and tokenizer files are: the checkpoint's ``student/``, else the run's
    ``final/`` or ``best/`` export (checkpoints written before ``student/`` existed), else None."""
    own = checkpoint / STUDENT_DIR
    if own.is_dir():
        return own
    run_dir = checkpoint.parent.parent
    for name in ("final", "best"):
        if (run_dir / name / "config.json").is_file():
            return run_dir / name
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"export: cannot read {path} ({err}). Fix: export another checkpoint") from err


def _checkpoint_weights(checkpoint: Path, engine: str) -> dict:
    """The student's tensors in ``checkpoint`` (its ``student.`` keys, or the gathered copy under ``student/``)."""
    if engine == "torch":
        return {k[len(PREFIX):]: v for k, v in load_file(str(checkpoint / MODEL_FILE)).items() if k.startswith(PREFIX)}
    gathered = checkpoint / STUDENT_DIR / MODEL_FILE
    if not gathered.is_file():
        raise CheckpointError(f"export: {checkpoint} was written under {engine} without the gathered student "
                              f"({STUDENT_DIR}/{MODEL_FILE}; checkpoints of older versions lack it), and the "
                              f"engine's own files are not read. Fix: export the run's final/ or best/ folder, "
                              "or a checkpoint written by this version")
    return load_file(str(gathered))


def _class_name(source: Optional[Path]) -> Optional[str]:
    """The transformers class to rebuild the student with, from ``student.json`` or (older runs) config.json."""
    if source is None:
        return None
    if (source / STUDENT_INFO).is_file():
        return _read_json(source / STUDENT_INFO).get("transformers_class")
    if (source / "heads.json").is_file() or not (source / "config.json").is_file():
        return None
    names = _read_json(source / "config.json").get("architectures") or [None]
    return names[0] if names[0] and hasattr(transformers, names[0]) else None


def _custom_class(source: Optional[Path]) -> Optional[str]:
    """The recorded class of a student that is not a transformers model and has no ``save_pretrained`` files."""
    if source is None or not (source / STUDENT_INFO).is_file() or (source / "config.json").is_file():
        return None
    return _read_json(source / STUDENT_INFO).get("class")


def _save_transformers(folder: Path, class_name: str, source: Path, weights: dict) -> None:
    """Rebuild the student from its config (no memory for weights: meta device), load ``weights`` as they are
    (dtype kept), tie what the model ties, and ``save_pretrained`` it -- as the training-time export does."""
    config = transformers.AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = getattr(transformers, class_name)(config)
    _, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, param in model.named_parameters() if param.is_meta]
    if unexpected or missing:
        raise CheckpointError(f"export: the checkpoint's student does not match its config ({source / 'config.json'}): "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}. Fix: export the checkpoint "
                              "with the student/ folder written beside it by the same run")
    model.save_pretrained(folder, safe_serialization=True)


def _save_lora(folder: Path, class_name: str, source: Path, weights: dict, adapter) -> None:
    """A LoRA student's checkpoint exported as its base with the adapters merged in (and ``adapter/`` unless the
    run set ``student.lora.save_adapter: false``)."""
    with torch.device("meta"):
        base = getattr(transformers, class_name)(transformers.AutoConfig.from_pretrained(source))
    info = _read_json(source / STUDENT_INFO) if (source / STUDENT_INFO).is_file() else {}
    missing = save_merged(folder, base, adapter, weights, bool(info.get("save_adapter", True)))
    if missing:
        raise CheckpointError(f"export: the checkpoint's LoRA student does not match its config and adapter "
                              f"({source}): missing {missing[:5]}. Fix: export the checkpoint with the student/ "
                              "folder written beside it by the same run")


def _copy_side_files(source: Optional[Path], folder: Path) -> None:
    """The tokenizer and config files of ``source`` that the weights' writer did not write."""
    for path in sorted(source.iterdir()) if source is not None else []:
        if path.is_file() and not _is_weight_file(path.name) and path.name not in _NOT_COPIED \
                and not (folder / path.name).exists():
            shutil.copy2(path, folder / path.name)


def _checkpoint_metrics(state: dict) -> dict:
    """``{split: {name: value}}`` for the model card, from a checkpoint's trainer state."""
    metrics: dict = {}
    last_eval = dict(state.get("last_eval") or {})
    if last_eval:
        metrics[f"eval (step {last_eval.pop('step', '?')})"] = last_eval
    history = state.get("history") or []
    if history:
        metrics[f"train (step {history[-1].get('step', '?')})"] = {k.split("/", 1)[-1]: v for k, v in
                                                                    history[-1].items() if k.startswith("train/")}
    if state.get("best_metric") is not None:
        metrics["best"] = {"metric": state["best_metric"], "step": state.get("best_step")}
    return metrics


def export_checkpoint(path, out_dir, export_command: Optional[str] = None, overwrite: bool = False) -> dict:
    """Export the student of checkpoint ``path`` (or of the newest intact checkpoint of run folder ``path``)
    to ``out_dir``: weights, config and tokenizer loadable by ``transformers``, ``README.md``, ``config.yaml``.

    The checkpoint is verified against its manifest first; nothing is written if it fails, or if the
    student holds NaN or infinite values. ``out_dir`` must be new or empty unless ``overwrite``.
    Returns ``{"export_dir", "checkpoint", "step", "files", "loadable_by_transformers"}``.
    """
    checkpoint = checkpoint_to_export(Path(path))
    _verified(checkpoint)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"export: {out} already holds files. Fix: choose a new folder, or pass --overwrite")
    meta, state = _read_json(checkpoint / META_FILE), _read_json(checkpoint / STATE_FILE)
    weights = _checkpoint_weights(checkpoint, meta.get("engine", "torch"))
    _refuse_non_finite(non_finite_tensors(weights), out)
    source, record = _student_source(checkpoint), checkpoint / CONFIG_FILE
    if not record.is_file():
        record = checkpoint.parent.parent / CONFIG_FILE
    config, info = read_config_yaml(record) if record.is_file() else ({"training": meta.get("run_config") or {}}, {})
    class_name = _class_name(source)
    partial = _fresh_partial(out)
    adapter = read_adapter_config(source) if source is not None and class_name is not None else None
    if adapter is not None:  # a LoRA student: merged into its base
        _save_lora(partial, class_name, source, weights, adapter)
    elif class_name is not None:
        _save_transformers(partial, class_name, source, weights)
    else:  # not one of transformers' models: its tensors as they are, beside its own side files
        save_file({k: v.contiguous() for k, v in weights.items()}, str(partial / MODEL_FILE), metadata={"format": "pt"})
    _copy_side_files(source, partial)
    if record.is_file():
        shutil.copy2(record, partial / CONFIG_FILE)
    card = model_card(config, info, _checkpoint_metrics(state), step=meta.get("step"), export_command=export_command,
                      model_class=class_name, tokenizer=(partial / "tokenizer_config.json").is_file(),
                      custom_class=_custom_class(source) if class_name is None else None)
    (partial / CARD_FILE).write_text(card, encoding="utf-8")
    _publish(partial, out)
    return {"export_dir": str(out), "checkpoint": str(checkpoint), "step": meta.get("step"),
            "files": sorted(p.name for p in out.iterdir()), "loadable_by_transformers": class_name is not None}
