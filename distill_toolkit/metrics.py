"""Exact evaluation metrics, usable as the Trainer's ``metric_fn(predictions, labels) -> {name: value}``.

The Trainer hands a metric the student's decisions and the gold labels as numpy arrays, with
``-100`` wherever a position carries no label (padding, special tokens, word pieces after a
word's first):

- sequence classification: ``(N,)`` argmax class ids and ``(N,)`` labels -> :func:`accuracy`;
- token classification: ``(N, T)`` class ids and ``(N, T)`` labels -> :func:`entity_f1`
  (bind the tag names: ``functools.partial(entity_f1, label_names=names)``);
- multi-label classification: ``(N, L)`` 0/1 decisions (``logits > 0``, i.e. sigmoid > 0.5)
  and ``(N, L)`` 0/1 targets -> :func:`multi_label_f1`.

Undefined ratios (no predicted entity, no gold entity, a label never predicted nor present)
count as 0, as in seqeval, conlleval and scikit-learn's default.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["IGNORE_INDEX", "accuracy", "bio_entities", "entity_f1", "entity_scores", "multi_label_f1"]

IGNORE_INDEX = -100


def _arrays(predictions, labels, fn: str) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"{fn}: predictions {predictions.shape} and labels {labels.shape} must have the same "
                         "shape. Fix: pass one prediction per label position (argmax ids, or 0/1 decisions)")
    return predictions, labels


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def accuracy(predictions, labels) -> dict:
    """Fraction of positions whose label is not -100 where the prediction equals the label.

    Returns ``{"accuracy": nan}`` when every label is -100 (nothing to score).
    """
    predictions, labels = _arrays(predictions, labels, "accuracy")
    keep = labels != IGNORE_INDEX
    return {"accuracy": float((predictions[keep] == labels[keep]).mean()) if keep.any() else float("nan")}


# ---------------------------------------------------------------------------- entity-level F1

def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities ``(type, start, end)`` (``end`` inclusive) of one sentence of BIO tags.

    CoNLL semantics, as conlleval and seqeval's default mode: ``B-x`` starts an entity; ``I-x``
    continues one of type ``x`` and otherwise (after ``O``, at the start, or after another type)
    starts a new one; ``O`` ends it.

    Raises:
        ValueError: a tag is neither ``O`` nor ``B-``/``I-`` prefixed.
    """
    entities, start, kind = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        if tag == "O":
            prefix, tag_type = "O", None
        elif len(tag) > 2 and tag[:2] in ("B-", "I-"):
            prefix, tag_type = tag[0], tag[2:]
        else:
            raise ValueError(f"tag {tag!r} at position {i} is not BIO. Fix: use 'O', 'B-<type>' or 'I-<type>' "
                             "(convert BIOES or IO tags to BIO first)")
        continues = prefix == "I" and kind == tag_type
        if kind is not None and not continues:
            entities.append((kind, start, i - 1))
            kind = None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, tag_type
    return entities


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Micro entity precision, recall and F1 over sentences of BIO tag strings.

    An entity counts as found only if its type, start and end all match a gold entity of the
    same sentence.

    Raises:
        ValueError: a different number of sentences, or of tags in one sentence.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"entity_scores: {len(gold)} gold sentences but {len(predicted)} predicted. Fix: pass one "
                         "predicted tag sequence per gold sentence")
    found = n_gold = n_pred = 0
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"entity_scores: sentence {i} has {len(g)} gold tags but {len(p)} predicted. Fix: "
                             "predict one tag per word")
        gold_set, pred_set = set(bio_entities(g)), set(bio_entities(p))
        found += len(gold_set & pred_set)
        n_gold += len(gold_set)
        n_pred += len(pred_set)
    precision, recall = _ratio(found, n_pred), _ratio(found, n_gold)
    return {"entity_f1": _f1(precision, recall), "entity_precision": precision, "entity_recall": recall,
            "entities_gold": n_gold, "entities_predicted": n_pred}


def entity_f1(predictions, labels, label_names: Sequence[str]) -> dict:
    """Entity-level micro F1 of token-classification predictions (a Trainer metric).

    Args:
        predictions: ``(N, T)`` predicted class ids.
        labels: ``(N, T)`` gold class ids, ``-100`` where there is nothing to score; those
            positions (padding, special tokens, later word pieces of a word) are dropped, so each
            row becomes the sentence's word-level tag sequence.
        label_names: tag name of each class id (e.g. ``dataset.features["ner_tags"].feature.names``).

    Returns:
        ``entity_f1``, ``entity_precision``, ``entity_recall`` (see :func:`entity_scores`), and
        the entity counts ``entities_gold`` and ``entities_predicted``.
    """
    predictions, labels = _arrays(predictions, labels, "entity_f1")
    if labels.ndim != 2:
        raise ValueError(f"entity_f1: expected (sentences, positions) arrays, got shape {labels.shape}. Fix: use "
                         "accuracy for sequence classification")
    names = list(label_names)
    keep = labels != IGNORE_INDEX
    for what, ids in (("labels", labels[keep]), ("predictions", predictions[keep])):
        bad = ids[(ids < 0) | (ids >= len(names))]
        if bad.size:
            raise ValueError(f"entity_f1: {what} hold class id {int(bad[0])} but label_names has {len(names)} names. "
                             "Fix: pass the tag names of the model's classes, in id order")
    gold = [[names[i] for i in row[mask]] for row, mask in zip(labels, keep)]
    predicted = [[names[i] for i in row[mask]] for row, mask in zip(predictions, keep)]
    return entity_scores(gold, predicted)


# ---------------------------------------------------------------------------- multi-label F1

def multi_label_f1(predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
    """Micro and macro F1 of multi-label decisions (a Trainer metric).

    Args:
        predictions: ``(N, L)`` 0/1 decisions; the Trainer gives ``logits > 0`` (sigmoid > 0.5).
            From probabilities, pass ``probs > 0.5``.
        labels: ``(N, L)`` 0/1 targets (floats are fine); entries equal to -100 are not scored.
        label_names: if given, the F1 of each label is returned too, as ``f1/<name>``.

    Returns:
        ``micro_f1`` (from true/false positives and false negatives pooled over all labels) and
        ``macro_f1`` (the unweighted mean of the per-label F1s; a label with no positive target and
        no positive prediction scores 0).
    """
    predictions, labels = _arrays(predictions, labels, "multi_label_f1")
    if labels.ndim != 2:
        raise ValueError(f"multi_label_f1: expected (examples, labels) arrays, got shape {labels.shape}. Fix: pass "
                         "one row of 0/1 targets per example")
    keep = labels != IGNORE_INDEX
    if not np.isin(predictions[keep], (0, 1)).all():
        raise ValueError("multi_label_f1: predictions must be 0/1 decisions. Fix: threshold the outputs first, "
                         "e.g. (logits > 0) or (probabilities > 0.5)")
    if not np.isin(labels[keep], (0, 1)).all():
        raise ValueError("multi_label_f1: labels must be 0/1 (or -100 to ignore an entry). Fix: encode each label "
                         "as an independent 0/1 target")
    pred, gold = (predictions == 1) & keep, (labels == 1) & keep
    tp = (pred & gold).sum(axis=0)
    fp = (pred & ~gold).sum(axis=0)
    fn = (~pred & gold & keep).sum(axis=0)
    per_label = [_ratio(2 * t, 2 * t + p + n) for t, p, n in zip(tp, fp, fn)]
    out = {"micro_f1": _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
           "macro_f1": float(np.mean(per_label)) if per_label else 0.0}
    if label_names is not None:
        if len(label_names) != labels.shape[1]:
            raise ValueError(f"multi_label_f1: {len(label_names)} label_names for {labels.shape[1]} labels. Fix: "
                             "name every label column, in order")
        out.update({f"f1/{name}": value for name, value in zip(label_names, per_label)})
    return out
