"""Teacher cache: cached == online training, no teacher forward, stale/corrupt caches refused,
killed writes resume, top-k logits (k = vocab equals dense), in-memory mode, unlabelled text."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from distill_toolkit import Callback, DistillationConfig, Match, Trainer, losses
from distill_toolkit.data.cache import (TeacherCache, TeacherCacheCollator, TeacherCacheError, open_teacher_cache,
                                        with_ids)
from distill_toolkit.teachers import build_teacher_cache

from helpers import VOCAB, ToyTask, collate, final_weights, tiny_bert, toy_distillation, toy_training

SCRIPTS = Path(__file__).parent / "scripts"





def _assert_same(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=atol)


def _count_forwards(model):
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """A cache of the toy task for the config of toy_distillation()."""
    path = tmp_path_factory.mktemp("cache") / "toy"
    data = with_ids(ToyTask(48))
    cache = build_teacher_cache(tiny_bert(4, 48, seed=1), data, path, collate_fn=collate,
                                distillation=toy_distillation(),
                                shard_size=16, batch_size=8)
    return path, data, cache


def test_cached_training_equals_online_and_runs_no_teacher(tmp_path, toy_cache):
    path, data, cache = toy_cache
    assert cache.build_stats == {"shards_written": 3, "shards_reused": 0}
    assert sorted(cache.feature_keys) == ["attention:2", "hidden:4"] and len(cache) == 48
    Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "online"), toy_distillation(), data,
            teacher=tiny_bert(4, 48, seed=1), collate_fn=collate).train()
    # the cache given in place of the teacher: no teacher object exists in this run
    trainer = Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "cached"), toy_distillation(), data,
                      teacher=TeacherCache.open(path), collate_fn=collate)
    assert trainer.teachers["teacher"].model is None
    trainer.train()
    _assert_same(final_weights(tmp_path / "online"), final_weights(tmp_path / "cached"))
    # training.teacher_cache with the teacher model: checked against it, but never run
    teacher = tiny_bert(4, 48, seed=1)
    calls = _count_forwards(teacher)
    Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "by_config", teacher_cache=str(path)),
            toy_distillation(), data,
            teacher=teacher, collate_fn=collate).train()
    assert calls[0] == 0
    _assert_same(final_weights(tmp_path / "online"), final_weights(tmp_path / "by_config"))


def test_cache_independent_of_batching_and_padding(toy_cache):
    path, data, cache = toy_cache
    examples = [data[i] for i in (5, 17, 40)]
    batch = TeacherCacheCollator(collate, cache)(examples)
    teacher = tiny_bert(4, 48, seed=1).eval()
    from distill_toolkit.teachers import TeacherRunner

    online = TeacherRunner(teacher, "teacher", ["hidden:4", "attention:2"]).forward(batch)
    cached = batch["teacher_cache"]["teacher"]
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(cached["logits"][0], online.logits[0])
    torch.testing.assert_close(cached["features"]["hidden:4"][mask], online.features["hidden:4"][mask])
    pairs = mask[:, None, :, None] & mask[:, None, None, :]
    att_c, att_o = cached["features"]["attention:2"], online.features["attention:2"]
    torch.testing.assert_close(att_c.masked_select(pairs), att_o.masked_select(pairs))


def test_stale_cache_refused(toy_cache):
    path, data, _ = toy_cache
    cache = TeacherCache.open(path)
    cache.check(teacher=tiny_bert(4, 48, seed=1), data=data, feature_keys=["hidden:4"])  # the right ones pass
    with pytest.raises(TeacherCacheError, match="teacher's weights differ"):
        cache.check(teacher=tiny_bert(4, 48, seed=7))
    other = ToyTask(48)
    other.items[3] = {**other.items[3], "input_ids": [5, 6, 7]}
    with pytest.raises(TeacherCacheError, match=r"1 example\(s\) differ .*ids \[3\]"):
        cache.check(data=with_ids(other))
    with pytest.raises(TeacherCacheError, match="not in the cache"):
        cache.check(data=with_ids(ToyTask(60)))
    with pytest.raises(TeacherCacheError, match=r"features \['hidden:3'\] are needed but not cached"):
        cache.check(feature_keys=["hidden:3"])
    # the Trainer checks the data and the features its strategy needs
    other_matches = toy_distillation(matches=[Match(teacher_layer=3, student_layer=2, projection="linear")])
    with pytest.raises(TeacherCacheError, match="stale teacher cache.*hidden:3.*cache-teacher"):
        Trainer(tiny_bert(2, 32), toy_training(path.parent / "x"), other_matches, data, teacher=cache,
                collate_fn=collate)
    with pytest.raises(TeacherCacheError, match="teacher's weights differ"):
        Trainer(tiny_bert(2, 32), toy_training(path.parent / "y", teacher_cache=str(path)), toy_distillation(), data,
                teacher=tiny_bert(4, 48, seed=7), collate_fn=collate)
    # a build for another teacher at the same path is refused unless overwrite=True
    with pytest.raises(TeacherCacheError, match="already exists.*teacher.*overwrite"):
        build_teacher_cache(tiny_bert(4, 48, seed=7), data, path, collate_fn=collate, distillation=toy_distillation())


def test_stale_tokenizer_refused(tmp_path):
    from transformers import BertTokenizerFast

    def tokenizer(words, name):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
        return BertTokenizerFast.from_pretrained(folder)

    tok_a, tok_b = tokenizer(["a", "b"], "a"), tokenizer(["a", "c"], "b")
    cache = build_teacher_cache(tiny_bert(1, 16), with_ids(ToyTask(8)), tmp_path / "c", collate_fn=collate,
                                tokenizer=tok_a)
    cache.check(tokenizer=tok_a)
    tok_a("a b", truncation=True, max_length=4)  # calling a tokenizer changes its truncation state, not its identity
    cache.check(tokenizer=tok_a)
    with pytest.raises(TeacherCacheError, match="tokenizer differs"):
        open_teacher_cache(tmp_path / "c", tokenizer=tok_b)


def _corrupt_copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupted_or_truncated_cache_refused(tmp_path, toy_cache):
    path, _, _ = toy_cache
    arrow = "shards/shard-00001/data-00000-of-00001.arrow"
    truncated = _corrupt_copy(path, tmp_path / "truncated")
    raw = (truncated / arrow).read_bytes()
    (truncated / arrow).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TeacherCacheError, match=r"corrupted: .*shard-00001.*truncated.*cache-teacher CONFIG.yaml"):
        TeacherCache.open(truncated)
    flipped = _corrupt_copy(path, tmp_path / "flipped")
    raw = bytearray((flipped / arrow).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (flipped / arrow).write_bytes(bytes(raw))
    with pytest.raises(TeacherCacheError, match="does not match its sha256"):
        TeacherCache.open(flipped)
    TeacherCache.open(flipped, verify="size")  # a cheaper check only sees sizes
    edited = _corrupt_copy(path, tmp_path / "edited")
    info = json.loads((edited / "cache_info.json").read_text())
    info["fingerprint"]["teacher"] = "0" * 64
    (edited / "cache_info.json").write_text(json.dumps(info))
    with pytest.raises(TeacherCacheError, match="cache_info.json does not match its checksum"):
        TeacherCache.open(edited)
    unmarked = _corrupt_copy(path, tmp_path / "unmarked")
    (unmarked / "COMPLETE").unlink()
    with pytest.raises(TeacherCacheError, match="not a finished teacher cache"):
        TeacherCache.open(unmarked)
    with pytest.raises(TeacherCacheError, match="no teacher cache at"):
        TeacherCache.open(tmp_path / "nothing")


def test_killed_write_leaves_nothing_usable_and_resumes(tmp_path):
    """A real SIGKILL in the middle of saving shard 2 (shards 0 and 1 finished, shard 2 half made)."""
    sys.path.insert(0, str(SCRIPTS))
    from cache_build import build

    path = tmp_path / "cache"
    cmd = [sys.executable, str(SCRIPTS / "cache_build.py"), str(path), "--kill-after-shard", "1", "--in-shard"]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really SIGKILLed
    assert not path.exists() and (tmp_path / "cache.partial").is_dir()
    assert list((tmp_path / "cache.partial" / "shards").glob("shard-00002.tmp-*"))  # the half-made shard
    with pytest.raises(TeacherCacheError, match="unfinished write"):
        TeacherCache.open(path)
    resumed = build(path)
    assert resumed.build_stats == {"shards_reused": 2, "shards_written": 3}
    assert not (tmp_path / "cache.partial").exists()
    fresh = build(tmp_path / "fresh")
    assert fresh.build_stats == {"shards_reused": 0, "shards_written": 5}
    a, b = TeacherCache.open(path), TeacherCache.open(tmp_path / "fresh")
    assert a.fingerprint == b.fingerprint
    for ra, rb in zip(a.records(range(40)), b.records(range(40))):
        for name in ra:
            assert torch.equal(ra[name], rb[name]), name


# ----------------------------------------------------------------------------- top-k, masked LM


class MaskedLMTask(torch.utils.data.Dataset):
    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            length = int(torch.randint(5, 12, (1,), generator=g))
            ids = torch.randint(5, VOCAB, (length,), generator=g)
            labels = torch.where(torch.rand(length, generator=g) < 0.4, ids, torch.full_like(ids, -100))
            self.items.append({"id": i, "input_ids": ids.tolist(), "labels": labels.tolist()})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def mlm_collate(examples):
    batch = collate([{**e, "labels": 0} for e in examples])
    labels = torch.full_like(batch["input_ids"], -100)
    for row, e in enumerate(examples):
        labels[row, :len(e["labels"])] = torch.tensor(e["labels"])
    batch["labels"] = labels
    return batch


def tiny_mlm(layers, hidden, seed):
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=64,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def tiny_gpt2(layers, hidden, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=layers, n_head=4, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


@pytest.mark.parametrize("task", ["masked_lm", "causal_lm"])
def test_topk_with_k_equal_vocab_equals_dense_kd(tmp_path, task):
    """Strategy `single` on LM heads (causal: shifted positions) from a top-k cache with k = vocabulary."""
    data = MaskedLMTask(32)
    model = tiny_mlm if task == "masked_lm" else tiny_gpt2
    dist = DistillationConfig(task=task, kd_loss="forward_kl", temperature=2.0, hard_label_weight=0.5)
    Trainer(model(1, 32, seed=2), toy_training(tmp_path / "online"), dist, data, teacher=model(2, 48, seed=1),
            collate_fn=mlm_collate).train()
    cache = build_teacher_cache(model(2, 48, seed=1), data, tmp_path / "full_k", collate_fn=mlm_collate,
                                distillation=dist, top_k=VOCAB)
    assert cache.top_k == VOCAB and cache.temperature == 2.0
    assert cache.bytes_per_token == VOCAB * (4 + 2) + 4  # fp32 log-probs, uint16 indices, fp32 tail
    if task == "causal_lm":
        assert cache.layouts["topk.0.logprobs"] == {"dims": [0], "shift": True}
    Trainer(model(1, 32, seed=2), toy_training(tmp_path / "cached"), dist, data, teacher=cache,
            collate_fn=mlm_collate).train()
    _assert_same(final_weights(tmp_path / "online"), final_weights(tmp_path / "cached"))


def test_topk_compressed_cache_and_its_errors(tmp_path):
    data = MaskedLMTask(16)
    dist = DistillationConfig(task="masked_lm", kd_loss="forward_kl", temperature=1.0)
    cache = build_teacher_cache(tiny_mlm(2, 48, seed=1), data, tmp_path / "k8", collate_fn=mlm_collate,
                                distillation=dist, top_k=8, dtype="bfloat16")
    assert cache.bytes_per_token == 8 * (2 + 2) + 4
    # KD from the top-8 cache is close to dense KD on the same tensors
    batch = TeacherCacheCollator(mlm_collate, cache)([data[i] for i in range(8)])
    from distill_toolkit.data.cache import cached_view
    from distill_toolkit.teachers import TeacherRunner

    sparse = cached_view(batch, "teacher").logits[0]
    dense = TeacherRunner(tiny_mlm(2, 48, seed=1), "teacher", [], "masked_lm").forward(batch).logits[0]
    student = tiny_mlm(1, 32, seed=2)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"] != -100
    on_the_fly = losses.forward_kl(student, losses.sparse_from_dense(dense, 8), mask=mask).detach()
    cached = losses.forward_kl(student, sparse, mask=mask).detach()
    torch.testing.assert_close(cached, on_the_fly, rtol=2e-2, atol=1e-5)  # bf16 log-probs
    assert torch.equal(sparse.indices[mask], losses.sparse_from_dense(dense, 8).indices[mask])
    with pytest.raises(TeacherCacheError, match="top-k logits, which distillation.kd_loss 'kd_ce' cannot read"):
        cache.check(distillation=DistillationConfig(task="masked_lm", kd_loss="kd_ce"))
    with pytest.raises(TeacherCacheError, match="temperature 1.0 but distillation.temperature is 2"):
        cache.check(distillation=DistillationConfig(task="masked_lm", kd_loss="forward_kl", temperature=2.0))


# ----------------------------------------------------------------------------- in memory, unlabelled


def collate_ids(examples):
    batch = collate(examples)
    batch["id"] = torch.tensor([e["id"] for e in examples])
    return batch


class Counter(Callback):
    def __init__(self, calls):
        self.calls, self.at_step = calls, {}

    def on_step_end(self, trainer, step, logs):
        self.at_step[step] = self.calls[0]


def test_in_memory_cache_computes_once_and_matches_online(tmp_path):
    data = with_ids(ToyTask(32))  # 4 batches per epoch
    Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "online", max_steps=12), toy_distillation(), data,
            teacher=tiny_bert(4, 48, seed=1), collate_fn=collate_ids).train()
    teacher = tiny_bert(4, 48, seed=1)
    calls = _count_forwards(teacher)
    counter = Counter(calls)
    trainer = Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "memory", max_steps=12,
                                                          teacher_cache_in_memory=True),
                      toy_distillation(), data, teacher=teacher, collate_fn=collate_ids, callbacks=[counter])
    trainer.train()
    assert counter.at_step[4] <= 5  # the probe batch + the first epoch's batches
    assert counter.at_step[12] == counter.at_step[4]  # epochs 2 and 3 reuse
    assert trainer.teachers["teacher"].memory.hits == 8
    _assert_same(final_weights(tmp_path / "online"), final_weights(tmp_path / "memory"))


def test_in_memory_cache_needs_ids(tmp_path):
    with pytest.raises(TeacherCacheError, match="no 'id'.*with_ids"):
        Trainer(tiny_bert(2, 32), toy_training(tmp_path, teacher_cache_in_memory=True), toy_distillation(), ToyTask(16),
                teacher=tiny_bert(4, 48, seed=1), collate_fn=collate).train()


def test_unlabelled_text_distils_online_and_cached(tmp_path):
    unlabelled = ToyTask(32, seed=6)
    for item in unlabelled.items:
        del item["labels"]

    def collate_unlabelled(examples):
        batch = collate([{**e, "labels": 0} for e in examples])
        del batch["labels"]
        batch["id"] = torch.tensor([e["id"] for e in examples])
        return batch

    data = with_ids(unlabelled)
    dist = toy_distillation(hard_label_weight=0.0)
    online = Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "online"), dist, data,
                     teacher=tiny_bert(4, 48, seed=1), collate_fn=collate_unlabelled).train()
    assert "train/hard_label" not in online["history"][-1] and online["history"][-1]["train/kd"] > 0
    cache = build_teacher_cache(tiny_bert(4, 48, seed=1), data, tmp_path / "cache", collate_fn=collate_unlabelled,
                                distillation=dist)
    Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "cached"), dist, data, teacher=cache,
            collate_fn=collate_unlabelled).train()
    _assert_same(final_weights(tmp_path / "online"), final_weights(tmp_path / "cached"))
    with pytest.raises(ValueError, match="hard_label_weight is > 0 but the student computed no loss"):
        Trainer(tiny_bert(2, 32), toy_training(tmp_path / "bad"), toy_distillation(), data, teacher=cache,
                collate_fn=collate_unlabelled).train()


def test_examples_without_ids_and_config_errors(tmp_path, toy_cache):
    from distill_toolkit import ConfigError

    _, _, cache = toy_cache
    with pytest.raises(TeacherCacheError, match="no 'id' field.*with_ids"):
        TeacherCacheCollator(collate, cache)([ToyTask(2)[0]])
    with pytest.raises(ConfigError, match="training.teacher_cache_top_k.*positive integer"):
        toy_training(tmp_path, teacher_cache="x", teacher_cache_top_k=0).validate()
    with pytest.raises(ConfigError, match="training.teacher_cache_top_k.*no teacher_cache"):
        toy_training(tmp_path, teacher_cache_top_k=8).validate()
    with pytest.raises(ConfigError, match="training.teacher_cache_dtype"):
        toy_training(tmp_path, teacher_cache="x", teacher_cache_dtype="int8").validate()
    with pytest.raises(ConfigError, match="training.teacher_cache_in_memory.*together with teacher_cache"):
        toy_training(tmp_path, teacher_cache="x", teacher_cache_in_memory=True).validate()


# ----------------------------------------------------------------------------- the CLI


def test_cli_cache_teacher_then_train_without_teacher_forward(tmp_path, monkeypatch, capsys):
    import yaml
    from test_cli import _data, _tokenizer
    from transformers import BertForSequenceClassification

    from distill_toolkit.cli import main
    from distill_toolkit.teachers import TeacherRunner

    teacher_dir = tmp_path / "teacher"
    tokenizer = _tokenizer(teacher_dir)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).save_pretrained(teacher_dir)
    for split, n in (("train", 48), ("dev", 16)):
        _data(tmp_path / f"{split}.jsonl", n, seed=len(split))
    config = {
        "teacher": {"path": str(teacher_dir)},
        "student": {"init_from": "teacher", "layers": [1, 3]},
        "data": {"name": "files", "train_file": str(tmp_path / "train.jsonl"), "dev_file": str(tmp_path / "dev.jsonl"),
                 "text_column": "sentence", "label_column": "polarity", "max_length": 16},
        "training": {"output_dir": str(tmp_path / "cached"), "max_steps": 4, "batch_size": 8, "learning_rate": 1e-3,
                     "trackers": [], "progress_bar": False, "seed": 0, "teacher_cache": str(tmp_path / "cache")},
        "distillation": {"temperature": 2.0, "hard_label_weight": 0.5,
                         "matches": [{"teacher_layer": 4, "student_layer": 2, "loss": "hidden_mse"}]},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["cache-teacher", str(path)]) == 0
    def printed():
        out = capsys.readouterr().out
        return json.loads(out[out.index("{\n"):])

    built = printed()
    assert built["examples"] == 48 and built["shards_written"] == 1
    assert main(["cache-teacher", str(path)]) == 0  # already there: nothing recomputed
    assert printed()["shards_written"] == 0

    def no_forward(self, batch):
        raise AssertionError("the teacher ran although its outputs are cached")

    with monkeypatch.context() as patch:
        patch.setattr(TeacherRunner, "forward", no_forward)
        assert main(["train", str(path)]) == 0
    assert main(["train", str(path), "--set", "training.teacher_cache=null",
                 "--set", f"training.output_dir={tmp_path / 'online'}"]) == 0
    _assert_same(final_weights(tmp_path / "online"), final_weights(tmp_path / "cached"))
    # another teacher under the same config: refused with the rebuild command
    torch.manual_seed(5)
    BertForSequenceClassification.from_pretrained(teacher_dir).apply(
        lambda m: torch.nn.init.normal_(m.weight) if isinstance(m, torch.nn.Linear) else None
    ).save_pretrained(teacher_dir)
    capsys.readouterr()
    assert main(["train", str(path)]) == 2  # one line naming what differs and the rebuild command
    assert re.search(r"teacher cache error: .*teacher's weights differ.*cache-teacher CONFIG.yaml --overwrite",
                     capsys.readouterr().err)
    with pytest.raises(TeacherCacheError, match="teacher's weights differ"):  # --debug: the exception itself
        main(["train", str(path), "--debug"])
    config["training"].pop("teacher_cache")
    path.write_text(yaml.safe_dump(config))
    assert main(["cache-teacher", str(path)]) == 2
    assert "training.teacher_cache: is not set" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two ranks


@pytest.mark.distributed
def test_two_rank_cache_write_equals_single_process(tmp_path):
    """`accelerate launch` with 2 processes (gloo): each rank writes its shards, rank 0 finishes the cache."""
    from test_distributed import LAUNCH, free_port, ok, run_job

    sys.path.insert(0, str(SCRIPTS))
    from cache_build import build

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "ddp.yaml"),
           "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           str(SCRIPTS / "cache_build.py"), str(tmp_path / "two")]
    job = ok(run_job(cmd, env={"ACCELERATE_USE_CPU": "1"}))
    # 5 shards of 8 examples: rank 0 wrote shards 0, 2, 4 and rank 1 shards 1, 3
    assert job.output.count("built {'shards_written': 3, 'shards_reused': 0}") == 1, job.output[-3000:]
    assert job.output.count("built {'shards_written': 2, 'shards_reused': 0}") == 1, job.output[-3000:]
    one = build(tmp_path / "one")
    two = TeacherCache.open(tmp_path / "two")
    assert two.fingerprint == one.fingerprint and len(two) == len(one) == 40
    for ra, rb in zip(one.records(range(40)), two.records(range(40))):
        for name in ra:
            assert torch.equal(ra[name], rb[name]), name
