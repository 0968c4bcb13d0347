"""Weights and optimiser state of a checkpoint, per engine, written and read without unpickling.

- single process and DDP (``torch``): ``model.safetensors`` (the unwrapped student module, so a
  DDP checkpoint also loads in one process) and ``optimizer.safetensors`` (tensors as tensors,
  the rest as JSON metadata, see :mod:`~distill_toolkit.engine.state_io`);
- DeepSpeed: the engine's own ``save_checkpoint`` files under ``pytorch_model/``; they are read
  back with ``torch.load(weights_only=True)`` and only the few DeepSpeed classes its files name
  are allowed (DeepSpeed's own loader would unpickle anything);
- FSDP: Accelerate's per-rank files (``torch.save``, read with ``weights_only=True``), not
  torch.distributed.checkpoint, whose metadata file is a pickle.

Accelerate's ``save_state``/``load_state`` are not used: they pickle the RNG states and
registered objects (``random_states_*.pkl``, ``custom_checkpoint_*.pkl``).
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, save
from safetensors.torch import load_model

from distill_toolkit.engine.manifest import CheckpointError
from distill_toolkit.engine.state_io import load_tree, save_tree

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
DEEPSPEED_TAG = "pytorch_model"
# DeepSpeed checkpoint engines whose files are torch.save archives (they differ in how they write)
_TORCH_FILE_ENGINES = ("TorchCheckpointEngine", "DecoupledCheckpointEngine", "FastCheckpointEngine")


def engine_kind(accelerator: Accelerator) -> str:
    """``deepspeed``, ``fsdp`` or ``torch`` (one process or DDP): who owns the weight files."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    return "torch"


def save_weights(accelerator: Accelerator, folder: Path, model, optimizer) -> None:
    """Write the prepared ``model`` and ``optimizer`` into ``folder``; collective (every rank calls it)."""
    kind = engine_kind(accelerator)
    if kind == "deepspeed":
        model.save_checkpoint(str(folder), DEEPSPEED_TAG)
    elif kind == "fsdp":
        from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

        plugin = accelerator.state.fsdp_plugin
        save_fsdp_model(plugin, accelerator, model, str(folder), 0, **_no_dcp(save_fsdp_model))
        save_fsdp_optimizer(plugin, accelerator, optimizer, model, str(folder), 0, **_no_dcp(save_fsdp_optimizer))
    else:
        weights = accelerator.get_state_dict(model)  # the unwrapped module's state
        save(weights, folder / MODEL_FILE, safe_serialization=True)  # main process only; tied weights once
        if accelerator.is_main_process:
            save_tree(optimizer.state_dict(), folder / OPTIMIZER_FILE, "optimizer")


def load_weights(accelerator: Accelerator, folder: Path, model, optimizer) -> None:
    """Load what :func:`save_weights` wrote into the prepared ``model`` and ``optimizer``; collective."""
    kind = engine_kind(accelerator)
    if kind == "deepspeed":
        with _weights_only_deepspeed(model):
            loaded, _ = model.load_checkpoint(str(folder), DEEPSPEED_TAG)
        if loaded is None:
            raise CheckpointError(f"training.resume_from: DeepSpeed found no checkpoint `{DEEPSPEED_TAG}` in {folder}. "
                                  "Fix: resume from a checkpoint written under DeepSpeed")
    elif kind == "fsdp":
        from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

        plugin = accelerator.state.fsdp_plugin
        load_fsdp_model(plugin, accelerator, model, str(folder), 0, **_no_dcp(load_fsdp_model))
        load_fsdp_optimizer(plugin, accelerator, optimizer, model, str(folder), 0, **_no_dcp(load_fsdp_optimizer))
    else:
        device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)  # safetensors: no "cpu:0"
        load_model(accelerator.unwrap_model(model), str(folder / MODEL_FILE), strict=True, device=device)
        optimizer.load_state_dict(load_tree(folder / OPTIMIZER_FILE))


def _no_dcp(function) -> dict:
    """``use_dcp=False`` for Accelerate's FSDP savers: per-rank files instead of DCP's pickled metadata."""
    if "use_dcp" in inspect.signature(function).parameters:
        return {"use_dcp": False}
    raise CheckpointError("FSDP checkpoints: this Accelerate writes sharded states with torch.distributed.checkpoint, "
                          "whose metadata is a pickle. Fix: upgrade accelerate (a version whose save_fsdp_model "
                          "takes use_dcp), or set fsdp_state_dict_type: FULL_STATE_DICT in the launch config")


def _deepspeed_safe_globals() -> list:
    """The DeepSpeed classes a ZeRO checkpoint names: loss scalers and the ZeRO stage enum, values only."""
    found = []
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16 import loss_scaler
        found += [getattr(loss_scaler, n) for n in ("LossScaler", "DynamicLossScaler", "LossScalerBase")
                  if hasattr(loss_scaler, n)]
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.zero.config import ZeroStageEnum
        found.append(ZeroStageEnum)
    with contextlib.suppress(ImportError):
        from deepspeed.utils.tensor_fragment import fragment_address
        found.append(fragment_address)
    return found


@contextlib.contextmanager
def _weights_only_deepspeed(engine):
    """Make ``engine.load_checkpoint`` read its files with ``torch.load(weights_only=True)``.

    DeepSpeed's torch checkpoint engine calls ``torch.load(weights_only=False)``; here its
    ``load`` is replaced for the duration of the call by one that only rebuilds tensors, plain
    containers and the DeepSpeed value classes of :func:`_deepspeed_safe_globals`.
    """
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if type(checkpoint_engine).__name__ not in _TORCH_FILE_ENGINES:  # another file format: DeepSpeed's own reader
        yield
        return
    allowed = _deepspeed_safe_globals()

    def load(path, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    checkpoint_engine.load = load
    try:
        yield
    finally:
        del checkpoint_engine.load  # back to the class's method
