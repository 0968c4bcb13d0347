"""`distill-toolkit export` (issue 5): any checkpoint, verified by its manifest, becomes a student that plain
transformers loads (safetensors, config, tokenizer), with a model card and the run's config.yaml; so do the
training-time exports final/ and best/."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertForSequenceClassification, GPT2LMHeadModel

from distill_toolkit import DistillationConfig, Trainer
from distill_toolkit.cli import main
from distill_toolkit.engine.checkpoint import CheckpointError
from distill_toolkit.engine.export import NonFiniteWeightsError, export_checkpoint
from distill_toolkit.engine.manifest import MANIFEST, MARKER, seal
from distill_toolkit.engine.run_info import read_config_yaml

from helpers import ToyTask, collate, tiny_bert, toy_distillation, toy_training
from lm_helpers import VOCAB as LM_VOCAB
from lm_helpers import tiny_gpt2, tiny_tokenizer
from test_cli import _tokenizer


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def _tensors(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _same_weights(model, reference: dict) -> bool:
    state = model.state_dict()
    return all(torch.equal(state[k], v) for k, v in reference.items())


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """A finished 6-step BERT run with a tokenizer, evaluation, checkpoints at steps 3 and 6, best/ and final/."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = _tokenizer(root / "tokenizer")
    out = root / "run"
    Trainer(tiny_bert(2, 32, seed=2), toy_training(out, save_every_steps=3, save_total_limit=5, eval_every_steps=3),
            toy_distillation(), ToyTask(48), teacher=tiny_bert(4, 48, seed=1), eval_data=ToyTask(16, seed=4),
            collate_fn=collate, tokenizer=tokenizer).train()
    return out


def test_cli_export_of_the_last_checkpoint_equals_final(bert_run, tmp_path):
    run = _cli("export", bert_run / "checkpoints" / "step_6", tmp_path / "student")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])  # DeepSpeed's import may print a line first
    assert summary["step"] == 6 and summary["loadable_by_transformers"]
    student = BertForSequenceClassification.from_pretrained(tmp_path / "student")  # plain transformers
    assert _same_weights(student, _tensors(bert_run / "final"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert tokenizer("good movie")["input_ids"] == AutoTokenizer.from_pretrained(bert_run / "final")(
        "good movie")["input_ids"]
    assert {"README.md", "config.yaml", "config.json", "model.safetensors", "tokenizer_config.json"} <= set(
        summary["files"])
    assert (tmp_path / "student" / "config.yaml").read_text() == (bert_run / "config.yaml").read_text()


def test_the_model_card_says_teacher_data_recipe_metrics_and_commands(bert_run, tmp_path):
    export_checkpoint(bert_run / "checkpoints" / "step_6", tmp_path / "student",
                      export_command="distill-toolkit export RUN OUT")
    card = (tmp_path / "student" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    for needle in ("- teacher:", "- data:", "## Recipe", "temperature: `2.0`", "hard_label_weight: `0.5`",
                   "training.learning_rate: `0.001`", "## Metrics", "| eval (step 6) | accuracy |",
                   "| train (step 6) | loss |", "## How it was made", "distill-toolkit export RUN OUT",
                   "BertForSequenceClassification.from_pretrained", "torch "):
        assert needle in card, needle
    _, info = read_config_yaml(bert_run / "config.yaml")
    assert info["command"] in card  # the command that trained it


def test_training_exports_carry_a_card_and_the_config(bert_run):
    for name in ("final", "best"):
        card = (bert_run / name / "README.md").read_text()
        assert "## Metrics" in card and "| eval | accuracy |" in card and "## Recipe" in card
        assert (bert_run / name / "config.yaml").read_text() == (bert_run / "config.yaml").read_text()
        BertForSequenceClassification.from_pretrained(bert_run / name)


def test_an_earlier_checkpoint_exports_its_own_weights(bert_run, tmp_path):
    export_checkpoint(bert_run / "checkpoints" / "step_3", tmp_path / "s3")
    student = BertForSequenceClassification.from_pretrained(tmp_path / "s3")
    saved = {k[len("student."):]: v for k, v in _tensors(bert_run / "checkpoints" / "step_3").items()
             if k.startswith("student.")}
    assert _same_weights(student, saved)
    assert not _same_weights(student, _tensors(bert_run / "final"))
    assert "to step 3" in (tmp_path / "s3" / "README.md").read_text()


def test_a_run_folder_exports_its_newest_intact_checkpoint(bert_run, tmp_path):
    assert export_checkpoint(bert_run, tmp_path / "s")["step"] == 6


def test_a_damaged_checkpoint_is_refused_and_nothing_is_written(bert_run, tmp_path):
    damaged = tmp_path / "step_6"
    shutil.copytree(bert_run / "checkpoints" / "step_6", damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(data))
    run = _cli("export", damaged, tmp_path / "out")
    assert run.returncode == 2
    assert "model.safetensors: content changed" in run.stderr and MANIFEST in run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_an_unfinished_checkpoint_is_refused(bert_run, tmp_path):
    partial = tmp_path / "step_6"
    shutil.copytree(bert_run / "checkpoints" / "step_6", partial)
    (partial / MARKER).unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        export_checkpoint(partial, tmp_path / "out")


def test_a_non_empty_out_dir_needs_overwrite(bert_run, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    assert main(["export", str(bert_run), str(tmp_path / "out")]) == 2
    assert (tmp_path / "out" / "mine.txt").is_file()
    assert main(["export", str(bert_run), str(tmp_path / "out"), "--overwrite"]) == 0
    assert not (tmp_path / "out" / "mine.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_a_checkpoint_without_student_files_takes_them_from_final(bert_run, tmp_path):
    """Checkpoints written before student/ existed: the run's final/ says which model and tokenizer."""
    run = tmp_path / "run"
    shutil.copytree(bert_run, run)
    checkpoint = run / "checkpoints" / "step_3"
    shutil.rmtree(checkpoint / "student")
    (checkpoint / "config.yaml").unlink()
    (checkpoint / MARKER).unlink()
    seal(checkpoint)  # as an older version sealed it
    export_checkpoint(checkpoint, tmp_path / "s3")
    student = BertForSequenceClassification.from_pretrained(tmp_path / "s3")
    saved = {k[len("student."):]: v for k, v in _tensors(checkpoint).items() if k.startswith("student.")}
    assert _same_weights(student, saved)
    assert (tmp_path / "s3" / "tokenizer_config.json").is_file()
    assert (tmp_path / "s3" / "config.yaml").read_text() == (run / "config.yaml").read_text()


def test_non_finite_weights_are_refused(bert_run, tmp_path):
    from safetensors.torch import save_file

    broken = tmp_path / "step_6"
    shutil.copytree(bert_run / "checkpoints" / "step_6", broken)
    state = _tensors(broken)
    name = next(k for k in state if k.startswith("student.") and state[k].is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    (broken / MARKER).unlink()
    seal(broken)
    with pytest.raises(NonFiniteWeightsError, match=name[len("student."):]):
        export_checkpoint(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- a causal LM with tied embeddings -----------------------------------------------------

class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.items = [torch.randint(4, LM_VOCAB, (8,), generator=g).tolist() for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _lm_collate(seqs):
    ids = torch.tensor(seqs)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_a_tied_causal_lm_exports_with_its_generation_config(tmp_path):
    out = tmp_path / "run"
    student = tiny_gpt2(2, 32, seed=2)
    assert student.lm_head.weight.data_ptr() == student.transformer.wte.weight.data_ptr()
    Trainer(student, toy_training(out, max_steps=3, save_every_steps=3, batch_size=4),
            DistillationConfig(strategy="causal_lm", kd_loss="forward_kl"), Tokens(),
            teacher=tiny_gpt2(3, 48, seed=1), collate_fn=_lm_collate, tokenizer=tiny_tokenizer()).train()
    checkpoint = out / "checkpoints" / "step_3"
    assert "student.lm_head.weight" not in _tensors(checkpoint)  # stored once, as the embedding
    summary = export_checkpoint(checkpoint, tmp_path / "lm")
    assert "generation_config.json" in summary["files"]
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "lm")
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert _same_weights(model, _tensors(out / "final"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lm")
    ids = tokenizer("the cat sat", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


# ---- DeepSpeed: the engine's own files are not read; the gathered student is ---------------

@pytest.mark.distributed
@pytest.mark.slow
def test_a_zero3_checkpoint_exports_the_gathered_student(tmp_path):
    """2 CPU ranks under launch/zero3.yaml: the student is partitioned, its checkpoint still exports whole."""
    from test_distributed import accelerate_launch, ok

    out = tmp_path / "run"
    ok(accelerate_launch("zero3.yaml", out, "--save-every", "4", "--max-steps", "4"))
    checkpoint = out / "checkpoints" / "step_4"
    assert json.loads((checkpoint / "checkpoint.json").read_text())["engine"] == "deepspeed"
    assert (checkpoint / "student" / "model.safetensors").is_file()
    summary = export_checkpoint(checkpoint, tmp_path / "student")
    assert summary["step"] == 4 and summary["loadable_by_transformers"]
    student = BertForSequenceClassification.from_pretrained(tmp_path / "student")
    assert _same_weights(student, _tensors(out / "final"))
    assert "Processes: 2." in (tmp_path / "student" / "README.md").read_text()


# ---- a student that is not a transformers model -------------------------------------------

def test_a_custom_module_student_exports_its_tensors(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from bigru import BiGRUClassifier, bigru_adaptor

    from helpers import VOCAB

    out = tmp_path / "run"
    Trainer(BiGRUClassifier(VOCAB, embed_dim=16, hidden_size=12), toy_training(out, max_steps=2, save_every_steps=2),
            DistillationConfig(temperature=2.0), ToyTask(16), teacher=tiny_bert(2, 48, seed=1), collate_fn=collate,
            student_adaptor=bigru_adaptor).train()
    checkpoint = out / "checkpoints" / "step_2"
    assert json.loads((checkpoint / "student" / "student.json").read_text())["class"] == "bigru.BiGRUClassifier"
    summary = export_checkpoint(checkpoint, tmp_path / "gru")
    assert not summary["loadable_by_transformers"]
    assert set(summary["files"]) == {"README.md", "config.yaml", "model.safetensors"}
    exported, final = _tensors(tmp_path / "gru"), _tensors(out / "final")
    assert set(exported) == set(final) and all(torch.equal(exported[k], final[k]) for k in final)
    fresh = BiGRUClassifier(VOCAB, embed_dim=16, hidden_size=12)
    fresh.load_state_dict(exported)
    card = (tmp_path / "gru" / "README.md").read_text()
    assert "from bigru import BiGRUClassifier" in card and "load_file(" in card and "AutoModel" not in card
