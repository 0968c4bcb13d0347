"""TextBrewer's utilities (``textbrewer.utils``): ``display_parameters``, ``cycle``, ``initializer_builder``.

``display_parameters`` returns ``(table, LayerNode)`` as TextBrewer does; the table is distill_toolkit's
(:func:`distill_toolkit.utils.display_parameters`: parameters only, tied weights counted once and named,
a total line), the tree holds ``[#params, MB]`` per module as TextBrewer's ``LayerNode`` does.
"""

from __future__ import annotations

from typing import Optional

import torch

from distill_toolkit.utils import display_parameters as _table


def cycle(iterable):
    """Iterate ``iterable`` again and again."""
    while True:
        for x in iterable:
            yield x


def initializer_builder(std: float):
    """``module.apply`` function: ``N(0, std)`` weights for Linear and Embedding, zero Linear bias."""
    def init_weights(module):
        """Initialise ``module`` in place."""
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
    return init_weights


class LayerNode:
    """One module of the parameter tree: ``value = [#params, MB]``, children in ``children_name``."""

    def __init__(self, name: str, parent: Optional["LayerNode"] = None, fullname: Optional[str] = None):
        self.name, self.parent, self.fullname = name, parent, fullname
        self.value = [0, 0.0]
        self.children_name: dict = {}

    def __contains__(self, key) -> bool:
        return key in self.children_name

    def __getitem__(self, key) -> "LayerNode":
        return self.children_name[key]

    def __setitem__(self, key, value) -> None:
        self.children_name[key] = value

    def format(self, max_level: Optional[int] = None) -> str:
        """The table of this node's subtree (distill_toolkit's format)."""
        rows, stack = [], [(self, 0)]
        while stack:
            node, level = stack.pop()
            rows.append(f"{'  ' * level}{node.name:<30} {node.value[0]:>15,d} {node.value[1]:>10.2f}")
            if max_level is None or level < max_level:
                stack += [(child, level + 1) for child in reversed(list(node.children_name.values()))]
        return "\n".join(rows)


def _tree(model) -> LayerNode:
    named = dict(model.named_parameters()) if isinstance(model, torch.nn.Module) else model
    root, seen = LayerNode("model", fullname="model"), set()
    for key, value in named.items():
        node, parts = root, key.split(".")
        for i, part in enumerate(parts):
            if part not in node:
                node[part] = LayerNode(part, parent=node, fullname=".".join(parts[: i + 1]))
            node = node[part]
        shared = value.data_ptr() in seen
        seen.add(value.data_ptr())
        size = [0, 0.0] if shared else [value.numel(), value.numel() * value.element_size() / 1024 / 1024]
        while node is not None:
            node.value = [node.value[0] + size[0], node.value[1] + size[1]]
            node = node.parent
    return root


def display_parameters(model, max_level: Optional[int] = None):
    """``(table, LayerNode)``: parameter counts and memory per module of ``model`` (a module or a state dict)."""
    if not isinstance(model, (torch.nn.Module, dict)):
        raise TypeError("display_parameters: model should be a torch.nn.Module or a dict (state dict)")
    return _table(model, max_level=max_level), _tree(model)
