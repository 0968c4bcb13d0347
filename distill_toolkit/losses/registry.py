"""Name -> loss-function registry.

Losses are looked up by name from configs (``loss: hidden_mse``), in the style of
torchdistill. Each entry carries a *kind*:

* ``"logits"`` - called as ``fn(logits_S, logits_T, temperature, *, mask=None, ...)``;
* ``"feature"`` - called as ``fn(feature_S, feature_T, mask=None, **match.loss_kwargs)`` on
  intermediate features (hidden states, attention maps, per-head queries/keys/values),
  TextBrewer's ``intermediate_matches`` losses and the MiniLM relations.

Importing :mod:`distill_toolkit.losses` registers the built-in losses.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

LOSS_KINDS: Tuple[str, ...] = ("feature", "logits")

# name -> (function, kind); aliases are ordinary entries pointing at the same function.
_REGISTRY: Dict[str, Tuple[Callable, str]] = {}


class UnknownLossError(KeyError, ValueError):
    """Raised by :func:`get` / :func:`loss_kind` for a name that is not registered.

    It is both a ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad config value),
    so either ``except`` clause catches it.
    """

    def __init__(self, name: str, known: List[str]):
        self.name = name
        self.known = known
        message = (
            f"unknown loss {name!r}. Known losses: {', '.join(known)}. "
            "Use one of these names, or add yours with "
            "distill_toolkit.losses.register_loss(name, fn, kind=...)."
        )
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0])


def register_loss(
    name: str,
    fn: Optional[Callable] = None,
    kind: str = "feature",
    overwrite: bool = False,
):
    """Register ``fn`` under ``name`` so configs can refer to it.

    Args:
        name: the name used in configs.
        fn: the loss function. If omitted, returns a decorator::

                @register_loss("my_l1", kind="feature")
                def my_l1(feature_S, feature_T, mask=None): ...

        kind: ``"feature"`` (intermediate features, ``fn(S, T, mask=None)``) or ``"logits"``
            (``fn(logits_S, logits_T, temperature, *, mask=None)``).
        overwrite: allow replacing an existing entry (including a built-in).

    Returns:
        ``fn`` (or the decorator when ``fn`` is None).
    """
    if fn is None:
        return lambda f: register_loss(name, f, kind=kind, overwrite=overwrite)
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_loss: name must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise TypeError(f"register_loss({name!r}): fn must be callable, got {type(fn).__name__}.")
    if kind not in LOSS_KINDS:
        raise ValueError(
            f"register_loss({name!r}): kind must be one of {LOSS_KINDS}, got {kind!r}."
        )
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"register_loss: a loss named {name!r} is already registered; "
            "pick another name or pass overwrite=True to replace it."
        )
    _REGISTRY[name] = (fn, kind)
    return fn


def _entry(name: str) -> Tuple[Callable, str]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: unhashable name such as a list
        raise UnknownLossError(name, sorted(_REGISTRY)) from None


def get(name: str) -> Callable:
    """Return the loss function registered under ``name`` (raises :class:`UnknownLossError`)."""
    return _entry(name)[0]


def loss_kind(name: str) -> str:
    """Return ``"feature"`` or ``"logits"`` for a registered loss name."""
    return _entry(name)[1]


def available_losses(kind: Optional[str] = None) -> List[str]:
    """Sorted names of the registered losses (aliases included), optionally of one ``kind``."""
    if kind is not None and kind not in LOSS_KINDS:
        raise ValueError(f"available_losses: kind must be one of {LOSS_KINDS} or None, got {kind!r}.")
    return sorted(n for n, (_, k) in _REGISTRY.items() if kind is None or k == kind)
