"""Causal-LM distillation: chunked KD equals the dense loss, token-normalised accumulation, tiny Llama end to end."""

import pytest
import torch
from textbrewer.distiller_utils import probability_shift_
from transformers import LlamaConfig, LlamaForCausalLM

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.engine.module import DistillationModule
from distill_toolkit.losses import SparseTeacher, forward_kl, jsd
from distill_toolkit.losses.chunked import chunked_lm_kd, chunked_row_map
from distill_toolkit.strategies import KDObjective, StrategyError, build_strategy
from distill_toolkit.strategies.causal_lm import next_token_targets
from distill_toolkit.teachers import TeacherRunner

VOCAB = 96


def tiny_llama(layers=2, hidden=32, seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(config)


class Texts(torch.utils.data.Dataset):
    """Token sequences of uneven lengths; the first 3 tokens of each are a 'prompt' (label -100)."""

    def __init__(self, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = [torch.randint(1, VOCAB, (int(torch.randint(5, 14, (1,), generator=g)),), generator=g).tolist()
                      for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(seqs):
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("loss, kwargs", [("forward_kl", {}), ("jsd", {"beta": 0.3})])
def test_chunked_kd_equals_dense(loss, kwargs):
    torch.manual_seed(0)
    h_S = torch.randn(37, 16, requires_grad=True)
    h_T = torch.randn(37, 24)
    head_S, head_T = torch.nn.Linear(16, 50), torch.nn.Linear(24, 50)
    labels = torch.randint(0, 50, (37,))
    kd, ce = chunked_lm_kd(h_S, head_S, h_T, head_T, loss=loss, temperature=2.0, chunk_size=8, labels=labels,
                           **kwargs)
    fn = {"forward_kl": forward_kl, "jsd": jsd}[loss]
    dense = fn(head_S(h_S), head_T(h_T).detach(), 2.0, **kwargs) * 37
    dense_ce = torch.nn.functional.cross_entropy(head_S(h_S), labels, reduction="sum")
    torch.testing.assert_close(kd, dense)
    torch.testing.assert_close(ce, dense_ce)
    grad_chunked = torch.autograd.grad(kd + ce, h_S)[0]
    grad_dense = torch.autograd.grad(dense + dense_ce, h_S)[0]
    torch.testing.assert_close(grad_chunked, grad_dense)


def _first_step_grads(tmp_path, batch_size, accum):
    grads = {}
    cfg = TrainingConfig(output_dir=str(tmp_path), max_steps=1, batch_size=batch_size,
                         gradient_accumulation_steps=accum, max_grad_norm=None, trackers=[], progress_bar=False,
                         eval_every_epochs=None, seed=0)
    distill = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=2.0, hard_label_weight=0.5)
    trainer = Trainer(tiny_llama(2, 32, seed=2), cfg, distill, Texts(8), teacher=tiny_llama(3, 48, seed=1),
                      collate_fn=collate)
    original_setup = trainer._setup

    def setup_with_grad_capture():
        original_setup()
        inner = trainer.optimizer.optimizer
        student = trainer.accelerator.unwrap_model(trainer.module).student

        def capture(optimizer, args, kwargs):
            for name, p in student.named_parameters():
                grads[name] = p.grad.detach().clone()

        inner.register_step_pre_hook(capture)

    trainer._setup = setup_with_grad_capture
    result = trainer.train()
    return grads, result


def test_uneven_micro_batches_give_the_big_batch_gradient(tmp_path):
    """4 sequences of uneven length as one batch, or as 2 micro-batches of 2: same gradient (TRL's bug)."""
    big, result = _first_step_grads(tmp_path / "big", 4, 1)
    small, _ = _first_step_grads(tmp_path / "small", 2, 2)
    assert set(result["history"][0]) >= {"train/kd", "train/hard_label"}
    assert big.keys() == small.keys() and big
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6)


def test_prompt_and_padding_positions_do_not_count():
    batch = collate([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 10, 11]])
    mask, targets = next_token_targets(batch)
    # sequence 0: 5 tokens, 3-token prompt -> predicts tokens 4 and 5 only
    assert mask[0].tolist() == [False, False, True, True, False, False]
    assert mask[1].tolist() == [False, False, True, True, True, True]
    assert targets[1, 2:].tolist() == [8, 9, 10, 11]


def test_vocabulary_mismatch_points_to_cross_tokenizer_route(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), max_steps=1, batch_size=4, trackers=[], progress_bar=False,
                         eval_every_epochs=None)
    trainer = Trainer(tiny_llama(2, 32, vocab=VOCAB), cfg, DistillationConfig(strategy="causal_lm"), Texts(8),
                      teacher=tiny_llama(2, 32, vocab=VOCAB + 8), collate_fn=collate)
    with pytest.raises(StrategyError, match="vocabulary.*cross-tokenizer"):
        trainer.train()


def test_tiny_llama_distils_end_to_end(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), max_steps=12, batch_size=4, learning_rate=3e-3, trackers=[],
                         progress_bar=False, eval_every_epochs=None)
    teacher = tiny_llama(3, 48, seed=1)
    distill = DistillationConfig(strategy="causal_lm", kd_loss="reverse_kl", temperature=1.0)
    result = Trainer(tiny_llama(2, 32, seed=2), cfg, distill, Texts(16), teacher=teacher, collate_fn=collate).train()
    kd = [row["train/kd"] for row in result["history"]]
    assert kd[-1] < kd[0]
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_unreadable_gguf_file_is_a_clear_error(tmp_path):
    from distill_toolkit.models import GGUFError, load_gguf_causal_lm

    with pytest.raises(GGUFError, match="not found"):
        load_gguf_causal_lm(tmp_path / "missing.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(GGUFError, match=r"cannot read .*broken.gguf.*re-fetch"):
        load_gguf_causal_lm(broken)


def test_gguf_file_without_the_models_tensors_is_refused(tmp_path):
    """A well-formed GGUF header naming a Llama but holding no tensors: Transformers would initialise every
    weight at random and carry on; the loader refuses it instead."""
    import gguf  # the test extra
    from distill_toolkit.models import GGUFError, load_gguf_causal_lm

    path = tmp_path / "partial.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"partial.gguf lacks \d+ of the model's tensors .*re-fetch"):
        load_gguf_causal_lm(path)


# ---- the KD objective's settings on the causal-LM route -------------------------------------------
def test_chunked_kd_takes_per_row_temperatures_and_the_probability_shift():
    torch.manual_seed(0)
    h_S, h_T = torch.randn(37, 16, requires_grad=True), torch.randn(37, 24)
    head_S, head_T = torch.nn.Linear(16, 50), torch.nn.Linear(24, 50)
    tau, y = 1.0 + torch.rand(37), torch.randint(0, 50, (37,))
    kd, _ = chunked_lm_kd(h_S, head_S, h_T, head_T, loss="forward_kl", temperature=tau, chunk_size=8, shift_labels=y)
    shifted = probability_shift_(head_T(h_T).detach().clone(), y.clone())
    torch.testing.assert_close(kd, forward_kl(head_S(h_S), shifted, tau) * 37)
    stats = chunked_row_map(h_S, head_S, h_T, head_T, lambda s, t: t.argmax(-1).float(), chunk_size=8,
                            shift_labels=y)
    assert torch.equal(stats, y.float())  # the shifted teacher's argmax is the label, row by row


def _causal_lm_step(distill, batch, teacher, student):
    """The causal_lm strategy through the calls the Trainer makes: ``(loss, terms)`` at progress 0."""
    strategy = build_strategy(distill)
    module = DistillationModule(student, strategy)
    runner = TeacherRunner(teacher, "teacher", strategy.feature_keys()["teacher"], strategy=strategy)
    with torch.no_grad():
        strategy.setup(module.student_view(batch), {"teacher": runner(batch)})
    loss, terms, _ = module(batch, {"teacher": runner(batch)}, 0.0)
    return loss, terms


def _dense_rows(batch, teacher, student):
    """Full-vocabulary logits of both models and the next tokens, at the positions that count."""
    mask, targets = next_token_targets(batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        l_T = teacher(**inputs).logits[:, :-1][mask]
    return student(**inputs).logits[:, :-1][mask], l_T, targets[mask]


@pytest.mark.parametrize("chunk_size", [5, 1024])
def test_causal_lm_flsw_gives_each_token_its_temperature(chunk_size):
    """flsw over all the micro-batch's tokens (TextBrewer's rule after row selection), whatever the chunk size."""
    teacher, student = tiny_llama(3, 48, seed=1), tiny_llama(2, 32, seed=2)
    batch = collate([Texts(4)[i] for i in range(4)])
    distill = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=2.0, hard_label_weight=0.5,
                                 temperature_scheduler=["flsw", 1.0, 2.0], strategy_options={"chunk_size": chunk_size})
    loss, terms = _causal_lm_step(distill, batch, teacher, student)
    l_S, l_T, y = _dense_rows(batch, teacher, student)
    v = l_S.detach() / (l_S.detach().norm(dim=-1, keepdim=True) + 1e-4)
    t = l_T / (l_T.norm(dim=-1, keepdim=True) + 1e-4)
    w = (1 - (v * t).sum(-1)) ** 2.0
    tau = 2.0 + (w.mean() - w) * 1.0
    assert tau.std() > 0  # really one temperature per token
    n = len(y)
    kd = forward_kl(l_S, l_T, tau) * n
    ce = torch.nn.functional.cross_entropy(l_S, y, reduction="sum")
    torch.testing.assert_close(loss, kd + 0.5 * ce)
    torch.testing.assert_close(terms["kd"], kd.detach() / n)
    torch.testing.assert_close(terms["hard_label"], ce.detach() / n)


def test_causal_lm_probability_shift_swaps_on_the_next_tokens():
    teacher, student = tiny_llama(3, 48, seed=1), tiny_llama(2, 32, seed=2)
    batch = collate([Texts(4, seed=1)[i] for i in range(4)])
    base = dict(strategy="causal_lm", kd_loss="forward_kl", temperature=2.0)
    shifted_loss, _ = _causal_lm_step(DistillationConfig(**base, probability_shift=True), batch, teacher, student)
    plain_loss, _ = _causal_lm_step(DistillationConfig(**base), batch, teacher, student)
    l_S, l_T, y = _dense_rows(batch, teacher, student)
    expected = forward_kl(l_S, probability_shift_(l_T.clone(), y.clone()), 2.0) * len(y)
    torch.testing.assert_close(shifted_loss, expected)
    torch.testing.assert_close(plain_loss, forward_kl(l_S, l_T, 2.0) * len(y))
    assert not torch.allclose(shifted_loss, plain_loss)


@pytest.mark.parametrize("setting, message", [
    ({"probability_shift": True}, r"probability_shift .*top-k.* Fix: build the cache without top_k"),
    ({"temperature_scheduler": ["flsw", 1, 2]}, r"temperature_scheduler 'flsw' .*top-k. Fix: use `constant` or "
                                                r"\[cwsm, beta\]"),
])
def test_a_topk_teacher_refuses_what_needs_full_logits(setting, message):
    sparse = SparseTeacher(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(StrategyError, match=message):
        KDObjective(DistillationConfig(**setting)).check_kd_source(sparse)
    KDObjective(DistillationConfig(temperature_scheduler=["cwsm", 1])).check_kd_source(sparse)  # student-only: fine
