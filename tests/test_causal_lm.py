"""Causal-LM distillation: chunked KD equals the dense loss, token-normalised accumulation, tiny Llama end to end."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.losses import forward_kl, jsd
from distill_toolkit.losses.chunked import chunked_lm_kd
from distill_toolkit.strategies import StrategyError

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
    from distill_toolkit.strategies.causal_lm import next_token_targets

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
