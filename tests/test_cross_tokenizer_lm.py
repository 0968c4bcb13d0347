"""Cross-tokenizer causal-LM KD on two REAL tokenizers: SmolLM2's byte-level BPE (read from the GGUF the project
fetches; 49,152 tokens) for the teacher and MiniLM's WordPiece (``builtin:minilm``; 30,522) for the student, with
small Llamas built from configs. Covers the offset alignment, the collator's tensors, the strategy's routing (its
loss equals the losses applied by hand to full forwards), the refusals, and a few training steps from YAML through
the CLI."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from distill_toolkit import DistillationConfig, TrainingConfig, Trainer
from distill_toolkit.config import ConfigError
from distill_toolkit.data import CrossTokenizerLMCollator, sources
from distill_toolkit.data.token_alignment import offset_spans, shared_vocabulary, token_strings
from distill_toolkit.losses.cross_tokenizer import aligned_kd, uld
from distill_toolkit.models import load_tokenizer
from distill_toolkit.strategies import build_strategy
from distill_toolkit.strategies.base import StrategyError

TEXTS = ["The cat sat on the mat, playing happily.", "Shakespeare's plays: tragedies and comedies!",
         "A naïve café serves 3.14 pies.", "Then it was very quiet in the park."]


@pytest.fixture(scope="module")
def tokenizers():
    gguf = sources.smollm2_gguf()
    teacher = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    teacher.pad_token = teacher.eos_token
    return load_tokenizer("builtin:minilm"), teacher


def _llama(vocab, seed, layers=2, hidden=32):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0))


def test_offset_spans_by_hand():
    # student "play ##ing the" vs teacher "playing Ġthe": one 2:1 span, then a 1:1 span; [CLS] (0, 0) in none
    spans_S, spans_T = offset_spans([(0, 0), (0, 4), (4, 7), (8, 11)], [(0, 7), (7, 11)])
    assert spans_S == [-1, 0, 0, 1] and spans_T == [0, 1]
    # the teacher's text is cut after "play": the unfinished span and everything after it belong to none
    assert offset_spans([(0, 7), (8, 11)], [(0, 4)]) == ([-1, -1], [-1])


def test_shared_vocabulary_maps_equal_surface_strings(tokenizers):
    tok_S, tok_T = tokenizers
    ids_S, ids_T = shared_vocabulary(tok_S, tok_T)
    assert len(ids_S) == len(ids_T) > 5000
    pairs = dict(zip(tok_S.convert_ids_to_tokens(ids_S.tolist()), tok_T.convert_ids_to_tokens(ids_T.tolist())))
    assert pairs["the"] == "Ġthe" and pairs["##ing"] == "ing" and pairs[","] == ","
    strings_S, strings_T = token_strings(tok_S), token_strings(tok_T)
    assert all(strings_S[i] == strings_T[j] for i, j in zip(ids_S.tolist(), ids_T.tolist()))
    assert strings_S[tok_S.cls_token_id] is None and strings_T[tok_T.eos_token_id] is None


def test_collator_aligns_real_tokenisations(tokenizers):
    tok_S, tok_T = tokenizers
    collate = CrossTokenizerLMCollator(tok_S, tok_T, max_length=24)
    batch = collate([TEXTS[2], {"prompt": "Q: why?", "completion": " Because it rains.", "id": 7}])
    spans_S, spans_T = batch["alignment"]["student_spans"], batch["alignment"]["teacher_spans"]
    words_S = tok_S.convert_ids_to_tokens(batch["student"]["input_ids"][0].tolist())
    words_T = tok_T.convert_ids_to_tokens(batch["teacher"]["input_ids"][0].tolist())
    groups = {}
    for side, words, spans in ((0, words_S, spans_S[0]), (1, words_T, spans_T[0])):
        for w, s in zip(words, spans.tolist()):
            if s >= 0:
                groups.setdefault(s, ([], []))[side].append(w)
    # "naïve": WordPiece strips the accent into one token, the byte-level BPE needs two
    assert (["naive"], ["Ġna", "Ã¯ve"]) in groups.values()
    assert (["3"], ["Ġ", "3"]) in groups.values() and (["cafe"], ["ĠcafÃ©"]) in groups.values()
    assert spans_S[0, 0] == -1 and words_S[0] == "[CLS]"  # special tokens belong to no span
    # the prompt is not learnt (labels -100) on either side, and "id" is not passed through a mixed batch
    assert (batch["student"]["labels"][1, :5] == -100).all() and (batch["teacher"]["labels"][1, :4] == -100).all()
    assert "id" not in batch and batch["student"]["input_ids"].shape[0] == 2
    # max_length cuts: a span that lost tokens on one side is dropped on both
    # (teacher: A | Ġna Ã¯ve | ĠcafÃ© | Ġserves, cut after Ġna; student: [CLS] a naive cafe serves [SEP])
    short = CrossTokenizerLMCollator(tok_S, tok_T, max_length=24, teacher_max_length=2)(["A naïve café serves"])
    assert short["alignment"]["teacher_spans"][0].tolist() == [0, -1]
    assert short["alignment"]["student_spans"][0].tolist() == [-1, 0, -1, -1, -1, -1]


def _trainer(tmp_path, dist, tokenizers, steps=3, **training):
    tok_S, tok_T = tokenizers
    teacher, student = _llama(len(tok_T), seed=1), _llama(len(tok_S), seed=2)
    with torch.no_grad():  # a confident teacher (a random one is near uniform), so KD has something to teach
        teacher.lm_head.weight.mul_(40.0)
    config = TrainingConfig(output_dir=str(tmp_path / "out"), max_steps=steps, batch_size=4, learning_rate=3e-3,
                            trackers=[], progress_bar=False, **training)
    collate = CrossTokenizerLMCollator(tok_S, tok_T, max_length=24)
    return Trainer(student, config, dist, [{"text": t} for t in TEXTS * 2], teacher=teacher, collate_fn=collate)


def _reference(strategy_kind, batch, student, teacher, temperature):
    """The KD sum from full forwards of both models, positions picked by explicit loops."""
    S, T = batch["student"], batch["teacher"]
    with torch.no_grad():
        lp_S = torch.log_softmax(student(input_ids=S["input_ids"], attention_mask=S["attention_mask"]).logits, -1)
        lp_T = torch.log_softmax(teacher(input_ids=T["input_ids"], attention_mask=T["attention_mask"]).logits, -1)
    rows_S, rows_T, span_S, span_T = [], [], [], []
    for b in range(S["input_ids"].shape[0]):
        if strategy_kind == "uld":
            pos_S = [p for p in range(S["input_ids"].shape[1] - 1) if S["labels"][b, p + 1] != -100]
            pos_T = [p for p in range(T["input_ids"].shape[1] - 1) if T["labels"][b, p + 1] != -100]
            n = min(len(pos_S), len(pos_T))
            rows_S += [lp_S[b, p] for p in pos_S[:n]]
            rows_T += [lp_T[b, p] for p in pos_T[:n]]
            continue
        a = batch["alignment"]
        for k in sorted(set(a["student_spans"][b].tolist()) - {-1}):
            tok_S = [p for p, s in enumerate(a["student_spans"][b].tolist()) if s == k]
            tok_T = [p for p, s in enumerate(a["teacher_spans"][b].tolist()) if s == k]
            if not tok_T or min(tok_S) == 0 or min(tok_T) == 0:
                continue
            rows_S.append(lp_S[b, tok_S[0] - 1])
            rows_T.append(lp_T[b, tok_T[0] - 1])
            span_S.append(sum(lp_S[b, p - 1, S["input_ids"][b, p]] for p in tok_S))
            span_T.append(sum(lp_T[b, p - 1, T["input_ids"][b, p]] for p in tok_T))
    if strategy_kind == "uld":
        return uld(torch.stack(rows_S), torch.stack(rows_T), temperature, reduction="sum")
    a = batch["alignment"]
    return aligned_kd(torch.stack(rows_S), torch.stack(rows_T), temperature, shared_S=a["student_shared_ids"],
                      shared_T=a["teacher_shared_ids"], span_logp_S=torch.stack(span_S),
                      span_logp_T=torch.stack(span_T), reduction="sum", shared_weight=1.0, uld_weight=0.5,
                      span_weight=2.0)


@pytest.mark.parametrize("kd_loss", ["uld", "aligned_kd"])
def test_strategy_loss_equals_the_losses_on_full_forwards_and_training_lowers_it(tmp_path, tokenizers, kd_loss):
    kwargs = {"shared_weight": 1.0, "uld_weight": 0.5, "span_weight": 2.0} if kd_loss == "aligned_kd" else {}
    dist = DistillationConfig(strategy="causal_lm", kd_loss=kd_loss, kd_loss_kwargs=kwargs, temperature=2.0,
                              hard_label_weight=0.5)
    trainer = _trainer(tmp_path, dist, tokenizers)
    batch = trainer.collate_fn([{"text": t} for t in TEXTS])
    runner = trainer.teachers["teacher"]
    expected = _reference(kd_loss, batch, trainer.module.student, runner.model, 2.0)
    _, terms, _ = trainer.module(batch, {"teacher": runner(batch)}, 0.0)
    tokens = int((batch["student"]["labels"][:, 1:] != -100).sum())
    assert float(terms["kd"]) * tokens == pytest.approx(float(expected), rel=1e-4)
    assert float(terms["hard_label"]) > 0
    # KD alone: on the same batch, the term falls as the student learns
    dist.hard_label_weight = 0.0
    trainer = _trainer(tmp_path / "kd_only", dist, tokenizers, steps=12)
    kd_before = float(trainer.module(batch, {"teacher": runner(batch)}, 0.0)[1]["kd"])
    assert len(trainer.train()["history"]) == 12
    kd_after = float(trainer.module(batch, {"teacher": runner(batch)}, 0.0)[1]["kd"])
    assert kd_after < 0.95 * kd_before, (kd_before, kd_after)


def test_other_losses_refuse_two_vocabularies_and_name_the_fix(tmp_path, tokenizers):
    trainer = _trainer(tmp_path, DistillationConfig(strategy="causal_lm", kd_loss="forward_kl"), tokenizers)
    with pytest.raises(StrategyError, match="kd_loss: uld or aligned_kd"):
        trainer.train()


@pytest.mark.parametrize("change, field", [
    ({"strategy_options": {"lmbda": 0.5}}, "strategy_options.lmbda"),
    ({"kd_loss_kwargs": {"beta": 0.5}}, "kd_loss_kwargs.beta"),
    ({"probability_shift": True}, "temperature_scheduler")])
def test_cross_tokenizer_config_refusals(change, field):
    with pytest.raises(ConfigError, match=field):
        build_strategy(DistillationConfig(strategy="causal_lm", kd_loss="aligned_kd", **change))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=400, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_cli_trains_a_wordpiece_student_from_a_smollm2_tokenizer_teacher(tmp_path, tokenizers):
    tok_S, tok_T = tokenizers
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    _llama(len(tok_T), seed=1).save_pretrained(teacher)
    tok_T.save_pretrained(teacher)
    _llama(len(tok_S), seed=2).config.save_pretrained(student)  # the student is built from its config
    tok_S.save_pretrained(student)
    for split, texts in (("train", TEXTS * 4), ("dev", TEXTS[:2])):
        (tmp_path / f"{split}.txt").write_text("\n".join(texts) + "\n")
    config = {"teacher": {"path": str(teacher)}, "student": {"path": str(student), "init_from": "random"},
              "data": {"name": "text", "train_file": str(tmp_path / "train.txt"),
                       "dev_file": str(tmp_path / "dev.txt"), "max_length": 24},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 4,
                           "learning_rate": 3e-3, "trackers": [], "progress_bar": False},
              "distillation": {"strategy": "causal_lm", "kd_loss": "aligned_kd", "hard_label_weight": 0.5,
                               "kd_loss_kwargs": {"uld_weight": 0.5}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    run = _cli("train", path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["global_step"] == 3 and math.isfinite(summary["eval"]["perplexity"])
    assert summary["eval"]["tokens"] == int(sum(len(tok_S(t)["input_ids"]) - 1 for t in TEXTS[:2]))
    config["distillation"].update(kd_loss="forward_kl", kd_loss_kwargs={})
    path.write_text(yaml.safe_dump({**config, "training": {**config["training"], "output_dir": str(tmp_path / "o2")}}))
    refused = _cli("train", path)
    assert refused.returncode != 0 and "kd_loss: uld or aligned_kd" in refused.stderr
