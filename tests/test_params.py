"""Tests for distill_toolkit.utils.params."""

import pytest
import torch
from torch import nn

from distill_toolkit.utils import count_parameters, display_parameters


class Tiny(nn.Module):
    def __init__(self, tie: bool = True):
        super().__init__()
        self.embed = nn.Embedding(100, 16)                       # 1600
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.norm = nn.LayerNorm(16)                            # 32
        self.head = nn.Linear(16, 100, bias=False)              # 1600, tied
        if tie:
            self.head.weight = self.embed.weight


def _row(table: str, name: str) -> list[str]:
    """Fields of the table row whose first field is ``name`` (indentation ignored)."""
    for line in table.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return fields
    raise AssertionError(f"no row {name!r} in\n{table}")


def test_count_matches_numel_sum_untied():
    model = Tiny(tie=False)
    expected = sum(p.numel() for p in model.parameters())
    assert expected == 1600 + (16 * 32 + 32) + (32 * 16 + 16) + 32 + 1600
    assert count_parameters(model) == expected


def test_tied_weights_counted_once():
    model = Tiny(tie=True)
    assert count_parameters(model) == 1600 + 544 + 528 + 32
    table = display_parameters(model)
    assert _row(table, "model")[1] == f"{2704:,d}"
    assert "tied to embed.weight" in table
    assert _row(table, "head")[1] == "0"
    # Tying by sharing storage (not the Parameter object) is detected too.
    other = Tiny(tie=False)
    other.head.weight = nn.Parameter(other.embed.weight.data)
    assert count_parameters(other) == 2704


def test_trainable_only():
    model = Tiny(tie=False)
    for p in model.embed.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 1600
    assert "(2,704 trainable)" in display_parameters(model)


def test_max_level_truncates():
    model = Tiny()
    full = display_parameters(model)
    top = display_parameters(model, max_level=1)
    only_model = display_parameters(model, max_level=0)
    assert "weight" in full and "0" in [line.split()[0] for line in full.splitlines() if line.strip()]
    assert "weight" not in top.replace("embed.weight", "")
    names = [line.split()[0] for line in top.splitlines()[2:-2]]
    assert names == ["model", "embed", "encoder", "norm", "head"]
    assert [line.split()[0] for line in only_model.splitlines()[2:-2]] == ["model"]
    with pytest.raises(ValueError):
        display_parameters(model, max_level=-1)


def test_indentation_by_depth():
    lines = display_parameters(Tiny()).splitlines()
    row = next(line for line in lines if line.split()[:1] == ["encoder"])
    leaf = next(line for line in lines if line.lstrip().startswith("bias"))
    assert len(row) - len(row.lstrip()) == 2
    assert len(leaf) - len(leaf.lstrip()) == 6        # model > encoder > 0 > bias


def test_megabytes_follow_dtype():
    model = nn.Linear(1024, 1024)                       # 1,049,600 params
    mb32 = float(_row(display_parameters(model), "model")[3])
    assert mb32 == pytest.approx(1_049_600 * 4 / 2**20, abs=0.01)
    mb16 = float(_row(display_parameters(model.to(torch.bfloat16)), "model")[3])
    assert mb16 == pytest.approx(mb32 / 2, abs=0.01)
    assert "4.00 MB" in display_parameters(nn.Linear(1024, 1024, bias=False))


def test_agrees_with_textbrewer_on_bert():
    from textbrewer import utils as textbrewer_utils  # the test extra
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=24)
    model = BertForMaskedLM(config)                    # decoder tied to word embeddings
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    params = dict(model.named_parameters(remove_duplicate=False))
    _, node = textbrewer_utils.display_parameters(params)
    assert count_parameters(model) == node.value[0]
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(params) == node.value[0]
