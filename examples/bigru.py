"""A small bidirectional-GRU text classifier, and the adaptor that lets it be a student.

The toolkit reads Hugging Face heads out of the box; any other ``nn.Module`` is trained
through an *adaptor* ``(batch, outputs) -> dict`` (TextBrewer's convention). This file is
the worked example, reused by the tests and by later examples::

    import sys; sys.path.insert(0, "examples")
    from bigru import BiGRUClassifier, bigru_adaptor

    student = BiGRUClassifier(vocab_size=tokenizer.vocab_size, num_labels=2)
    Trainer(student, training, distillation, data, teacher=bert_teacher,
            collate_fn=collate, student_adaptor=bigru_adaptor).train()

The adaptor exposes the GRU's per-token outputs as feature ``hidden:0`` of the student, so a
match such as ``Match(student_layer=0, teacher_layer=4, projection="linear")`` pulls them
towards a transformer teacher's hidden states (the projection maps ``2 * hidden_size`` to the
teacher's width). The student must see the same tokens as the teacher for such a match:
the GRU's outputs are position-aligned with the input ids, padded positions are zero.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiGRUClassifier(nn.Module):
    """Embedding -> bidirectional GRU -> linear head, on the final hidden states of both directions.

    Called like a Hugging Face model, ``model(input_ids=..., attention_mask=..., labels=...)``;
    returns a dict:

    - ``logits``: ``(batch, num_labels)``
    - ``loss``: cross-entropy against ``labels`` (``None`` without labels)
    - ``hidden_states``: per-token GRU outputs ``(batch, length, 2 * hidden_size)``, zero at padding

    Padding is handled with packed sequences, so padded positions change nothing (the
    ``attention_mask`` gives each row's length; it must be right-padded).
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, hidden_size: int = 32, num_labels: int = 2,
                 num_layers: int = 1, dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        self.num_labels = num_labels
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.gru = nn.GRU(embed_dim, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> dict:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.embedding(input_ids), lengths, batch_first=True, enforce_sorted=False)
        outputs, final = self.gru(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=input_ids.size(1))
        # final: (num_layers * 2, batch, hidden); the last layer's forward and backward states
        pooled = torch.cat([final[-2], final[-1]], dim=-1)
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"logits": logits, "loss": loss, "hidden_states": outputs}


def bigru_adaptor(batch: dict, outputs: dict) -> dict:
    """Map a :class:`BiGRUClassifier`'s outputs to the toolkit's adaptor keys.

    ``hidden`` is a list indexed by layer: the GRU outputs become student feature ``hidden:0``.
    ``inputs_mask`` is the padding mask the feature losses use.
    """
    return {
        "logits": outputs["logits"],
        "loss": outputs["loss"],
        "hidden": [outputs["hidden_states"]],
        "inputs_mask": batch.get("attention_mask"),
        "labels": batch.get("labels"),
    }
