"""Building teachers and students: from a folder, a Hub model ID, the fetched MiniLM, or a teacher's layers."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import HFValidationError, validate_repo_id
from packaging.version import Version
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, PreTrainedModel)

from distill_toolkit.config import ConfigError
from distill_toolkit.data.sources import minilm_dir
from distill_toolkit.features import find_blocks, unwrap

BUILTIN_MINILM = "builtin:minilm"
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "auto": "auto"}
_DTYPE_KEYWORD = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


class LabelsFromValues(list):
    """Label names read from the data's values (sorted): their order is the data's choice of none, so a
    model's saved label names in another order win (the names themselves must agree)."""


def is_hub_id(path: str) -> bool:
    """Whether ``path`` reads as a Hugging Face Hub model ID (``name`` or ``org/name``), not a file path."""
    if path.startswith((".", "/", "~")) or "\\" in path:
        return False
    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def resolve_model_path(path: str) -> str:
    """Expand ``builtin:minilm`` to the fetched all-MiniLM-L6-v2 folder; return a folder or a Hub model
    ID (``org/name``, resolved by ``from_pretrained``) as it is; refuse a path that is neither."""
    if path == BUILTIN_MINILM:
        return str(minilm_dir())
    if not Path(path).is_dir() and not is_hub_id(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist. Fix: point `path` at a folder written by "
                                f"save_pretrained, a Hub model ID (org/name), or use {BUILTIN_MINILM!r}")
    return path


def torch_dtype(name: Optional[str]):
    """The dtype a model section's ``dtype`` names (``None``: float32, the trained student's master weights)."""
    return _DTYPES[name] if name is not None else torch.float32


def hub_kwargs(revision: Optional[str] = None, trust_remote_code: bool = False) -> dict:
    """The ``from_pretrained`` keywords of a model section (``revision`` only when set)."""
    return {**({"revision": revision} if revision else {}), "trust_remote_code": bool(trust_remote_code)}


def _from_hub(load: Callable, path: str, where: str, revision: Optional[str] = None):
    """``load(path)``, with a Hub ID or folder that cannot be read turned into a :class:`ConfigError` naming
    ``where.path`` (or ``where.trust_remote_code``) and both fixes: a local folder, or a populated cache."""
    try:
        return load(path)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if Path(path).is_dir():
            raise ConfigError(f"{where}.path", f"cannot load a model from folder {path!r} ({reason})",
                              "point it at a folder written by save_pretrained (config.json and weights)") from err
        offline = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache " \
                  f"({hub_constants.HF_HUB_CACHE})" if hub_constants.HF_HUB_OFFLINE else reason
        at = f" at revision {revision!r}" if revision else ""
        raise ConfigError(f"{where}.path", f"{path!r} is not a local folder, and the Hub model{at} could not be "
                          f"resolved: {offline}", "point `path` at a local folder written by save_pretrained, or "
                          f"populate the cache once while online (`hf download {path}`, or copy a Hugging Face cache "
                          "into HF_HOME) and run with HF_HUB_OFFLINE=1") from err
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ConfigError(f"{where}.trust_remote_code", f"{path!r} needs its own code from the Hub to load",
                          "read that code, then set `trust_remote_code: true` in the model section") from err


def saved_label_names(config) -> Optional[list[str]]:
    """The label names a saved config carries, or None when they are Transformers' defaults (``LABEL_i``)."""
    names = [str(config.id2label[i]) for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    return names if names and not all(_DEFAULT_LABEL.match(n) for n in names) else None


def _label_config(config, labels: Optional[Sequence[str]], overrides: dict, where: str) -> None:
    """Size ``config``'s head for ``labels`` (names from the data), refusing a disagreement with the
    saved config or the section's ``config: {num_labels: ...}``."""
    if labels is None:
        return
    order_free = isinstance(labels, LabelsFromValues)
    labels = [str(n) for n in labels]
    wanted = overrides.get("num_labels")
    if wanted is not None and wanted != len(labels):
        raise ConfigError(f"{where}.config.num_labels", f"is {wanted} but the data has {len(labels)} labels "
                          f"({', '.join(labels)})", "remove num_labels (it is read from the data) or fix the data")
    saved = saved_label_names(config)
    if saved is not None and len(saved) == len(labels) and all(_DEFAULT_LABEL.match(n) for n in labels):
        labels = saved  # the data gives ids only; the model names them
    if saved is not None and order_free and sorted(saved) == sorted(labels):
        labels = saved  # the data's names in the model's order
    if saved is not None and saved != labels:
        problem = (f"the model was trained for {len(saved)} labels ({', '.join(saved)}) but the data has "
                   f"{len(labels)} ({', '.join(labels)})" if len(saved) != len(labels) else
                   f"the model's label names {saved} differ from the data's {labels}")
        raise ConfigError(f"{where}.path", problem, "use a model trained on these labels, fix the data's label "
                          "column (or its ClassLabel names), or start from a model without a trained head")
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {n: i for i, n in enumerate(labels)}


def _resolve(path: str, where: str) -> str:
    try:
        return resolve_model_path(path)
    except FileNotFoundError as err:
        raise ConfigError(f"{where}.path", str(err).split(". Fix: ")[0], str(err).split(". Fix: ")[-1]) from err


def agree_label_names(teacher: Optional[nn.Module], student: Optional[nn.Module],
                      labels: Optional[Sequence[str]]) -> Optional[list[str]]:
    """The run's label names once teacher and student are loaded (each already checked against the data):
    the teacher's (or student's) names where the data gave ids only. Two trained heads whose label maps
    differ are a :class:`ConfigError` naming ``student.path``; a student head without names (a new head,
    ``LABEL_i``) takes the teacher's."""
    if labels is None:
        return None
    named = {role: saved_label_names(unwrap(model).config) for role, model in (("teacher", teacher),
             ("student", student)) if model is not None and getattr(unwrap(model), "config", None) is not None}
    t, s = named.get("teacher"), named.get("student")
    if t is not None and s is not None and t != s:
        raise ConfigError("student.path", f"the student's label map {dict(enumerate(s))} differs from the teacher's "
                          f"{dict(enumerate(t))}", "use a student trained on the teacher's labels (same names, same "
                          "order), or a base model or `init_from: teacher` (a new head takes the teacher's labels)")
    names = t or s or [str(n) for n in labels]
    for model in (teacher, student):
        config = getattr(unwrap(model), "config", None) if model is not None else None
        if config is not None and len(names) == getattr(config, "num_labels", -1):
            config.id2label, config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    return names


def load_pretrained(auto_class, path: str, *, labels: Optional[Sequence[str]] = None,
                    attn_implementation: Optional[str] = None, config_overrides: Optional[dict] = None,
                    where: str = "model", check_config: Optional[Callable] = None, revision: Optional[str] = None,
                    dtype: Optional[str] = None, trust_remote_code: bool = False) -> PreTrainedModel:
    """``auto_class.from_pretrained`` on a folder, a Hub model ID or ``builtin:minilm``, with config overrides.

    A Hub ID loads at ``revision`` (default ``main``), from the Hugging Face cache when the user set
    ``HF_HUB_OFFLINE=1`` (the process environment is never changed here); one that cannot be
    resolved is a :class:`ConfigError` naming both fixes. ``dtype`` is a name (``float32``, the
    default, ``bfloat16``, ``float16`` or ``auto`` for the saved dtype); ``trust_remote_code`` runs
    the repository's own code (off by default). With ``labels`` (the data's label names) the head
    is sized for them; a saved head or saved label names that disagree raise a
    :class:`ConfigError` naming ``where`` and the fix; ``check_config(config)`` may refuse the saved
    config first (e.g. a head of another task).
    """
    path = _resolve(path, where)
    hub, overrides = hub_kwargs(revision, trust_remote_code), dict(config_overrides or {})
    config = _from_hub(lambda p: AutoConfig.from_pretrained(p, **hub, **overrides), path, where, revision)
    if check_config is not None:
        check_config(config)
    _label_config(config, labels, overrides, where)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    kwargs.update(hub, **{_DTYPE_KEYWORD: torch_dtype(dtype)})
    try:
        return _from_hub(lambda p: auto_class.from_pretrained(p, config=config, **kwargs), path, where, revision)
    except RuntimeError as err:
        if "mismatch" not in str(err):
            raise
        raise ConfigError(f"{where}.path", f"the checkpoint's head does not fit the data's {config.num_labels} "
                          "labels (its weights have another shape)", "use a model trained on these labels, or a "
                          "base model without a trained head") from err


def build_from_config(auto_class, path: str, *, labels: Optional[Sequence[str]] = None,
                      config_overrides: Optional[dict] = None, attn_implementation: Optional[str] = None,
                      where: str = "student", revision: Optional[str] = None, dtype: Optional[str] = None,
                      trust_remote_code: bool = False) -> PreTrainedModel:
    """A randomly initialised model with the architecture of ``path`` changed by ``config_overrides``.

    Only the config is read from ``path`` (a folder or a Hub ID, see :func:`load_pretrained`). Seed
    first (the CLI does, with ``training.seed``), so a distilled run and its no-teacher baseline
    start from the same weights.
    """
    overrides, hub = dict(config_overrides or {}), hub_kwargs(revision, trust_remote_code)
    path = _resolve(path, where)
    config = _from_hub(lambda p: AutoConfig.from_pretrained(p, **hub), path, where, revision)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"{where}.config.{key}", f"{type(config).__name__} has no such field",
                              "use one of its fields, e.g. num_hidden_layers, hidden_size, intermediate_size, "
                              "num_attention_heads")
        setattr(config, key, value)
    heads = getattr(config, "num_attention_heads", None)
    if heads and config.hidden_size % heads:
        raise ConfigError(f"{where}.config", f"hidden_size {config.hidden_size} is not a multiple of "
                          f"num_attention_heads {heads}", "pick a head count that divides it (e.g. 12 for 312)")
    _label_config(config, labels, {k: v for k, v in overrides.items() if k == "num_labels"}, where)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    dtype = torch_dtype(dtype)
    kwargs.update({_DTYPE_KEYWORD: dtype} if dtype != "auto" else {}, trust_remote_code=bool(trust_remote_code))
    return auto_class.from_config(config, **kwargs)


def load_classifier(path: str, num_labels: int = 2, attn_implementation: Optional[str] = None,
                    config_overrides: Optional[dict] = None) -> PreTrainedModel:
    """A sequence classifier from a local folder; a new head of ``num_labels`` unless one is saved there."""
    return load_pretrained(AutoModelForSequenceClassification, path, attn_implementation=attn_implementation,
                           config_overrides={"num_labels": num_labels, **(config_overrides or {})})


def load_token_classifier(path: str, num_labels: int, attn_implementation: Optional[str] = None,
                          config_overrides: Optional[dict] = None) -> PreTrainedModel:
    """A token classifier (e.g. for NER) from a local folder; the head is new unless saved there."""
    return load_pretrained(AutoModelForTokenClassification, path, attn_implementation=attn_implementation,
                           config_overrides={"num_labels": num_labels, **(config_overrides or {})})


def load_tokenizer(path: str, revision: Optional[str] = None, trust_remote_code: bool = False,
                   where: str = "model"):
    """The tokenizer saved at ``path``: a folder, a Hub model ID (at ``revision``) or ``builtin:minilm``."""
    hub = hub_kwargs(revision, trust_remote_code)
    return _from_hub(lambda p: AutoTokenizer.from_pretrained(p, **hub), _resolve(path, where), where, revision)


def student_from_teacher(teacher: nn.Module, layers: list[int], config_overrides: Optional[dict] = None) -> nn.Module:
    """A shallower copy of ``teacher`` keeping the blocks listed in ``layers`` (0-based), in order.

    Embeddings, pooler and head are copied; the student's ``num_hidden_layers`` is
    ``len(layers)``. This is the usual initialisation of a "T3"-style student (e.g. blocks
    1, 3, 5 of a 6-block teacher).
    """
    teacher = unwrap(teacher)
    _, blocks = find_blocks(teacher)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"student.layers: {bad} out of range; the teacher has {len(blocks)} blocks "
                         f"(0..{len(blocks) - 1}). Fix: pick indices in that range")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)
    student = type(teacher)(config)
    state = teacher.state_dict()
    block_prefix, _ = find_blocks(student)
    renamed = {}
    for key, value in state.items():
        if key.startswith(block_prefix + "."):
            index, rest = key[len(block_prefix) + 1:].split(".", 1)
            if int(index) not in layers:
                continue
            key = f"{block_prefix}.{layers.index(int(index))}.{rest}"
        renamed[key] = value
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise RuntimeError(f"copying teacher layers failed: missing {missing}, unexpected {unexpected}")
    return student


def random_student(path: str, config_overrides: Optional[dict] = None, num_labels: int = 2,
                   seed: Optional[int] = None, attn_implementation: Optional[str] = None) -> PreTrainedModel:
    """A randomly initialised sequence classifier shaped like ``path`` changed by ``config_overrides``
    (the "T4-tiny"-style student); with ``seed``, its weights depend on the seed alone."""
    if seed is not None:
        torch.manual_seed(seed)
    return build_from_config(AutoModelForSequenceClassification, path,
                             labels=[f"LABEL_{i}" for i in range(num_labels)], config_overrides=config_overrides,
                             attn_implementation=attn_implementation)


def load_causal_lm(path: str, attn_implementation: Optional[str] = None,
                   config_overrides: Optional[dict] = None) -> PreTrainedModel:
    """A causal LM (``AutoModelForCausalLM``: Llama, GPT-2, ...) from a local folder."""
    return load_pretrained(AutoModelForCausalLM, path, attn_implementation=attn_implementation,
                           config_overrides=config_overrides)


class GGUFError(ValueError):
    """A GGUF file that cannot be read as a causal LM."""


def load_gguf_causal_lm(gguf_path: Union[str, Path]):
    """``(model, tokenizer)`` from a GGUF file, dequantised to a float32 Hugging Face model.

    The GGUF-loaded object cannot ``save_pretrained``; the model returned here is rebuilt from its
    config and state dict, so it can (and can be exported as a distilled student's base).
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise GGUFError(f"GGUF file {gguf_path} not found. Fix: pass the path of a .gguf file "
                        "(distill_toolkit.data.sources.smollm2_gguf() fetches SmolLM2-135M)")
    try:
        loaded, info = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                            output_loading_info=True)
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # Transformers would fill them with random weights and carry on
            raise GGUFError(f"{gguf_path} lacks {len(missing)} of the model's tensors (e.g. {missing[:3]}), so they "
                            "would be random. Fix: re-fetch the file (delete its cache folder); a partial or "
                            "truncated download looks like this")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except GGUFError:
        raise
    except ImportError as err:
        raise GGUFError(f"reading {gguf_path} needs the `gguf` package. Fix: pip install gguf") from err
    except Exception as err:  # the GGUF reader raises many kinds of errors on damaged files
        raise GGUFError(f"cannot read {gguf_path} as a GGUF causal LM ({type(err).__name__}: {err}). Fix: re-fetch "
                        "the file (delete its cache folder) or check that it is a GGUF model file") from err
    model = type(loaded)(loaded.config)
    model.load_state_dict(loaded.state_dict())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
