"""Sampled sparse teacher (exact top-k + sampled tail): the forward-KL gradient is unbiased, the cache stores it
ragged and reads it back exactly, its bytes/token are the entries kept, and the causal_lm strategy trains from it."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from lm_helpers import VOCAB, prompt_pairs, sentences, tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.cli import load_experiment
from distill_toolkit.config import ConfigError
from distill_toolkit.data.cache import TeacherCacheCollator, TeacherCacheError, with_ids
from distill_toolkit.data.cache.sampled import SampledLogits
from distill_toolkit.data.lm import CausalLMCollator
from distill_toolkit.features import ModelView
from distill_toolkit.losses import forward_kl, sparse_from_dense
from distill_toolkit.losses.fused import fused_lm_kd
from distill_toolkit.losses.sampled import (draw_rows, draw_uniforms, sample_rows, sampled_from_dense,
                                            threshold_rows)
from distill_toolkit.teachers import build_teacher_cache


def _grad(student: torch.Tensor, teacher) -> torch.Tensor:
    s = student.clone().requires_grad_(True)
    forward_kl(s, teacher).backward()
    return s.grad


@pytest.mark.parametrize("top_k, samples", [(0, 6), (3, 6)])
def test_sampled_gradient_is_unbiased_and_top_k_is_not(top_k, samples):
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(4, 40, generator=g) * 2, torch.randn(4, 40, generator=g)
    dense = _grad(student, teacher)
    draws = torch.stack([_grad(student, sampled_from_dense(teacher, samples, top_k, generator=g))
                         for _ in range(3000)])
    # the exact spread of p_hat: a tail class j (mass m outside the top-k) is m * Binomial(N, p_j / m) / N
    p = teacher.softmax(-1)
    top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, p.topk(top_k).indices, True)
    m = p.masked_fill(top, 0).sum(-1, keepdim=True)
    var = torch.where(top, 0.0, m * p * (1 - p / m) / samples)
    bound = 5 * (var / 3000).sqrt() / len(p) + 1e-7  # forward_kl is a mean over the rows
    mean = draws.mean(0)
    assert ((mean - dense).abs() <= bound).all()  # within 5 standard errors, every logit
    assert (mean - dense).abs().max() < 0.01
    # plain top-k of about the same size fails that test: its error is a bias, far outside the noise
    biased = _grad(student, sparse_from_dense(teacher, top_k + samples))
    assert ((biased - dense).abs() > bound).float().mean() > 0.3


def test_systematic_and_threshold_draws_are_unbiased_with_less_spread_and_keep_every_heavy_class():
    g = torch.Generator().manual_seed(5)
    teacher, student = torch.randn(4, 40, generator=g) * 2, torch.randn(4, 40, generator=g)
    dense = _grad(student, teacher)
    spread = {}
    for sampler in ("multinomial", "systematic", "threshold"):
        draws = torch.stack([_grad(student, sampled_from_dense(teacher, 6, 2, generator=g, sampler=sampler))
                             for _ in range(3000)])
        spread[sampler] = draws.std(0)
        # the mean within 5 standard errors of the dense gradient at every logit (the spread measured here)
        bound = 5 * spread[sampler] / 3000 ** 0.5 + 5e-5  # + float32 error where a logit's spread is about 0
        assert ((draws.mean(0) - dense).abs() <= bound).all(), sampler
    assert spread["systematic"].sum() < 0.9 * spread["multinomial"].sum()  # measured 0.80
    assert spread["threshold"].sum() < spread["systematic"].sum()  # measured 0.97
    # one point per stratum of the tail: a class of tail mass w comes up floor(6 w) or ceil(6 w) times
    log_p = teacher.log_softmax(-1)
    rows = sample_rows(log_p, 6, 2, draw_uniforms(4, 6, g, "systematic"))
    tail = log_p.scatter(-1, log_p.topk(2).indices, float("-inf"))
    w = (tail - tail.logsumexp(-1, keepdim=True)).exp()
    for r in range(4):
        n = int(rows.counts[r])
        share = (rows.logprobs[r, 2:n] - tail[r].logsumexp(-1)).exp() * 6
        got = torch.zeros(40).index_put_((rows.indices[r, 2:n],), share)
        counts = got.round()
        torch.testing.assert_close(got, counts, atol=1e-4, rtol=0)
        assert ((counts >= (6 * w[r]).floor() - 1e-6) & (counts <= (6 * w[r]).ceil() + 1e-6)).all()
        assert counts.sum() == 6
    with pytest.raises(ValueError, match="teacher_cache_sampler"):
        draw_uniforms(4, 6, g, "stratified")


def test_threshold_rows_keep_the_heavy_tokens_exactly_and_draw_distinct_ones_at_the_threshold():
    g = torch.Generator().manual_seed(3)
    log_p = (torch.randn(6, 50, generator=g) * 2.5).log_softmax(-1)
    log_p[0] = (torch.randn(50, generator=g) * 0.01).log_softmax(-1)  # near flat: only top_k exactly, 7 drawn
    offsets = 1.0 - torch.rand(6, generator=g, dtype=torch.float64)
    rows = threshold_rows(log_p, 8, 1, offsets)
    assert rows.counts.tolist() == [8] * 6  # exactly top_k + samples entries, never a repeat
    p = log_p.exp().double()
    exact = []
    for r in range(6):
        idx, lp = rows.indices[r], rows.logprobs[r].double()
        assert len(set(idx.tolist())) == 8
        order = p[r].argsort(descending=True)
        k = next(k for k in range(1, 8) if p[r, order[k]] * (8 - k) < 1 - p[r, order[:k]].sum())  # by hand
        assert idx[:k].tolist() == order[:k].tolist()
        torch.testing.assert_close(lp[:k].exp(), p[r, order[:k]], rtol=1e-5, atol=0)
        tau = (1 - p[r, order[:k]].sum()) / (8 - k)
        torch.testing.assert_close(lp[k:].exp(), tau.expand(8 - k), rtol=1e-4, atol=0)
        assert (p[r, idx[k:]] < tau).all() and not set(idx[k:].tolist()) & set(order[:k].tolist())
        exact.append(k)
    assert exact[0] == 1 and max(exact) >= 3
    # the same offsets, the same rows; a row with fewer tokens than entries keeps all of them exactly
    again = threshold_rows(log_p, 8, 1, offsets)
    assert torch.equal(rows.indices, again.indices) and torch.equal(rows.logprobs, again.logprobs)
    small = threshold_rows(log_p[:, :5].log_softmax(-1), 8, 0, offsets)
    assert small.counts.tolist() == [5] * 6
    torch.testing.assert_close(small.logprobs.exp().sum(-1), torch.ones(6))
    with pytest.raises(ValueError, match="offsets must have shape"):
        threshold_rows(log_p, 8, 1, offsets[:2])


def test_sampled_rows_are_exact_where_nothing_is_drawn_and_seeded():
    g = torch.Generator().manual_seed(1)
    logits, student = torch.randn(5, 30, generator=g), torch.randn(5, 30, generator=g)
    log_p = logits.log_softmax(-1)
    rows = sample_rows(log_p, 8, 3, draw_uniforms(5, 8, torch.Generator().manual_seed(2)))
    again = sample_rows(log_p, 8, 3, draw_uniforms(5, 8, torch.Generator().manual_seed(2)))
    assert all(torch.equal(a, b) for a, b in zip(rows, again))
    assert torch.equal(rows.indices[:, :3], log_p.topk(3).indices)  # the top-k kept exactly, in order
    assert torch.equal(rows.logprobs[:, :3], log_p.topk(3).values)
    for r in range(5):
        n = int(rows.counts[r])
        kept = rows.indices[r, :n]
        assert len(set(kept.tolist())) == n and 4 <= n <= 11  # top-3 + 1..8 distinct draws, no repeats
        assert torch.allclose(rows.logprobs[r, :n].exp().sum(), torch.tensor(1.0), atol=1e-5)  # sums to 1
    # all of the vocabulary kept exactly: nothing is drawn and the loss is the dense one
    full = sampled_from_dense(logits, 8, top_k=30)
    assert full.logprobs.shape == (5, 30)
    torch.testing.assert_close(forward_kl(student, full), forward_kl(student, logits))
    torch.testing.assert_close(_grad(student, full), _grad(student, logits))


def test_fused_route_reads_a_sampled_teacher_like_the_registry():
    g = torch.Generator().manual_seed(3)
    hidden, head = torch.randn(12, 16, generator=g), torch.nn.Linear(16, 50)
    teacher = sampled_from_dense(torch.randn(12, 50, generator=g), 10, top_k=4, generator=g)
    x = hidden.clone().requires_grad_(True)
    kd, _ = fused_lm_kd(x, head, teacher, None)
    kd.backward()
    y = hidden.clone().requires_grad_(True)
    reference = forward_kl(head(y), teacher) * 12
    reference.backward()
    torch.testing.assert_close(kd, reference)
    torch.testing.assert_close(x.grad, y.grad)


# ----------------------------------------------------------------------------- the cache


def _build(tmp_path, name, data, batch_size=4, **kw):
    return build_teacher_cache(tiny_llama(3, 48, seed=1), data, tmp_path / name,
                               collate_fn=CausalLMCollator(tiny_tokenizer()), batch_size=batch_size,
                               distillation=DistillationConfig(strategy="causal_lm", kd_loss="forward_kl"), **kw)


def _texts(n, seed):
    return with_ids([{"text": t} for t in sentences(n, seed=seed)])


def test_sampled_cache_round_trips_and_counts_its_bytes(tmp_path):
    data = _texts(10, 4)
    collate = CausalLMCollator(tiny_tokenizer())
    spec = SampledLogits(samples=6, top_k=2, seed=7)
    cache = _build(tmp_path, "s", data, top_k=2, samples=6, seed=7, dtype="float16")
    assert cache.samples == 6 and cache.top_k == 2 and cache.fingerprint["sample_seed"] == 7
    assert list(cache.layouts)[:1] == ["sampled.0.counts"]
    assert cache.layouts["sampled.0.logprobs"] == {"dims": [0], "shift": True, "ragged": "sampled.0.counts"}
    # stored = drawn from the teacher's own logits with the example's generator (independent of batching)
    teacher = tiny_llama(3, 48, seed=1).eval()
    examples = [data[i] for i in (7, 2, 5)]
    batch = TeacherCacheCollator(collate, cache)(examples)
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    read = batch["teacher_cache"]["teacher"]["logits"][0]
    entries = positions = 0
    for row, example in enumerate(examples):
        real = batch["attention_mask"][row, 1:].bool()
        parts = spec.example(logits[row][real], example["id"], 1.0)
        counts, indices, logprobs = parts["counts"], parts["indices"], parts["logprobs"]
        n = int(real.sum())
        positions, entries = positions + n, entries + int(counts.sum())
        for r in range(n):
            c = int(counts[r])
            start = int(counts[:r].sum())
            assert read["indices"][row][real][r, :c].tolist() == indices[start:start + c].tolist()
            torch.testing.assert_close(read["logprobs"][row][real][r, :c], logprobs[start:start + c].half().float())
            assert (read["logprobs"][row][real][r, c:] < -1e30).all()  # padding: probability 0
    assert (read["tail_logprob"] < -1e30).all()
    # bytes/token: uint16 counts + (uint16 id + fp16 log p) per kept entry, over every next-token position
    all_counts = torch.cat([r["sampled.0.counts"] for r in cache.records([e["id"] for e in data])])
    real_positions = sum(len(collate([e])["input_ids"][0]) - 1 for e in data)
    assert len(all_counts) == real_positions
    assert cache.bytes_per_token == pytest.approx((2 * real_positions + 4 * int(all_counts.sum())) / real_positions)
    assert 2 + 4 * 3 <= cache.bytes_per_token <= 2 + 4 * 8
    # another batch size writes the same draws
    other = _build(tmp_path, "s3", data, batch_size=3, top_k=2, samples=6, seed=7, dtype="float16")
    ids = [e["id"] for e in data]
    for a, b in zip(cache.records(ids), other.records(ids)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    reseeded = _build(tmp_path, "s8", data, top_k=2, samples=6, seed=8, dtype="float16")
    differ = [not torch.equal(a["sampled.0.indices"], b["sampled.0.indices"]) if a["sampled.0.indices"].shape ==
              b["sampled.0.indices"].shape else True for a, b in zip(cache.records(ids), reseeded.records(ids))]
    assert sum(differ) >= 5  # another seed, other draws
    # systematic draws: recorded in the fingerprint (multinomial caches keep the one they had before the option)
    assert "sampler" not in cache.fingerprint and cache.sampler == "multinomial"
    systematic = _build(tmp_path, "sys", data, top_k=2, samples=6, seed=7, dtype="float16", sampler="systematic")
    assert systematic.fingerprint["sampler"] == systematic.sampler == "systematic"
    spec = SampledLogits(samples=6, top_k=2, seed=7, sampler="systematic")
    for example, record in zip(data, systematic.records(ids)):
        batch = collate([example])
        with torch.no_grad():
            row = teacher(input_ids=batch["input_ids"]).logits[0, :-1]
        parts = spec.example(row, example["id"], 1.0)
        counts, indices = parts["counts"], parts["indices"]
        assert torch.equal(record["sampled.0.counts"].long(), counts.long())
        assert record["sampled.0.indices"].tolist() == indices.tolist()
    # threshold: exactly top_k + samples distinct entries; only the exact ones store a value, the drawn ones share
    # the position's log tau; read back, every entry is what the sampler drew (fp16-rounded)
    threshold = _build(tmp_path, "thr", data, top_k=2, samples=6, seed=7, dtype="float16", sampler="threshold")
    spec = SampledLogits(samples=6, top_k=2, seed=7, sampler="threshold")
    batch = TeacherCacheCollator(collate, threshold)(examples)
    read = batch["teacher_cache"]["teacher"]["logits"][0]
    stored = entries = exact = 0
    for row, example in enumerate(examples):
        real = batch["attention_mask"][row, 1:].bool()
        rows = draw_rows(logits[row][real].log_softmax(-1), 6, 2, spec.generator(example["id"]), "threshold")
        assert rows.counts.tolist() == [8] * int(real.sum())
        torch.testing.assert_close(read["logprobs"][row][real][:, :8], rows.logprobs.half().float())
        assert read["indices"][row][real][:, :8].tolist() == rows.indices.tolist()
    for record in threshold.records(ids):
        stored, entries = stored + len(record["sampled.0.counts"]), entries + int(record["sampled.0.counts"].sum())
        exact += int(record["sampled.0.exact"].sum())
        assert len(record["sampled.0.logprobs"]) == int(record["sampled.0.exact"].sum())
    assert threshold.bytes_per_token == pytest.approx((6 * stored + 2 * entries + 2 * exact) / stored)
    assert threshold.bytes_per_token < 6 + 4 * 8


def _training(path, **kw):
    return TrainingConfig(**{**dict(output_dir=str(path), max_steps=4, batch_size=4, learning_rate=3e-3, trackers=[],
                                    progress_bar=False, eval_every_epochs=None, seed=0, max_grad_norm=None), **kw})


def test_causal_lm_trains_from_a_sampled_cache(tmp_path):
    tok = tiny_tokenizer()
    collate = CausalLMCollator(tok)
    data = with_ids(prompt_pairs(16))
    dist = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=2.0, hard_label_weight=0.5)
    Trainer(tiny_llama(2, 32, seed=2), _training(tmp_path / "online"), dist, data, teacher=tiny_llama(3, 48, seed=1),
            collate_fn=collate).train()
    # every class kept exactly (top_k = vocabulary, nothing left to draw): the weights of online dense KD
    exact = build_teacher_cache(tiny_llama(3, 48, seed=1), data, tmp_path / "exact", collate_fn=collate,
                                distillation=dist, top_k=VOCAB, samples=4, tokenizer=tok)
    Trainer(tiny_llama(2, 32, seed=2), _training(tmp_path / "cached"), dist, data, teacher=exact,
            collate_fn=collate).train()
    online, cached = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("online", "cached"))
    for name in online:
        torch.testing.assert_close(cached[name], online[name], rtol=1e-4, atol=1e-5)
    # a real sampled cache (no teacher model anywhere) trains, and the chunked route agrees with the fused one
    sampled = build_teacher_cache(tiny_llama(3, 48, seed=1), data, tmp_path / "sampled", collate_fn=collate,
                                  distillation=dist, top_k=2, samples=8, dtype="float16", tokenizer=tok)
    results = []
    for fused in (True, False):
        d = DistillationConfig(**{**dist.to_dict(), "strategy_options": {"fused": fused}})
        results.append(Trainer(tiny_llama(2, 32, seed=2), _training(tmp_path / f"f{fused}", max_steps=8), d, data,
                               teacher=sampled, collate_fn=collate).train())
    kd = [h["train/kd"] for h in results[0]["history"]]
    assert all(torch.isfinite(torch.tensor(kd))) and kd[-1] < kd[0]
    assert [h["train/kd"] for h in results[1]["history"]] == pytest.approx(kd, rel=1e-4)


# ----------------------------------------------------------------------------- bad input


def test_sampled_cache_refuses_losses_it_does_not_estimate(tmp_path):
    data = _texts(8, 5)
    with pytest.raises(ValueError, match=r"teacher_cache_samples: .*kd_loss is 'reverse_kl'. Fix: use kd_loss: "
                                         r"forward_kl"):
        build_teacher_cache(tiny_llama(3, 48, seed=1), data, tmp_path / "r", collate_fn=CausalLMCollator(
            tiny_tokenizer()), distillation=DistillationConfig(strategy="causal_lm", kd_loss="reverse_kl"), samples=4)
    cache = _build(tmp_path, "ok", data, samples=4)
    assert cache.top_k is None and cache.samples == 4
    for dist, message in [(dict(kd_loss="jsd"), r"sampled sparse logits.*kd_loss is 'jsd'; use forward_kl"),
                          (dict(kd_loss_kwargs={"top_k": 4}), r"kd_loss_kwargs.top_k is set"),
                          (dict(temperature=2.0), r"at temperature 1.0 but distillation.temperature is 2.0")]:
        with pytest.raises(TeacherCacheError, match=message):
            cache.check(distillation=DistillationConfig(**{"strategy": "causal_lm", "kd_loss": "forward_kl", **dist}))
    with pytest.raises(ValueError, match=r"teacher_cache_samples: must be an integer >= 1"):
        SampledLogits(samples=0)
    with pytest.raises(TeacherCacheError, match=r"teacher_cache_samples draws from the teacher's whole distribution"):
        SampledLogits(4).batch(ModelView(logits=[sparse_from_dense(torch.randn(1, 3, 9), 2)], features={}), None,
                               ["a"], "causal_lm", 1.0)


def _config(tmp_path, **training):
    teacher = tmp_path / "teacher"
    tiny_llama(3, 48, seed=1).save_pretrained(teacher)
    tiny_tokenizer(teacher)
    (tmp_path / "train.txt").write_text("\n".join(sentences(12, seed=1)) + "\n")
    return {"teacher": {"path": str(teacher)}, "student": {"init_from": "teacher", "layers": [0, 2]},
            "data": {"name": "text", "train_file": str(tmp_path / "train.txt"), "max_length": 16},
            "training": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "batch_size": 4, "trackers": [],
                         "progress_bar": False, "teacher_cache": str(tmp_path / "cache"), **training},
            "distillation": {"strategy": "causal_lm", "kd_loss": "forward_kl"}}


def test_config_validates_the_samples(tmp_path):
    path = tmp_path / "run.yaml"
    for training, message in [({"teacher_cache_samples": 0}, r"training.teacher_cache_samples: must be a positive"),
                              ({"teacher_cache_samples": "8"}, r"training.teacher_cache_samples: must be a positive"),
                              ({"teacher_cache_samples": 8, "teacher_cache_sampler": "stratified"},
                               r"training.teacher_cache_sampler: unknown 'stratified'.*systematic"),
                              ({"teacher_cache_samples": 8, "teacher_cache": None},
                               r"teacher_cache_samples: is set but there is no teacher_cache")]:
        config = _config(tmp_path, **training)
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=message):
            load_experiment(str(path))
    config = _config(tmp_path, teacher_cache_samples=8)
    config["distillation"]["kd_loss"] = "total_variation"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"distillation.kd_loss: a sampled teacher cache .*forward KL only"):
        load_experiment(str(path))
    config = _config(tmp_path, teacher_cache_samples=8)
    config["teacher"] = {"server": "http://127.0.0.1:1/v1", "model": "smol", "top_k": 8}
    config["student"] = {"path": config["student"].get("path", str(tmp_path / "teacher"))}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"training.teacher_cache_samples: draws from the teacher's whole "
                                          r"distribution, but a served teacher"):
        load_experiment(str(path))


@pytest.mark.slow
def test_cli_writes_and_trains_from_a_sampled_cache(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, teacher_cache_samples=8, teacher_cache_top_k=2,
                                           teacher_cache_dtype="float16", teacher_cache_sampler="systematic")))

    def cli(*args):
        run = subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *args, str(path)], capture_output=True,
                             text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(run.stdout[run.stdout.index("{"):])

    built = cli("cache-teacher")
    assert built["samples"] == 8 and built["top_k"] == 2 and built["examples"] == 12
    assert built["sampler"] == "systematic"
    assert 2 + 4 * 3 <= built["bytes_per_token"] <= 2 + 4 * 10
    assert cli("train")["global_step"] == 2
