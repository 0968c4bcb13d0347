"""What one rank holds of a model's parameters under any placement (replicated, ZeRO-3, FSDP2).

Used by the distributed tests and ``benchmarks/teacher_memory.py`` to show sharding for real.
"""

from __future__ import annotations

import torch
from torch import nn


def _local(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This rank's piece of ``param`` and the full parameter's element count."""
    if hasattr(param, "ds_tensor"):  # DeepSpeed ZeRO-3
        return param.ds_tensor, param.ds_numel
    if hasattr(param, "to_local"):  # FSDP2 DTensor
        return param.to_local(), param.numel()
    return param, param.numel()


def parameter_shards(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (elements held by this rank, elements of the full parameter)}`` under any placement."""
    if hasattr(model, "module") and isinstance(model.module, nn.Module):  # a DeepSpeed engine or DDP
        model = model.module
    out = {}
    for name, param in model.named_parameters():
        local, full = _local(param)
        out[name] = (local.numel(), full)
    return out


def held_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameter storage this rank holds for ``model`` right now: its shards plus any
    layer gathered for a forward (each storage counted once, whatever views share it)."""
    if hasattr(model, "module") and isinstance(model.module, nn.Module):  # a DeepSpeed engine
        model = model.module
    tensors = []
    for param in model.parameters():
        if hasattr(param, "ds_tensor"):  # ZeRO-3: the shard, and the full tensor while gathered
            tensors += [param.ds_tensor, param.data]
        else:
            tensors.append(param.to_local() if hasattr(param, "to_local") else param)
    for module in model.modules():  # FSDP2: shards stay held while a layer is gathered
        group = getattr(module, "_get_fsdp_state", lambda: None)()
        group = getattr(group, "_fsdp_param_group", None)
        for fsdp_param in getattr(group, "fsdp_params", []):
            tensors.append(fsdp_param._sharded_param_data)
    seen = {}
    for t in tensors:
        if t.device.type == "meta" or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())
