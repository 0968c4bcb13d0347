"""A shared encoder with one classification head per task, for multi-task students and teachers.

``MultiHeadClassifier(encoder, {"movies": 2, "tweets": 2})`` wraps any Hugging Face encoder
(``AutoModel``: BERT, MiniLM, DistilBERT ...). Its ``forward(..., task=name)`` runs the encoder
once and the head of ``task``; it returns a ``SequenceClassifierOutput`` (loss when ``labels``
are given), so the toolkit reads it like any sequence classifier and its forward hooks find
the encoder's blocks. ``save_pretrained`` / ``from_pretrained`` write and read a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.modeling_outputs import SequenceClassifierOutput

from distill_toolkit.batch import TaskError

_HEADS_FILE = "heads.json"


class MultiHeadClassifier(nn.Module):
    """One encoder, one ``dropout -> linear`` head per task on the first token's (pooled) state.

    Args:
        encoder: a Hugging Face base model returning ``last_hidden_state`` (and, for BERT,
            ``pooler_output``, used when present, as ``BertForSequenceClassification`` does).
        num_labels: ``{task: number of classes}``.
        dropout: dropout before each head (default: the encoder's ``hidden_dropout_prob``).
    """

    def __init__(self, encoder: nn.Module, num_labels: Mapping[str, int], dropout: Optional[float] = None):
        super().__init__()
        if not num_labels:
            raise ValueError("MultiHeadClassifier needs at least one task: num_labels={'task': n_classes}")
        self.encoder = encoder
        self.num_labels = dict(num_labels)
        hidden = encoder.config.hidden_size
        p = getattr(encoder.config, "hidden_dropout_prob", 0.1) if dropout is None else dropout
        self.dropout = nn.Dropout(p)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in self.num_labels.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    @property
    def config(self):
        """The encoder's config (the toolkit reads ``num_hidden_layers`` from it)."""
        return self.encoder.config

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_attn_implementation(self, implementation: str) -> None:
        self.encoder.set_attn_implementation(implementation)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                task: Optional[str] = None, **kwargs) -> SequenceClassifierOutput:
        if task is None:
            if len(self.heads) != 1:
                raise TaskError(f"MultiHeadClassifier has heads {self.tasks}; pass task=<name> (a multi-task batch "
                                "carries it as batch['task'])")
            task = self.tasks[0]
        if task not in self.heads:
            raise TaskError(f"no head for task {task!r}; the model's tasks are {self.tasks}. Fix: give the model a "
                            "head for it (num_labels={...}) or remove that task from the data")
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        logits = self.heads[task](self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=getattr(out, "hidden_states", None),
                                        attentions=getattr(out, "attentions", None))

    # ---- persistence --------------------------------------------------------------------
    def save_pretrained(self, directory, state_dict: Optional[dict] = None, safe_serialization: bool = True,
                        **_) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(directory)
        (directory / _HEADS_FILE).write_text(json.dumps({"num_labels": self.num_labels}, indent=2))
        state = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory, attn_implementation: Optional[str] = None,
                        **config_overrides) -> "MultiHeadClassifier":
        """A model written by :meth:`save_pretrained`."""
        directory = Path(directory)
        heads = json.loads((directory / _HEADS_FILE).read_text())["num_labels"]
        config = AutoConfig.from_pretrained(directory, **config_overrides)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = cls(AutoModel.from_config(config, **kwargs), heads)
        missing, unexpected = model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise RuntimeError(f"loading {directory} failed: missing {missing}, unexpected {unexpected}")
        return model

    @classmethod
    def from_encoder(cls, path: str, num_labels: Mapping[str, int], attn_implementation: Optional[str] = None,
                     **config_overrides) -> "MultiHeadClassifier":
        """Pretrained encoder weights from a local folder (or ``builtin:minilm``), fresh heads."""
        from distill_toolkit.models import resolve_model_path

        path = resolve_model_path(path)
        config = AutoConfig.from_pretrained(path, **config_overrides)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        return cls(AutoModel.from_pretrained(path, config=config, **kwargs), num_labels)
