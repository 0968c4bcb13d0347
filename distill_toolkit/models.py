"""Building teachers and students: from a folder, from the fetched MiniLM, or from a teacher's layers."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional, Union

from torch import nn
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          AutoTokenizer, PreTrainedModel)

from distill_toolkit.features import find_blocks, unwrap

BUILTIN_MINILM = "builtin:minilm"


def resolve_model_path(path: str) -> str:
    """Expand ``builtin:minilm`` to the fetched all-MiniLM-L6-v2 folder; check that other paths exist."""
    if path == BUILTIN_MINILM:
        from distill_toolkit.data.sources import minilm_dir

        return str(minilm_dir())
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model folder {path!r} does not exist. Fix: point `path` at a folder written by "
                                f"save_pretrained, or use {BUILTIN_MINILM!r}")
    return path


def _load_offline(auto_class, path: str, attn_implementation: Optional[str], **config_kwargs) -> PreTrainedModel:
    """``auto_class.from_pretrained`` on a local folder (or builtin name), offline, with config overrides."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path, **config_kwargs)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return auto_class.from_pretrained(path, config=config, **kwargs)


def load_classifier(path: str, num_labels: int = 2, attn_implementation: Optional[str] = None,
                    config_overrides: Optional[dict] = None) -> PreTrainedModel:
    """A sequence classifier from a local folder, offline (no hub access)."""
    return _load_offline(AutoModelForSequenceClassification, path, attn_implementation, num_labels=num_labels,
                         **(config_overrides or {}))


def load_token_classifier(path: str, num_labels: int, attn_implementation: Optional[str] = None,
                          config_overrides: Optional[dict] = None) -> PreTrainedModel:
    """A token classifier (e.g. for NER) from a local folder, offline; the head is new unless saved there."""
    return _load_offline(AutoModelForTokenClassification, path, attn_implementation, num_labels=num_labels,
                         **(config_overrides or {}))


def load_tokenizer(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(resolve_model_path(path))


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
    """A randomly initialised classifier with the architecture of ``path``, changed by ``config_overrides``.

    Only the config (and, by the caller, the tokenizer) is read from ``path``; no weights are
    loaded. This is the "T4-tiny"-style student: e.g. ``{"num_hidden_layers": 4, "hidden_size": 312,
    "intermediate_size": 1200}``. With ``seed``, the initial weights depend on it alone, so a
    distilled run and its no-teacher baseline start from the same point.
    """
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = AutoConfig.from_pretrained(resolve_model_path(path), num_labels=num_labels)
    for key, value in (config_overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"student.config.{key}: {type(config).__name__} has no such field. Fix: use one of "
                             "its fields, e.g. num_hidden_layers, hidden_size, intermediate_size, num_attention_heads")
        setattr(config, key, value)
    heads = getattr(config, "num_attention_heads", None)
    if heads and config.hidden_size % heads:
        raise ValueError(f"student.config: hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                         f"{heads}. Fix: pick a head count that divides it (e.g. 12 for 312, 4 or 12 for 192)")
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForSequenceClassification.from_config(config, **kwargs)


def load_causal_lm(path: str, attn_implementation: Optional[str] = None,
                   config_overrides: Optional[dict] = None) -> PreTrainedModel:
    """A causal LM (``AutoModelForCausalLM``: Llama, GPT-2, ...) from a local folder, offline."""
    from transformers import AutoModelForCausalLM

    return _load_offline(AutoModelForCausalLM, path, attn_implementation, **(config_overrides or {}))


class GGUFError(ValueError):
    """A GGUF file that cannot be read as a causal LM."""


def load_gguf_causal_lm(gguf_path: Union[str, Path]):
    """``(model, tokenizer)`` from a GGUF file, dequantised to a float32 Hugging Face model.

    The GGUF-loaded object cannot ``save_pretrained``; the model returned here is rebuilt from its
    config and state dict, so it can (and can be exported as a distilled student's base).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
