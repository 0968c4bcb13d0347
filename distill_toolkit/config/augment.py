"""``data.augment``: the augmented transfer set of Tang et al. (2019), as values (see
:mod:`distill_toolkit.data.augment` for what each one does)."""

from __future__ import annotations

from dataclasses import dataclass

from distill_toolkit.config.base import Serializable, check, check_types, is_finite_number, is_int

REPLACE_WITH = ("vocabulary", "embedding")


@dataclass
class AugmentSpec(Serializable):
    """How the training texts are augmented; every augmented example is labelled by the teacher only.

    - ``factor``: augmented copies made of each training example (the originals are kept), so the
      training split grows ``1 + factor`` times.
    - ``p_mask``: each word becomes the tokenizer's mask token (``[MASK]``) with this probability.
    - ``p_replace``: each word (not masked) is replaced with this probability by another word:
      ``replace_with: vocabulary`` draws one of the training split's words uniformly;
      ``replace_with: embedding`` takes its nearest neighbour among those words in the teacher's
      input-embedding space (cosine of mean word-piece embeddings; no external model, no POS tagger).
    - ``p_ngram``: with this probability per example, only a random n-gram of it is kept,
      ``n`` uniform in ``1 .. max_ngram``.
    - ``seed``: the augmented texts depend on it and on each example's position alone.
    """

    factor: int = 1
    p_mask: float = 0.1
    p_replace: float = 0.1
    p_ngram: float = 0.25
    #: the longest n-gram kept by `p_ngram`
    max_ngram: int = 5
    #: where replacement words come from: `vocabulary` (uniform over the training words) or `embedding` (nearest in
    #: the teacher's input embeddings)
    replace_with: str = "vocabulary"
    seed: int = 0

    def validate(self, where: str = "data.augment") -> None:
        """Check the values; a :class:`ConfigError` names the field and the fix."""
        check_types(self, where)
        check(is_int(self.factor) and self.factor >= 1, f"{where}.factor", f"must be an integer >= 1, got "
              f"{self.factor!r}", "set e.g. `factor: 4` (four augmented copies of each example), or remove augment")
        for name in ("p_mask", "p_replace", "p_ngram"):
            value = getattr(self, name)
            check(is_finite_number(value) and 0 <= value <= 1, f"{where}.{name}",
                  f"must be a probability in [0, 1], got {value!r}", f"set e.g. `{name}: 0.1`")
        check(self.p_mask + self.p_replace <= 1, f"{where}.p_replace",
              f"p_mask + p_replace is {self.p_mask + self.p_replace}, above 1 (a word is masked or replaced, not both)",
              "lower one of them")
        check(is_int(self.max_ngram) and self.max_ngram >= 1, f"{where}.max_ngram", "must be an integer >= 1",
              "set e.g. `max_ngram: 5` (Tang et al.)")
        check(self.replace_with in REPLACE_WITH, f"{where}.replace_with", f"unknown value {self.replace_with!r}",
              f"use one of {', '.join(REPLACE_WITH)}")
        check(is_int(self.seed), f"{where}.seed", "must be an integer", "set e.g. `seed: 0`")
