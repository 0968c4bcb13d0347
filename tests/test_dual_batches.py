"""Separate student/teacher batches across tokenizers: offsets alignment on a hand-made example,
sequence- and token-level distillation through the one loop, a cache over dual batches, bad input."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (BertConfig, BertForSequenceClassification, BertForTokenClassification, BertTokenizerFast,
                          BertTokenizerLegacy)

from distill_toolkit import DistillationConfig, Match, Trainer, TrainingConfig
from distill_toolkit.data.cache import TeacherCacheError, with_ids
from distill_toolkit.data.dual import DualTokenizerCollator, align_view, alignment_matrices
from distill_toolkit.features import ModelView
from distill_toolkit.teachers import build_teacher_cache

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# student: "play ##ing"; teacher: "playing" whole but "ga ##me" for game
STUDENT_VOCAB = SPECIAL + ["play", "##ing", "the", "game", "is", "fun", "good", "bad", "movie", "."]
TEACHER_VOCAB = SPECIAL + ["playing", "the", "ga", "##me", "is", "f", "##un", "good", "ba", "##d", "movie", "."]


def _tokenizer(tmp_path: Path, name: str, vocab: list) -> BertTokenizerFast:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast.from_pretrained(folder)


@pytest.fixture
def tokenizers(tmp_path):
    return _tokenizer(tmp_path, "student", STUDENT_VOCAB), _tokenizer(tmp_path, "teacher", TEACHER_VOCAB)


def test_alignment_on_a_hand_made_example(tokenizers):
    student_tok, teacher_tok = tokenizers
    batch = DualTokenizerCollator(student_tok, teacher_tok, align="first")([{"text": "playing the game"}])
    assert student_tok.convert_ids_to_tokens(batch["student"]["input_ids"][0]) == \
        ["[CLS]", "play", "##ing", "the", "game", "[SEP]"]
    assert teacher_tok.convert_ids_to_tokens(batch["teacher"]["input_ids"][0]) == \
        ["[CLS]", "playing", "the", "ga", "##me", "[SEP]"]
    first = batch["alignment"]["weights"][0]
    expected_first = torch.tensor([[1, 0, 0, 0, 0, 0],   # [CLS] -> [CLS]
                                   [0, 1, 0, 0, 0, 0],   # play -> playing
                                   [0, 1, 0, 0, 0, 0],   # ##ing -> playing
                                   [0, 0, 1, 0, 0, 0],   # the -> the
                                   [0, 0, 0, 1, 0, 0],   # game -> ga (first sub-token)
                                   [0, 0, 0, 0, 0, 1]], dtype=torch.float)  # [SEP] -> [SEP]
    assert torch.equal(first, expected_first)
    mean = DualTokenizerCollator(student_tok, teacher_tok, align="mean")([{"text": "playing the game"}])
    assert mean["alignment"]["weights"][0][4].tolist() == [0, 0, 0, 0.5, 0.5, 0]  # game -> mean(ga, ##me)
    keys = mean["alignment"]["keys"][0]
    assert keys[:, 1].tolist() == [0, 0.5, 0.5, 0, 0, 0]  # "playing"'s mass split between play / ##ing
    assert keys[4, 3] == keys[4, 4] == 1  # "game" collects both "ga" and "##me"

    # the teacher's view mapped onto the student's positions
    logits = torch.arange(6 * 3, dtype=torch.float).reshape(1, 6, 3)
    hidden = torch.randn(1, 6, 8)
    attention = torch.softmax(torch.randn(1, 2, 6, 6), dim=-1)
    view = align_view(ModelView(logits=[logits], features={"hidden:1": hidden, "attention:0": attention}), mean,
                      "token_classification")
    torch.testing.assert_close(view.logits[0][0, 4], logits[0, 3:5].mean(0))
    torch.testing.assert_close(view.logits[0][0, 1], logits[0, 1])
    torch.testing.assert_close(view.features["hidden:1"][0, 4], hidden[0, 3:5].mean(0))
    aligned = view.features["attention:0"]
    assert aligned.shape == (1, 2, 6, 6)
    torch.testing.assert_close(aligned.sum(-1), torch.ones(1, 2, 6))  # every teacher key is mapped: rows sum to 1
    torch.testing.assert_close(aligned[0, :, 0, 4], attention[0, :, 0, 3] + attention[0, :, 0, 4])
    assert torch.equal(view.inputs_mask, mean["student"]["attention_mask"])
    # sequence-level logits are not positions: left as they are
    pooled = align_view(ModelView(logits=[torch.randn(1, 6)]), mean, "sequence_classification")
    assert pooled.logits[0].shape == (1, 6)


def test_word_labels_and_pairs(tokenizers):
    student_tok, teacher_tok = tokenizers
    collator = DualTokenizerCollator(student_tok, teacher_tok, words_column="tokens", label_column="tags",
                                     align="first", max_length=16, teacher_max_length=4)
    batch = collator([{"tokens": ["playing", "the", "game"], "tags": [1, 2, 3], "id": 7}])
    # first sub-token of each word carries its tag; "game" is cut off the teacher's 4 tokens, so it is unlabelled
    assert batch["student"]["labels"][0].tolist() == [-100, 1, -100, 2, -100, -100]
    assert collator.unaligned_labels == 1 and batch["id"] == [7] and torch.equal(batch["labels"],
                                                                                batch["student"]["labels"])
    assert "labels" not in batch["teacher"]
    # words are aligned within the same word only (offsets of pre-split words restart at 0)
    spans_s = [(None, 0, 0), (0, 0, 3), (1, 0, 3), (None, 0, 0)]
    spans_t = [(None, 0, 0), (1, 0, 3), (0, 0, 3), (None, 0, 0)]
    weights, _ = alignment_matrices(spans_s, spans_t, "first")
    assert weights[1].tolist() == [0, 0, 1, 0] and weights[2].tolist() == [0, 1, 0, 0]
    # text pairs: segments are aligned with segments
    pair = DualTokenizerCollator(student_tok, teacher_tok, text_pair_column="second", align="mean")(
        [{"text": "the game", "second": "the movie", "label": 1}])
    w = pair["alignment"]["weights"][0]
    tokens_s = student_tok.convert_ids_to_tokens(pair["student"]["input_ids"][0])
    tokens_t = teacher_tok.convert_ids_to_tokens(pair["teacher"]["input_ids"][0])
    second_the_s = len(tokens_s) - 3
    assert tokens_s[second_the_s] == "the" and tokens_t[int(w[second_the_s].argmax())] == "the"
    assert int(w[second_the_s].argmax()) == len(tokens_t) - 3  # the second "the", not the first
    assert pair["labels"].tolist() == [1]


def test_bad_input(tokenizers):
    student_tok, teacher_tok = tokenizers
    with pytest.raises(ValueError, match=r"no field\(s\) \['text'\] \(fields: \['input_ids', 'label'\]\).*text_column="):
        DualTokenizerCollator(student_tok, teacher_tok)([{"input_ids": [1, 2], "label": 0}])
    with pytest.raises(ValueError, match=r"no field\(s\) \['tokens'\].*words_column="):
        DualTokenizerCollator(student_tok, teacher_tok, words_column="tokens", align="first")([{"text": "a"}])
    with pytest.raises(ValueError, match="some examples of the batch have 'label' and some do not"):
        DualTokenizerCollator(student_tok, teacher_tok)([{"text": "the", "label": 0}, {"text": "the"}])

    # a real Python ("slow") tokenizer: it silently ignores return_offsets_mapping, so the collator must refuse it
    slow = BertTokenizerLegacy(vocab_file=str(Path(teacher_tok.name_or_path) / "vocab.txt"))
    assert not slow.is_fast and "offset_mapping" not in slow("the game", return_offsets_mapping=True)
    with pytest.raises(ValueError, match="character offsets, which only fast tokenizers provide.*teacher tokenizer "
                                         "BertTokenizerLegacy.*use_fast=True"):
        DualTokenizerCollator(student_tok, slow, align="first")
    with pytest.raises(ValueError, match="word labels need word_ids\\(\\).*student tokenizer BertTokenizerLegacy"):
        DualTokenizerCollator(slow, teacher_tok, words_column="tokens", label_column="tags")
    batch = DualTokenizerCollator(student_tok, slow)([{"text": "the game", "label": 1}])  # sequence level: no offsets
    assert slow.convert_ids_to_tokens(batch["teacher"]["input_ids"][0]) == ["[CLS]", "the", "ga", "##me", "[SEP]"]
    with pytest.raises(ValueError, match="align: unknown 'last'"):
        DualTokenizerCollator(student_tok, teacher_tok, align="last")


# ----------------------------------------------------------------------------- through the loop

WORDS = ["playing", "the", "game", "is", "fun", "good", "bad", "movie", "."]


def _sentences(n, seed=0, words=False):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        picked = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (int(torch.randint(3, 8, (1,), generator=g)),),
                                                        generator=g)]
        if words:
            items.append({"id": i, "tokens": picked, "tags": [int(w in ("good", "fun")) for w in picked]})
        else:
            items.append({"id": i, "text": " ".join(picked), "label": int("good" in picked or "fun" in picked)})
    return items


def _bert(cls, vocab, layers, hidden, seed, **kw):
    torch.manual_seed(seed)
    return cls(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, attn_implementation="eager", **kw))


def _training(out, **kw):
    return TrainingConfig(output_dir=str(out), max_steps=4, batch_size=8, learning_rate=1e-3, trackers=[],
                          progress_bar=False, eval_every_epochs=None, seed=0, **kw)


def test_token_level_kd_and_hidden_matches_across_tokenizers(tmp_path, tokenizers):
    student_tok, teacher_tok = tokenizers
    collator = DualTokenizerCollator(student_tok, teacher_tok, words_column="tokens", label_column="tags",
                                     align="mean")
    dist = DistillationConfig(task="token_classification", hard_label_weight=0.5, matches=[
        Match(teacher_layer=2, student_layer=1, projection="linear"),
        Match(teacher_layer=1, student_layer=0, feature="attention", loss="attention_mse_sum")])
    teacher = _bert(BertForTokenClassification, TEACHER_VOCAB, 2, 32, seed=1, num_labels=2)
    student = _bert(BertForTokenClassification, STUDENT_VOCAB, 1, 16, seed=2, num_labels=2)
    result = Trainer(student, _training(tmp_path), dist, _sentences(32, words=True), teacher=teacher,
                     eval_data=_sentences(8, seed=1, words=True), collate_fn=collator).train()
    last = result["history"][-1]
    assert {"train/kd", "train/hard_label", "train/hidden_mse/S1-T2", "train/attention_mse_sum/S0-T1"} <= set(last)
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert 0 <= result["eval"]["accuracy"] <= 1


def test_sequence_level_dual_batches_online_equals_cached(tmp_path, tokenizers):
    student_tok, teacher_tok = tokenizers
    collator = DualTokenizerCollator(student_tok, teacher_tok, max_length=16)
    dist = DistillationConfig(temperature=2.0, hard_label_weight=0.5,
                              matches=[Match(teacher_layer=2, student_layer=1, feature="hidden", loss="pkd",
                                             projection="linear")])
    data = _sentences(24)
    teacher = lambda: _bert(BertForSequenceClassification, TEACHER_VOCAB, 2, 32, seed=1)  # noqa: E731
    student = lambda: _bert(BertForSequenceClassification, STUDENT_VOCAB, 1, 16, seed=2)  # noqa: E731
    Trainer(student(), _training(tmp_path / "online"), dist, data, teacher=teacher(), collate_fn=collator).train()
    cache = build_teacher_cache(teacher(), data, tmp_path / "cache", collate_fn=collator, distillation=dist,
                                tokenizer=teacher_tok)
    Trainer(student(), _training(tmp_path / "cached"), dist, data, teacher=cache, collate_fn=collator).train()
    a = load_file(str(tmp_path / "online" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    # the collator's tokenizers are part of the fingerprint
    other = DualTokenizerCollator(student_tok, student_tok, max_length=16)
    with pytest.raises(TeacherCacheError, match="collator's settings"):
        cache.check(collate_fn=other)
    assert with_ids(data) is not None
