"""Taking what a model produces: the :class:`ModelView` a strategy reads, and features by forward hooks.

- :class:`ModelView` holds logits, the mask of positions that count, the model's own loss,
  labels, the input mask and captured features. Each task reads a Hugging Face output into one
  (:meth:`distill_toolkit.tasks.Task.read_outputs`); :func:`view_from_adaptor` reads a user
  adaptor's dict ``(batch, outputs) -> dict`` instead.
- :class:`FeatureCapture` registers forward hooks on exactly the modules that the
  configured matches read (one hidden state or attention map per match, not all layers),
  so no model code is edited and no ``output_hidden_states`` run is needed.

Feature keys are strings: ``hidden:i`` (``i = 0`` is the embedding output, i.e. the input
of block 0; ``i >= 1`` the output of block ``i - 1``, as Hugging Face numbers
``hidden_states``), ``attention:i`` (attention probabilities of block ``i``), ``query:i`` /
``key:i`` / ``value:i`` (the queries, keys or values of block ``i``'s self-attention, per head:
``(batch, heads, length, head_dim)``) and ``module:NAME`` (the output of the named module, first
element if it returns a tuple).

Queries, keys and values are the outputs of the attention's projection ``Linear`` layers (BERT-style
``query``/``key``/``value``, Llama-style ``q_proj``/``k_proj``/``v_proj``, DistilBERT's ``q_lin`` ...,
T5/MPNet's ``q``/``k``/``v``), ``(batch, length, heads * head_dim)`` split into heads with the model
config's ``num_attention_heads``; keys and values of grouped-query attention (Llama's
``num_key_value_heads``) have that many heads. They are taken before any rotary position embedding.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn


Adaptor = Callable[[Any, Any], dict]
#: feature key of the final hidden states (the input of the output head), for causal-LM KD
HEAD_INPUT = "head_input"

_ATTENTION_NAMES = ("attention", "self_attn", "attn", "self_attention", "SelfAttention")
_LAYER_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")
#: feature kinds read per head from the attention's projections, and the sub-module names that hold them
HEAD_FEATURES = ("query", "key", "value")
_PROJECTION_NAMES = {"query": ("query", "q_proj", "q_lin", "q"), "key": ("key", "k_proj", "k_lin", "k"),
                     "value": ("value", "v_proj", "v_lin", "v")}


class FeatureError(ValueError):
    """A requested feature cannot be taken from the model. The message says which and why."""


@dataclass
class ModelView:
    """What a strategy reads of one model's forward pass."""

    logits: list = field(default_factory=list)  # list of tensors (QA has two: start, end)
    logits_mask: Optional[torch.Tensor] = None  # positions that count, shape logits.shape[:-1]
    loss: Optional[torch.Tensor] = None  # the model's own (hard-label) loss, if it computed one
    labels: Optional[torch.Tensor] = None
    inputs_mask: Optional[torch.Tensor] = None  # attention mask of the inputs (B, L)
    features: dict = field(default_factory=dict)  # feature key -> tensor
    raw: Any = None  # the model's untouched output
    model: Any = None  # the model that produced it (e.g. for its output head)
    task: Optional[str] = None  # the batch's task name (multi-task data), else None


def unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP / DeepSpeed / compile wrappers, and under a ``peft`` (LoRA) wrapper: the Hugging Face
    model itself, its adapter layers in place (so feature names and heads are the model's own)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and type(model).__module__.startswith("peft.") \
                and hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        if isinstance(inner, nn.Module) and inner is not model:
            model = inner
        else:
            return model


def max_positions(model: nn.Module) -> Optional[int]:
    """The longest sequence ``model`` accepts (``max_position_embeddings`` / ``n_positions``), or None."""
    config = getattr(unwrap(model), "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Find the transformer's list of blocks (``encoder.layer``, ``model.layers``, ``h`` ...)."""
    model = unwrap(model)
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        score = (len(module) == expected, name.split(".")[-1] in _LAYER_LIST_NAMES, len(module))
        if best is None or score > best[0]:
            best = (score, name, module)
    if best is None:
        raise FeatureError(
            f"cannot find a list of transformer blocks in {type(model).__name__}; "
            "use feature 'module' with explicit module names, or pass a custom adaptor")
    return best[1], best[2]


def _attention_module(block: nn.Module) -> tuple[str, nn.Module]:
    for name, module in block.named_modules():
        if name and name.split(".")[-1] in _ATTENTION_NAMES:
            return name, module
    raise FeatureError(f"block {type(block).__name__} has no attention sub-module named one of {_ATTENTION_NAMES}")


def _projection_module(block: nn.Module, kind: str, key: str) -> nn.Module:
    """The first sub-module of ``block`` named like the attention's ``kind`` projection (self-attention first)."""
    names = _PROJECTION_NAMES[kind]
    for name, module in block.named_modules():
        if name and name.split(".")[-1] in names:
            return module
    raise FeatureError(f"{key!r}: block {type(block).__name__} has no {kind} projection named one of {names} "
                       "(fused projections such as GPT-2's c_attn are not split). Fix: use feature 'module' with the "
                       "name of the module to read, or pass a custom adaptor")


def head_count(model: nn.Module, kind: str) -> int:
    """How many heads feature ``kind`` (``query``, ``key`` or ``value``) of ``model`` has, from its config:
    ``num_attention_heads`` (or ``n_head`` / ``num_heads``); for keys and values ``num_key_value_heads``
    when the config sets it (grouped-query attention)."""
    config = getattr(unwrap(model), "config", None)
    heads = None
    if kind in ("key", "value"):
        heads = getattr(config, "num_key_value_heads", None)
    for name in ("num_attention_heads", "n_head", "num_heads"):
        heads = heads or getattr(config, name, None)
    if not isinstance(heads, int) or heads < 1:
        raise FeatureError(f"{type(unwrap(model)).__name__} has no config with num_attention_heads, so its {kind} "
                           "vectors cannot be split into heads. Fix: use feature 'module' (the whole projection)")
    return heads


def split_heads(states: torch.Tensor, heads: int, key: str = "feature") -> torch.Tensor:
    """``(batch, length, heads * head_dim)`` -> ``(batch, heads, length, head_dim)``."""
    if states.dim() != 3 or states.shape[-1] % heads:
        raise FeatureError(f"{key}: expected (batch, length, hidden) with hidden divisible by {heads} heads, got "
                           f"{tuple(states.shape)}. Fix: check the model config's num_attention_heads")
    batch, length, width = states.shape
    return states.view(batch, length, heads, width // heads).transpose(1, 2)


def _layer_index(key: str, kind: str) -> int:
    try:
        index = int(key.partition(":")[2])
    except ValueError:
        index = -1
    if index < 0:
        raise FeatureError(f"{key!r}: the layer index must be an integer >= 0, e.g. '{kind}:2'")
    return index


def resolve_feature(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    """Return ``(module, mode)`` whose hook yields feature ``key``; mode is ``pre``, ``post``,
    ``attention`` or ``heads`` (a projection's output, split into heads)."""
    kind, _, arg = key.partition(":")
    model = unwrap(model)
    if kind == "module":
        modules = dict(model.named_modules())
        if not arg or arg not in modules:
            close = [n for n in modules if arg.split(".")[-1] in n][:5]
            raise FeatureError(f"module {arg!r} not found in {type(model).__name__}"
                               + (f"; similar names: {close}" if close else "")
                               + ". Use a name from model.named_modules()")
        return modules[arg], "post"
    if kind == "head_input":  # the final hidden states: the base model's output, which feeds the head
        base = getattr(model, "base_model", model)
        if base is model or getattr(model, "get_output_embeddings", lambda: None)() is None:
            raise FeatureError(f"{type(model).__name__} has no base model + output head; 'head_input' needs a "
                               "Hugging Face model with a language-model head")
        return base, "post"
    if kind not in ("hidden", "attention") + HEAD_FEATURES:
        raise FeatureError(f"unknown feature kind {kind!r} in {key!r}; use hidden:<i>, attention:<i>, query:<i>, "
                           "key:<i>, value:<i> or module:<name>")
    index = _layer_index(key, kind)
    _, blocks = find_blocks(model)
    n = len(blocks)
    if kind == "hidden":
        if index > n:
            raise FeatureError(f"hidden layer {index} is out of range: {type(model).__name__} has {n} blocks, "
                               f"so hidden layers are 0..{n} (0 = embedding output)")
        return (blocks[0], "pre") if index == 0 else (blocks[index - 1], "post")
    if index >= n:
        raise FeatureError(f"{kind} layer {index} is out of range: {type(model).__name__} has {n} blocks, "
                           f"so {kind} layers are 0..{n - 1}")
    if kind in HEAD_FEATURES:
        return _projection_module(blocks[index], kind, key), "heads"
    return _attention_module(blocks[index])[1], "attention"


def ensure_eager_attention(model: nn.Module) -> None:
    """Attention maps exist only with the eager implementation; switch to it if needed."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", "eager") == "eager":
        return
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise FeatureError("attention matches need attention maps: load the model with "
                           "attn_implementation='eager'")
    setter("eager")


class FeatureCapture:
    """Forward hooks that record the requested features of one model.

    Hooks stay registered for the life of the object but record only while
    :attr:`active`; :meth:`collect` hands over what one forward pass produced.
    """

    def __init__(self, model: nn.Module, keys: list[str]):
        self.keys = list(dict.fromkeys(keys))
        self.store: dict[str, torch.Tensor] = {}
        self.active = False
        self._handles = []
        if any(k.startswith("attention:") for k in self.keys):
            ensure_eager_attention(model)
        for key in self.keys:
            module, mode = resolve_feature(model, key)
            if mode == "pre":
                handle = module.register_forward_pre_hook(self._pre_hook(key), with_kwargs=True)
            elif mode == "heads":
                handle = module.register_forward_hook(self._heads_hook(key, head_count(model, key.split(":")[0])))
            else:
                handle = module.register_forward_hook(self._post_hook(key, mode))
            self._handles.append(handle)

    def _pre_hook(self, key):
        def hook(module, args, kwargs):
            if self.active:
                self.store[key] = args[0] if args else kwargs["hidden_states"]
        return hook

    def _heads_hook(self, key, heads: int):
        def hook(module, args, output):
            if self.active:
                self.store[key] = split_heads(output[0] if isinstance(output, tuple) else output, heads, key)
        return hook

    def _post_hook(self, key, mode):
        def hook(module, args, output):
            if not self.active:
                return
            if mode == "attention":
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise FeatureError(f"{key}: the attention module returned no attention weights; load the "
                                       "model with attn_implementation='eager'")
                self.store[key] = weights
            else:
                first = isinstance(output, (tuple, list)) or hasattr(output, "to_tuple")  # HF ModelOutput
                self.store[key] = output[0] if first else output
        return hook

    def collect(self) -> dict[str, torch.Tensor]:
        missing = [k for k in self.keys if k not in self.store]
        if missing:
            raise FeatureError(f"features {missing} were not produced by the forward pass; "
                               "check the layer indices and module names of the matches")
        out, self.store = self.store, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def accepts_task(model) -> bool:
    """Whether ``model.forward`` takes a ``task`` keyword (multi-head models do)."""
    try:
        params = inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):
        return False
    return "task" in params


def view_from_adaptor(result: dict, outputs: Any) -> ModelView:
    """Build a :class:`ModelView` from a TextBrewer-style adaptor dict.

    Recognised keys: ``logits`` (tensor or list), ``logits_mask``, ``losses`` or ``loss``,
    ``labels``, ``inputs_mask``, ``hidden``, ``attention``, ``query``, ``key`` and ``value`` (lists
    indexed by layer, stored as features ``hidden:i``, ``attention:i``, ...; queries, keys and values
    as ``(batch, heads, length, head_dim)``).
    """
    if not isinstance(result, dict):
        raise FeatureError(f"an adaptor must return a dict, got {type(result).__name__}")
    logits = result.get("logits", [])
    logits = list(logits) if isinstance(logits, (list, tuple)) else [logits]
    mask = result.get("logits_mask")
    if isinstance(mask, (list, tuple)):
        mask = mask[0]
    loss = result.get("loss")
    losses = result.get("losses")
    if losses is not None:
        losses = list(losses) if isinstance(losses, (list, tuple)) else [losses]
        loss = sum(x.mean() for x in losses)
    labels = result.get("labels")
    if isinstance(labels, (list, tuple)):
        labels = labels[0]
    view = ModelView(logits=logits, logits_mask=None if mask is None else mask.bool(), loss=loss, labels=labels,
                     inputs_mask=result.get("inputs_mask"), raw=outputs)
    for kind in ("hidden", "attention") + HEAD_FEATURES:
        for i, tensor in enumerate(result.get(kind) or []):
            view.features[f"{kind}:{i}"] = tensor
    return view
