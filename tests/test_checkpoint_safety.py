"""Checkpoints: safe to load (no pickle), verified before use, and output folders owned by one run (issue 16)."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from distill_toolkit import Callback, CheckpointError, NonFiniteLossError, Trainer
from distill_toolkit.engine.checkpoint import (META_FILE, checkpoint_problems, latest_checkpoint,
                                               newest_intact_checkpoint, resolve_resume)
from distill_toolkit.engine.export import NonFiniteWeightsError
from distill_toolkit.engine.manifest import MANIFEST, MARKER, seal
from distill_toolkit.engine.run_dir import (RESUMABLE_FIELDS, RUN_FILE, OutputDirError, fingerprint,
                                            run_config)
from distill_toolkit.engine.state_io import load_tree, save_tree

from helpers import ToyTask, collate, final_weights, tiny_bert, toy_distillation, toy_training


def _configs(out, **kw):
    base = dict(max_steps=6, save_every_steps=3, save_total_limit=5)
    return toy_training(out, **{**base, **kw}), toy_distillation(matches=toy_distillation().matches[:1])


def _trainer(out, callbacks=(), trainer_cls=Trainer, **kw):
    training, distillation = _configs(out, **kw)
    return trainer_cls(tiny_bert(2, 32, seed=2, dropout=0.1), training, distillation, ToyTask(40),
                       teacher=tiny_bert(4, 48, seed=1), collate_fn=collate, callbacks=list(callbacks))


def _record(out, **kw):
    config = run_config(*_configs(out, **kw))
    return {"fingerprint": fingerprint(config), "config": config}


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        trainer.should_stop = step >= self.step


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 3 and 6, and its uninterrupted final weights."""
    out = tmp_path_factory.mktemp("toy") / "run"
    _trainer(out).train()
    return out


@pytest.fixture
def run_copy(toy_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    return out


@pytest.fixture(scope="module")
def accelerator(toy_run):
    return Accelerator(cpu=True)


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ---- 1. safe resume -----------------------------------------------------------------------

def test_a_checkpoint_holds_only_safetensors_and_json(toy_run):
    step = toy_run / "checkpoints" / "step_6"
    assert _checkpoint_files(step) == [MARKER, MANIFEST, META_FILE, "config.yaml", "model.safetensors",
                                       "optimizer.safetensors", "rng_state_0.safetensors", "student/config.json",
                                       "student/student.json", "trainer_state.json"]  # student/: for export
    assert not list(toy_run.rglob("*.pkl"))
    meta = json.loads((step / META_FILE).read_text())
    assert meta["scheduler"]["last_epoch"] == 6 and meta["engine"] == "torch"
    rng = load_tree(step / "rng_state_0.safetensors")
    assert set(rng) >= {"python", "numpy", "torch"} and rng["torch"].dtype == torch.uint8


def test_state_round_trips_exactly_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    save_tree(state, tmp_path / "o.safetensors", "optimizer")
    back = load_tree(tmp_path / "o.safetensors")
    assert back["param_groups"] == state["param_groups"]  # tuples (betas) and int keys come back as such
    for index, moments in state["state"].items():
        for name, value in moments.items():
            assert torch.equal(back["state"][index][name], value)
    with pytest.raises(TypeError, match="optimizer.x: a object cannot be stored without pickle"):
        save_tree({"x": object()}, tmp_path / "bad.safetensors", "optimizer")


class _Plant:
    """Unpickling this creates ``target``: the proof that a file was unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("name", ["random_states_0.pkl", "custom_checkpoint_0.pkl", "pytorch_model/x.pkl"])
@pytest.mark.parametrize("resealed", [False, True], ids=["as_dropped", "manifest_rewritten"])
def test_a_crafted_pickle_refuses_resume_and_is_never_loaded(run_copy, tmp_path, name, resealed):
    sentinel = tmp_path / "pwned"
    step = run_copy / "checkpoints" / "step_6"
    (step / name).parent.mkdir(exist_ok=True)
    (step / name).write_bytes(pickle.dumps(_Plant(str(sentinel))))
    if resealed:  # an attacker who also rewrote MANIFEST.json and COMPLETE
        seal(step)
    with pytest.raises(CheckpointError, match=rf"{name}: a pickle file"):
        _trainer(run_copy, resume_from=str(step)).train()
    assert not sentinel.exists()


def test_resume_unpickles_nothing(run_copy, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint file was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    result = _trainer(run_copy, resume_from=str(run_copy / "checkpoints" / "step_3")).train()
    assert result["global_step"] == 6


# ---- 2. integrity -------------------------------------------------------------------------

def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        path.unlink()


STEP6_FILES = [MARKER, MANIFEST, META_FILE, "model.safetensors", "optimizer.safetensors", "rng_state_0.safetensors",
               "trainer_state.json"]


@pytest.mark.parametrize("how", ["truncated", "flipped", "missing"])
@pytest.mark.parametrize("name", STEP6_FILES)
def test_a_damaged_file_is_named_and_latest_falls_back(run_copy, accelerator, caplog, name, how):
    step6 = run_copy / "checkpoints" / "step_6"
    assert name in _checkpoint_files(step6)  # the list above is what a checkpoint holds
    _damage(step6 / name, how)
    run = _record(run_copy)
    with pytest.raises(CheckpointError, match=name):  # an explicit path is refused, naming the file
        resolve_resume(accelerator, str(step6), str(run_copy), run)
    with caplog.at_level("WARNING"):
        chosen = resolve_resume(accelerator, "latest", str(run_copy), run)
    assert chosen == run_copy / "checkpoints" / "step_3"
    assert "step_6" in caplog.text and name in caplog.text and "newest intact" in caplog.text


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damage_is_described(run_copy, how):
    step6 = run_copy / "checkpoints" / "step_6"
    _damage(step6 / "model.safetensors", how)
    expected = {"truncated": "model.safetensors: truncated", "flipped": "same size, different SHA-256"}[how]
    assert any(expected in p for p in checkpoint_problems(step6))


@pytest.mark.parametrize("extra", ["notes.txt", "pytorch_model/zero_pp_rank_9.pt"])
def test_an_unexpected_file_is_refused(run_copy, accelerator, extra):
    step6 = run_copy / "checkpoints" / "step_6"
    (step6 / extra).parent.mkdir(exist_ok=True)
    (step6 / extra).write_text("x")
    with pytest.raises(CheckpointError, match=rf"{extra}: unexpected file"):
        resolve_resume(accelerator, str(step6), str(run_copy), _record(run_copy))


def test_no_intact_checkpoint_is_refused_with_latest(run_copy, accelerator):
    for step in ("step_3", "step_6"):
        _damage(run_copy / "checkpoints" / step / "model.safetensors", "flipped")
    with pytest.raises(CheckpointError, match=r"no checkpoint .* is usable.*step_6: model.safetensors.*overwrite"):
        resolve_resume(accelerator, "latest", str(run_copy), _record(run_copy))


def test_fallback_resume_is_exact(toy_run, tmp_path):
    """A run stopped at step 5 whose newest checkpoint (step_4) is damaged resumes from step_2, exactly."""
    out = tmp_path / "run"
    _trainer(out, save_every_steps=2, callbacks=[StopAt(5)]).train()  # checkpoints at 2 and 4, stopped at 5
    _damage(out / "checkpoints" / "step_4" / "optimizer.safetensors", "flipped")
    result = _trainer(out, save_every_steps=2, resume_from="latest").train()
    assert result["global_step"] == 6
    whole, resumed = final_weights(toy_run), final_weights(out)
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_resume_mid_epoch_with_accumulation_is_exact(tmp_path):
    """Accumulation counter, schedule and RNG streams come back: 2 micro-batches a step, stopped at 3, resumed at 2."""
    kw = dict(gradient_accumulation_steps=2, batch_size=4, save_every_steps=2, max_steps=5)
    _trainer(tmp_path / "whole", **kw).train()
    _trainer(tmp_path / "split", callbacks=[StopAt(3)], **kw).train()
    result = _trainer(tmp_path / "split", resume_from="latest", **kw).train()
    assert result["global_step"] == 5
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_non_finite_loss_names_the_newest_intact_checkpoint(tmp_path):
    class Poison(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 4:
                with torch.no_grad():
                    trainer.accelerator.unwrap_model(trainer.module).student.classifier.weight.fill_(float("nan"))

    class DamagingTrainer(Trainer):
        def save_checkpoint(self):
            path = super().save_checkpoint()
            if self.state.global_step == 4:
                _damage(path / "model.safetensors", "truncated")
            return path

    trainer = _trainer(tmp_path / "run", callbacks=[Poison()], trainer_cls=DamagingTrainer, save_every_steps=2,
                       max_steps=10)
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*newest intact checkpoint: \S*step_2\b"):
        trainer.train()
    assert latest_checkpoint(str(tmp_path / "run")).name == "step_4"  # complete, but damaged
    assert newest_intact_checkpoint(str(tmp_path / "run")).name == "step_2"


def test_export_refuses_non_finite_weights(tmp_path):
    class Poison(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == trainer.total_steps:  # after the last step: no loss sees it, only the export
                with torch.no_grad():
                    trainer.accelerator.unwrap_model(trainer.module).student.classifier.bias[0] = float("inf")

    with pytest.raises(NonFiniteWeightsError, match=r"classifier\.bias \(1 of 2 values\)"):
        _trainer(tmp_path / "run", callbacks=[Poison()], save_every_steps=None).train()
    assert not (tmp_path / "run" / "final").exists()


# ---- 3. output folders are owned by one run -------------------------------------------------

def test_run_json_records_the_fingerprint(toy_run):
    record = json.loads((toy_run / RUN_FILE).read_text())
    assert record["fingerprint"] == _record(toy_run)["fingerprint"]
    assert "learning_rate" in record["config"]["training"] and "max_steps" not in record["config"]["training"]


def test_resumable_fields_leave_the_fingerprint_alone(tmp_path):
    base = _record(tmp_path)["fingerprint"]
    changed = dict(max_steps=9, save_every_steps=2, resume_from="latest", progress_bar=True, trackers=["tensorboard"],
                   run_name="x", log_every_steps=5, save_total_limit=1)
    assert set(changed) <= set(RESUMABLE_FIELDS)
    assert _record(tmp_path, **changed)["fingerprint"] == base
    assert _record(tmp_path / "elsewhere")["fingerprint"] == base  # a moved folder still resumes
    assert _record(tmp_path, learning_rate=2e-3)["fingerprint"] != base


def test_another_runs_folder_is_refused_naming_the_fields(run_copy):
    with pytest.raises(OutputDirError, match=r"another run.*training\.learning_rate: 0\.001 there, 0\.002 in this run"
                                             r".*training\.overwrite: true.*--overwrite.*new training\.output_dir"):
        _trainer(run_copy, learning_rate=2e-3).train()
    with pytest.raises(OutputDirError, match="another run"):  # even when asked to resume
        _trainer(run_copy, learning_rate=2e-3, resume_from="latest").train()


def test_checkpoints_without_run_json_are_refused(run_copy):
    (run_copy / RUN_FILE).unlink()
    with pytest.raises(OutputDirError, match=r"holds checkpoints/step_3, checkpoints/step_6, final but no run\.json"):
        _trainer(run_copy, resume_from="latest").train()


def test_a_finished_run_is_not_restarted_by_accident(run_copy):
    with pytest.raises(OutputDirError, match=r"already holds this run's .*final.*resume_from: latest.*overwrite"):
        _trainer(run_copy).train()


def test_same_run_resumes_with_more_steps(run_copy, capsys):
    result = _trainer(run_copy, resume_from="latest", max_steps=8).train()
    assert result["global_step"] == 8
    out = capsys.readouterr().out
    assert "resumed from" in out and "step_6" in out


def test_latest_skips_another_runs_checkpoint(run_copy, accelerator, tmp_path):
    other = _record(run_copy, learning_rate=2e-3)
    with pytest.raises(CheckpointError, match=r"step_6: checkpoint\.json: written by another run.*learning_rate"):
        resolve_resume(accelerator, "latest", str(run_copy), other)
    with pytest.raises(CheckpointError, match=r"written by another run .*learning_rate"):
        resolve_resume(accelerator, str(run_copy / "checkpoints" / "step_3"), str(run_copy), other)


def test_overwrite_replaces_the_old_run(run_copy):
    old = json.loads((run_copy / RUN_FILE).read_text())["fingerprint"]
    (run_copy / "checkpoints" / "step_6" / "junk.pkl").write_bytes(b"x")
    result = _trainer(run_copy, learning_rate=2e-3, overwrite=True, save_every_steps=4).train()
    assert result["global_step"] == 6
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step_4"]
    assert json.loads((run_copy / RUN_FILE).read_text())["fingerprint"] != old


def test_overwrite_with_resume_latest_is_refused(run_copy):
    with pytest.raises(OutputDirError, match="overwrite.*resume_from: latest"):
        _trainer(run_copy, overwrite=True, resume_from="latest").train()
    assert (run_copy / "final").is_dir()  # nothing removed


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_ranks_agree_on_the_fallback_and_on_a_refusal(tmp_path):
    """2 DDP ranks: a damaged file of rank 1 sends both back to step_3; a refused folder stops both, no hang."""
    from test_distributed import accelerate_launch, ok

    out = tmp_path / "run"
    ok(accelerate_launch("ddp.yaml", out, "--save-every", "3"))  # 8 steps: step_3, step_6, final
    assert not list(out.rglob("*.pkl"))
    _damage(out / "checkpoints" / "step_6" / "rng_state_1.safetensors", "flipped")
    resumed = ok(accelerate_launch("ddp.yaml", out, "--save-every", "3", "--resume", "--max-steps", "10"))
    assert resumed.output.count("resumed from") == 1 and "step_3 at step 3" in resumed.output
    assert "rng_state_1.safetensors" in resumed.output  # the warning names the damaged file
    refused = accelerate_launch("ddp.yaml", out, "--save-every", "3")  # no --resume: every rank refuses
    assert refused.returncode != 0 and "already holds this run's" in refused.output
    assert refused.seconds < 90
