"""Students of several shapes: random-init students from config (``init_from: random``) and the BiGRU example.

The BiGRU test runs ``examples/bigru_sentiment.py`` end to end on a real slice of the movie-review
data (tens of steps), distilled from a 2-block MiniLM teacher, and checks that the exported
student, read back from safetensors, gives the accuracy the run reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_toolkit.cli import load_experiment
from distill_toolkit.config import ConfigError, ExperimentConfig
from distill_toolkit.models import random_student

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import bigru_sentiment  # noqa: E402

TINY = {"num_hidden_layers": 2, "hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 4}


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_random_student_has_the_asked_shape_and_a_seeded_init():
    a = random_student("builtin:minilm", TINY, seed=3)
    b = random_student("builtin:minilm", TINY, seed=3)
    c = random_student("builtin:minilm", TINY, seed=4)
    assert a.config.num_hidden_layers == 2 and a.config.hidden_size == 48 and a.config.intermediate_size == 96
    assert a.get_input_embeddings().weight.shape == (30522, 48)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))  # KD run and baseline start alike
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c)))


def test_random_student_errors_name_the_field():
    with pytest.raises(ValueError, match=r"student\.config\.hidden_sise"):
        random_student("builtin:minilm", {"hidden_sise": 64})
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        random_student("builtin:minilm", {"hidden_size": 100, "num_attention_heads": 12})


def test_init_from_random_needs_a_path():
    config = ExperimentConfig.from_dict({"student": {"init_from": "random"}, "distillation": {"strategy": "supervised"}})
    with pytest.raises(ConfigError, match=r"student: needs `path`"):
        config.validate()
    bad = ExperimentConfig.from_dict({"student": {"init_from": "scratch", "path": "builtin:minilm"},
                                      "distillation": {"strategy": "supervised"}})
    with pytest.raises(ConfigError, match=r"student\.init_from"):
        bad.validate()


def _bigru_config(tmp_path, *extra) -> ExperimentConfig:
    return load_experiment(str(EXAMPLES / "configs/results/bigru_kd.yaml"), [
        f"training.output_dir={tmp_path / 'bigru'}", "teacher.path=builtin:minilm",
        "teacher.config={num_hidden_layers: 2}", "data.max_examples=400", "data.max_length=32",
        "training.max_steps=20", "training.batch_size=16", "training.trackers=[]", *extra])


def test_bigru_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"student\.config\.hiden_size"):
        bigru_sentiment.student_sizes(_bigru_config(tmp_path, "student.config={hiden_size: 8}"))
    with pytest.raises(ConfigError, match=r"student\.config\.init_embeddings"):
        bigru_sentiment.student_sizes(_bigru_config(tmp_path, "student.config={init_embeddings: glove}"))
    config = _bigru_config(tmp_path, "student.config={embed_dim: 32, init_embeddings: teacher}")
    with pytest.raises(ConfigError, match=r"student\.config\.embed_dim"):
        bigru_sentiment.build_student(config, _tokenizer())


def _tokenizer():
    from distill_toolkit.models import load_tokenizer

    return load_tokenizer("builtin:minilm")


def test_bigru_example_distils_on_a_real_slice_and_exports(tmp_path):
    config = _bigru_config(tmp_path, "student.config={embed_dim: 384, hidden_size: 24, init_embeddings: teacher}")
    result = bigru_sentiment.run(config)
    assert result["global_step"] == 20
    terms = {k for h in result["history"] for k in h}
    assert {"train/kd", "train/hard_label", "train/loss"} <= terms
    assert all(np.isfinite(h["train/loss"]) for h in result["history"])

    # the exported student (safetensors + bigru.json), read back, scores what the run reported on test
    from distill_toolkit.cli import tokenized_data
    from distill_toolkit.data import PaddingCollator

    student = bigru_sentiment.load_student(result["export_dir"])
    assert student.gru.hidden_size == 24
    tokenizer = _tokenizer()
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    test = tokenized_data(config, tokenizer)["test"]
    batch = PaddingCollator(tokenizer)([test[i] for i in range(len(test))])
    labels = batch.pop("labels")
    with torch.no_grad():
        predictions = student(**batch)["logits"].argmax(-1)
    assert float((predictions == labels).float().mean()) == pytest.approx(result["test"]["accuracy"])
