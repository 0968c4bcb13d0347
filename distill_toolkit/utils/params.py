"""Parameter counts and a per-module parameter table (after TextBrewer's
``display_parameters``).

Tied (shared) parameters are counted once: the first name under which a tensor is
met owns it, later names show 0 and say which name they are tied to. Embedding
matrices are counted like any other parameter. Buffers (e.g. BatchNorm running
statistics) are not parameters and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Union

import torch

__all__ = ["count_parameters", "display_parameters"]

ModelLike = Union[torch.nn.Module, Mapping[str, torch.Tensor]]
_MB = 1024 * 1024


def _numel(t: torch.Tensor) -> int:
    # DeepSpeed ZeRO-3 leaves an empty local shard and keeps the full size in ds_numel.
    return int(getattr(t, "ds_numel", t.numel()))


def _identity(t: torch.Tensor):
    ptr = t.data_ptr() if t.device.type != "meta" else 0
    # Weights tied by sharing storage (not the Parameter object) share data_ptr too.
    return ("ptr", ptr, t.dtype, _numel(t)) if ptr else ("obj", id(t))


def _named_tensors(model: ModelLike) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(model, torch.nn.Module):
        yield from model.named_parameters(remove_duplicate=False)
    elif isinstance(model, Mapping):
        for name, value in model.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Value of {name!r} is a {type(value).__name__}, not a tensor; "
                                "pass a torch.nn.Module or a state dict of tensors.")
            yield name, value
    else:
        raise TypeError(f"Expected a torch.nn.Module or a dict of tensors, got "
                        f"{type(model).__name__}.")


def _unique(model: ModelLike) -> Iterator[tuple[str, torch.Tensor, str | None]]:
    """Yield ``(name, tensor, tied_to)``; ``tied_to`` names the first owner of a tensor
    already seen under another name, else None."""
    owners: dict = {}
    for name, tensor in _named_tensors(model):
        key = _identity(tensor)
        if key in owners:
            yield name, tensor, owners[key]
        else:
            owners[key] = name
            yield name, tensor, None


def count_parameters(model: ModelLike, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``, tied parameters counted once, embeddings
    included.

    Args:
        model: a module, or a state dict (then every tensor counts as a parameter).
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(_numel(t) for _, t, tied in _unique(model)
               if tied is None and (not trainable_only or t.requires_grad))


@dataclass
class _Node:
    name: str
    params: int = 0
    bytes: int = 0
    note: str = ""
    children: dict[str, "_Node"] = field(default_factory=dict)


def _build_tree(model: ModelLike) -> _Node:
    root = _Node("model")
    for name, tensor, tied in _unique(model):
        n = 0 if tied else _numel(tensor)
        size = n * tensor.element_size()
        node = root
        node.params += n
        node.bytes += size
        for part in name.split("."):
            node = node.children.setdefault(part, _Node(part))
            node.params += n
            node.bytes += size
        if tied:
            node.note = f"(tied to {tied})"
    return root


def _rows(node: _Node, depth: int, max_level: int | None) -> Iterator[tuple[int, _Node]]:
    yield depth, node
    if max_level is None or depth < max_level:
        for child in node.children.values():
            yield from _rows(child, depth + 1, max_level)


def display_parameters(model: ModelLike, max_level: int | None = None) -> str:
    """A table of parameter counts and memory per module, like TextBrewer's
    ``display_parameters``.

    One row per module and parameter tensor, indented by depth: the name, the number
    of parameters, their share of the total and their size in MB (from each tensor's
    dtype, so a bf16 model shows half the MB of an fp32 one). Tied parameters count
    once (the later name shows 0 and ``(tied to <name>)``). A last line gives the
    total and the trainable count.

    Args:
        model: a module, or a state dict.
        max_level: deepest level shown; 0 is the whole model, 1 its direct children,
            and so on. ``None`` shows every level down to the parameter tensors.

    Returns:
        The table as a string (print it).
    """
    if max_level is not None and max_level < 0:
        raise ValueError(f"max_level must be >= 0 or None, got {max_level}")
    root = _build_tree(model)
    total = root.params
    rows = []
    for depth, node in _rows(root, 0, max_level):
        label = "  " * depth + node.name + (f" {node.note}" if node.note else "")
        share = f"{node.params / total:.2%}" if total else "-"
        rows.append((label, f"{node.params:,d}", share, f"{node.bytes / _MB:.2f}"))
    header = ("MODULE", "#PARAMS", "RATIO", "MEM(MB)")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    fmt = "{:<%d}  {:>%d}  {:>%d}  {:>%d}" % tuple(widths)
    lines = [fmt.format(*header), "-" * (sum(widths) + 6)]
    lines += [fmt.format(*r) for r in rows]
    trainable = count_parameters(model, trainable_only=True)
    lines.append("-" * (sum(widths) + 6))
    lines.append(f"Total: {total:,d} parameters ({trainable:,d} trainable), "
                 f"{root.bytes / _MB:.2f} MB")
    return "\n".join(lines)
