"""Tiny causal LMs and a tiny word-level tokenizer, built locally (no hub), for the causal-LM tests."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

WORDS = ("the a cat dog sat ran on under mat log big small red blue and then it was very happy sad "
         "fast slow home park tree sun").split()
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def tiny_tokenizer(folder: Optional[Path] = None, pad: bool = True):
    """A word-level fast tokenizer (30 tokens, BOS prepended), saved to ``folder`` when given."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    kwargs = {"pad_token": "<pad>"} if pad else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", **kwargs)
    if folder is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer


VOCAB = len(SPECIALS) + len(WORDS)


def tiny_llama(layers=2, hidden=32, seed=0, vocab=VOCAB, positions=64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def tiny_gpt2(layers=2, hidden=32, seed=0, vocab=VOCAB, positions=64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=positions,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0)
    return GPT2LMHeadModel(config)


def sentences(n: int, seed: int = 0, words: tuple[int, int] = (4, 10)) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(words[0], words[1], (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)))
    return out


def prompt_pairs(n: int, seed: int = 0) -> list[dict]:
    """Prompt/completion examples of uneven lengths (prompts 2-4 words, completions 2-6)."""
    texts = sentences(n, seed, (4, 10))
    return [{"prompt": " ".join(t.split()[:2 + i % 3]), "completion": " ".join(t.split()[2 + i % 3:])}
            for i, t in enumerate(texts)]
