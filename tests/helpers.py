"""Small real models and data for tests: built from configs, no downloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 64


def tiny_bert(layers: int = 4, hidden: int = 32, heads: int = 4, num_labels: int = 2, seed: int = 0,
              dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=hidden * 2, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        attn_implementation="eager")
    return BertForSequenceClassification(config)


class ToyTask(torch.utils.data.Dataset):
    """Sequences of random tokens; label 1 when token 7 occurs more often than token 9. Variable lengths."""

    def __init__(self, n: int = 64, seed: int = 0, max_len: int = 12):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(4, max_len + 1, (1,), generator=g))
            ids = torch.randint(5, VOCAB, (length,), generator=g)
            label = int((ids == 7).sum() > (ids == 9).sum()) if seed % 2 == 0 else int(ids[1] > VOCAB // 2)
            self.items.append({"input_ids": ids.tolist(), "labels": label})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(examples: list[dict]) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[row, :len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e["labels"] for e in examples])}


def wandb_records(run_file) -> list:
    """Every protobuf ``Record`` of an offline W&B run, read from its ``.wandb`` file.

    The file is a 7-byte header (``:W&B``, magic, version) followed by LevelDB-style log
    records (crc32, little-endian length, type) in 32 KiB blocks, each a protobuf Record.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, payload, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        payload = chunk if kind in (1, 2) else payload + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
    return records


def finished_wandb_records(run_dir, timeout: float = 60.0) -> list:
    """The records of the offline W&B run in ``run_dir`` once its log is complete (it ends with an ``exit``
    record). ``run.finish()`` returns before W&B's service process has written the log, so it is polled."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while True:
        files = list(Path(run_dir).glob("*.wandb"))
        records = wandb_records(files[0]) if files else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"the W&B log in {run_dir} has no exit record after {timeout} s"
        time.sleep(0.2)


def read_wandb_history(run_dir) -> list[dict]:
    """History rows of the finished offline W&B run in ``run_dir``."""
    import json

    return [{(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
            for record in finished_wandb_records(run_dir) if record.WhichOneof("record_type") == "history"]


def toy_training(output_dir, **kw):
    """A short, quiet TrainingConfig for the toy task (6 steps of 8, no trackers); ``kw`` overrides."""
    from distill_toolkit import TrainingConfig

    base = dict(output_dir=str(output_dir), max_steps=6, batch_size=8, learning_rate=1e-3, trackers=[],
                progress_bar=False, eval_every_epochs=None, seed=0)
    return TrainingConfig(**{**base, **kw})


def toy_distillation(**kw):
    """KD at T=2 with half-weight labels, one projected hidden match and one attention match; ``kw`` overrides."""
    from distill_toolkit import DistillationConfig, Match

    base = dict(temperature=2.0, hard_label_weight=0.5,
                matches=[Match(teacher_layer=4, student_layer=2, projection="linear"),
                         Match(teacher_layer=2, student_layer=1, feature="attention", loss="attention_mse")])
    return DistillationConfig(**{**base, **kw})


def final_weights(run_dir) -> dict:
    """The exported student's tensors of a finished run."""
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def load_script(path: Path, name: str):
    """A test script under tests/scripts/ imported as a module (its ``run(argv)`` is the in-process reference)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
