"""Causal-LM distillation beyond token KD on fixed text: sequence-level KD, on-policy (GKD) generation,
a top-k teacher cache as the KD source, and the bad inputs of the causal-LM route."""

import pytest
import torch
from lm_helpers import VOCAB, prompt_pairs, sentences, tiny_gpt2, tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.config import ConfigError
from distill_toolkit.data.cache import with_ids
from distill_toolkit.data.lm import CausalLMCollator, LMDataError, prompts_of
from distill_toolkit.strategies import StrategyError, check_distillation
from distill_toolkit.strategies.causal_lm import CausalLMDistillation, _draw
from distill_toolkit.strategies.generation import generate_completions
from distill_toolkit.teachers import build_teacher_cache, teacher_completions


def training(path, **kw):
    base = dict(output_dir=str(path), max_steps=4, batch_size=4, learning_rate=3e-3, trackers=[], progress_bar=False,
                eval_every_epochs=None, seed=0, max_grad_norm=None)
    return TrainingConfig(**{**base, **kw})


def distill(**kw):
    return DistillationConfig(**{**dict(strategy="causal_lm", kd_loss="forward_kl", temperature=1.0), **kw})


def weights(path):
    return load_file(str(path / "final" / "model.safetensors"))


def run(path, options=None, steps=4, data=None, teacher=None, **dist):
    tok = tiny_tokenizer()
    return Trainer(tiny_llama(2, 32, seed=2), training(path, max_steps=steps),
                   distill(strategy_options=options or {}, **dist), data or prompt_pairs(16),
                   teacher=teacher if teacher is not None else tiny_llama(3, 48, seed=1),
                   collate_fn=CausalLMCollator(tok)).train()


# ----------------------------------------------------------------------------- on-policy


def test_on_policy_batch_masks_exactly_the_generated_tokens():
    """Prompt and the padding after EOS get -100, even when the pad id is the EOS id; the new tokens do not."""
    batch = CausalLMCollator(tiny_tokenizer())(prompt_pairs(4, seed=3))
    prompts = prompts_of(batch)
    student = tiny_llama(2, 32, seed=2)
    student.generation_config.eos_token_id = None  # first, greedy completions that never stop early
    free = generate_completions(student, prompts, max_new_tokens=6, pad_token_id=0)
    assert all(len(c) == 6 for c in free)
    k = next(i for i in range(1, 6) if free[0][i] not in free[0][:i])
    stop = free[0][k]  # a token row 0 writes for the first time at step k: it now stops there
    student.generation_config.eos_token_id = stop
    student.generation_config.pad_token_id = stop  # pad == EOS, as with `pad_token = eos_token`

    strategy = CausalLMDistillation(distill(strategy_options={"lmbda": 1.0, "max_new_tokens": 6,
                                                              "generation_temperature": 0}))
    new = strategy.prepare_batch(batch, student, {"teacher": None}, key=(0, 0, 0))
    assert strategy.on_policy
    expected = [c[:c.index(stop) + 1] if stop in c else c for c in free]
    assert len(expected[0]) == k + 1 and len(prompts[0]) + k + 1 < new["input_ids"].shape[1]  # row 0 is padded
    for row, (prompt, completion) in enumerate(zip(prompts, expected)):
        real = new["attention_mask"][row].bool()
        assert new["input_ids"][row][real].tolist() == prompt + completion
        assert new["labels"][row][real].tolist() == [-100] * len(prompt) + completion
        assert (new["labels"][row][~real] == -100).all()
    assert (new["input_ids"][0][~new["attention_mask"][0].bool()] == stop).all()  # padding looks like EOS...
    assert strategy.loss_items(new) == sum(map(len, expected))  # ...yet only the generated tokens count


def test_lambda_zero_is_off_policy_and_lambda_one_always_generates(tmp_path):
    off = run(tmp_path / "off")
    zero = run(tmp_path / "zero", {"lmbda": 0.0, "max_new_tokens": 4})
    assert [h["train/loss"] for h in zero["history"]] == [h["train/loss"] for h in off["history"]]
    for name, value in weights(tmp_path / "off").items():
        assert torch.equal(weights(tmp_path / "zero")[name], value)
    assert "train/on_policy" not in zero["history"][0]

    one = run(tmp_path / "one", {"lmbda": 1.0, "max_new_tokens": 4}, hard_label_weight=0.5)
    assert [h["train/on_policy"] for h in one["history"]] == [1.0] * 4
    assert "train/hard_label" not in one["history"][0]  # the student's samples are not ground truth
    assert [h["train/kd"] for h in one["history"]] != [h["train/kd"] for h in off["history"]]


def test_on_policy_draws_follow_the_seeded_generator(tmp_path):
    half = run(tmp_path / "half", {"lmbda": 0.5, "max_new_tokens": 3}, steps=8)  # 4 batches per epoch, 2 epochs
    drawn = [h["train/on_policy"] for h in half["history"]]
    expected = [float(_draw((0, epoch, i)) < 0.5) for epoch in range(2) for i in range(4)]
    assert drawn == expected and 0 < sum(drawn) < 8


def test_on_policy_prompt_plus_new_tokens_over_the_limit_is_refused(tmp_path):
    tok = tiny_tokenizer()
    cfg = training(tmp_path, max_steps=2)
    trainer = Trainer(tiny_llama(2, 32, seed=2, positions=16), cfg,
                      distill(strategy_options={"lmbda": 1.0, "max_new_tokens": 12}), prompt_pairs(8),
                      teacher=tiny_llama(3, 48, seed=1, positions=16), collate_fn=CausalLMCollator(tok))
    with pytest.raises(StrategyError, match=r"prompt \+ strategy_options.max_new_tokens has \d+ positions .* at most "
                                            r"16 .*max_new_tokens"):
        trainer.train()


def test_on_policy_needs_a_prompt(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(LMDataError, match="no prompt.*prompt/completion"):
        Trainer(tiny_llama(2, 32, seed=2), training(tmp_path, max_steps=1), distill(strategy_options={"lmbda": 1.0}),
                sentences(8), teacher=tiny_llama(3, 48, seed=1), collate_fn=CausalLMCollator(tok)).train()


@pytest.mark.parametrize("options, field", [({"lmbda": 1.5}, "lmbda"), ({"lambda": 0.5}, "lambda"),
                                            ({"max_new_tokens": 0}, "max_new_tokens"),
                                            ({"generation_temperature": -1}, "generation_temperature")])
def test_bad_strategy_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=rf"distillation.strategy_options.{field}: .*Fix:"):
        check_distillation(distill(strategy_options=options))


# ----------------------------------------------------------------------------- sequence-level KD


def test_sequence_level_kd_trains_on_the_teachers_completions(tmp_path):
    tok = tiny_tokenizer()
    teacher = tiny_llama(3, 48, seed=1)
    prompts = [p["prompt"] for p in prompt_pairs(12)]
    data = teacher_completions(teacher, tok, prompts, max_new_tokens=5)
    assert data.column_names == ["prompt", "completion", "prompt_ids", "completion_ids"] and len(data) == 12
    for i in (0, 5):  # exactly the teacher's greedy continuation, up to and including its EOS
        ids = tok(prompts[i], return_tensors="pt")
        out = teacher.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, ids.input_ids.shape[1]:]
        out = out.tolist()
        assert data[i]["completion_ids"] == (out[:out.index(2) + 1] if 2 in out else out)
    batch = CausalLMCollator(tok)([data[0], data[1]])
    for row in range(2):
        n_prompt = len(data[row]["prompt_ids"])
        real = batch["attention_mask"][row].bool()
        assert batch["labels"][row][real].tolist() == [-100] * n_prompt + data[row]["completion_ids"]

    sampled = teacher_completions(teacher, tok, prompts[:4], max_new_tokens=5, temperature=1.0, samples_per_prompt=2)
    again = teacher_completions(teacher, tok, prompts[:4], max_new_tokens=5, temperature=1.0, samples_per_prompt=2)
    assert len(sampled) == 8 and sampled["completion_ids"] == again["completion_ids"]  # seeded

    result = run(tmp_path, data=data, teacher=teacher, steps=12)
    kd = [h["train/kd"] for h in result["history"]]
    assert kd[-1] < kd[0]


# ----------------------------------------------------------------------------- teacher cache


def test_topk_cache_with_k_equal_vocab_equals_online_kd(tmp_path):
    tok = tiny_tokenizer()
    collate = CausalLMCollator(tok)
    data = with_ids(prompt_pairs(16))
    dist = distill(temperature=2.0, hard_label_weight=0.5)
    Trainer(tiny_llama(2, 32, seed=2), training(tmp_path / "online"), dist, data, teacher=tiny_llama(3, 48, seed=1),
            collate_fn=collate).train()
    cache = build_teacher_cache(tiny_llama(3, 48, seed=1), data, tmp_path / "cache", collate_fn=collate,
                                distillation=dist, top_k=VOCAB, tokenizer=tok)
    assert cache.layouts["topk.0.logprobs"] == {"dims": [0], "shift": True}
    assert "head_input" not in cache.feature_keys
    Trainer(tiny_llama(2, 32, seed=2), training(tmp_path / "cached"), dist, data, teacher=cache,
            collate_fn=collate).train()
    online, cached = weights(tmp_path / "online"), weights(tmp_path / "cached")
    for name in online:
        torch.testing.assert_close(cached[name], online[name], rtol=1e-4, atol=1e-5)


def test_compressed_topk_cache_trains_without_any_teacher(tmp_path):
    tok = tiny_tokenizer()
    collate = CausalLMCollator(tok)
    data = with_ids(prompt_pairs(16))
    dist = distill(kd_loss="reverse_kl")
    cache = build_teacher_cache(tiny_llama(3, 48, seed=1), data, tmp_path / "k4", collate_fn=collate,
                                distillation=dist, top_k=4, dtype="float16", tokenizer=tok)
    assert cache.bytes_per_token == 4 * (2 + 2) + 4
    # the teacher is the cache alone: there is no model that could run
    result = Trainer(tiny_llama(2, 32, seed=2), training(tmp_path / "run", max_steps=8), dist, data, teacher=cache,
                     collate_fn=collate).train()
    kd = [h["train/kd"] for h in result["history"]]
    assert all(torch.isfinite(torch.tensor(kd))) and kd[-1] < kd[0]
    with pytest.raises(StrategyError, match="lmbda > 0 .*teacher model"):
        Trainer(tiny_llama(2, 32, seed=2), training(tmp_path / "policy"), distill(kd_loss="reverse_kl",
                strategy_options={"lmbda": 0.5}), data, teacher=cache, collate_fn=collate).train()


# ----------------------------------------------------------------------------- bad input


def test_vocabulary_mismatch_names_the_cross_tokenizer_route(tmp_path):
    trainer = Trainer(tiny_llama(2, 32, seed=2), training(tmp_path), distill(), prompt_pairs(8),
                      teacher=tiny_llama(2, 32, vocab=VOCAB + 5), collate_fn=CausalLMCollator(tiny_tokenizer()))
    with pytest.raises(StrategyError, match=rf"student vocabulary \({VOCAB}\) differs from the teacher's \({VOCAB + 5}\).*"
                                            r"kd_loss: uld or aligned_kd.*CrossTokenizerLMCollator"):
        trainer.train()


def test_missing_pad_token_names_the_fix():
    tok = tiny_tokenizer(pad=False)
    with pytest.raises(LMDataError, match=r"no pad token.*tokenizer.pad_token = tokenizer.eos_token"):
        CausalLMCollator(tok)
    with pytest.raises(LMDataError, match=r"tokenizer.pad_token = tokenizer.eos_token"):
        teacher_completions(tiny_llama(), tok, ["the cat"], max_new_tokens=2)


def test_sequences_over_the_models_limit_are_refused_before_any_forward(tmp_path):
    """GPT-2 with 8 positions would fail inside its position embedding; the run stops first, naming the fix."""
    trainer = Trainer(tiny_gpt2(2, 32, seed=2, positions=8), training(tmp_path), distill(), sentences(8, words=(9, 12)),
                      teacher=tiny_gpt2(3, 48, seed=1, positions=8), collate_fn=CausalLMCollator(tiny_tokenizer()))
    with pytest.raises(StrategyError, match=r"a batch has \d+ positions but the student accepts at most 8 "
                                            r"\(max_position_embeddings\). Fix: lower .*max_length"):
        trainer.train()
    with pytest.raises(LMDataError, match="at most 8"):
        teacher_completions(tiny_gpt2(positions=8), tiny_tokenizer(), ["the cat sat"], max_new_tokens=8)
