"""distill_toolkit.metrics: hand-computed values on fixed predictions, seqeval / scikit-learn as references."""

import numpy as np
import pytest

from distill_toolkit.metrics import accuracy, bio_entities, entity_f1, entity_scores, multi_label_f1

NAMES = ["O", "B-per", "I-per", "B-loc", "I-loc"]
O, BP, IP, BL, IL, X = 0, 1, 2, 3, 4, -100


# ------------------------------------------------------------------------------ accuracy

def test_accuracy_ignores_minus_100():
    preds = np.array([1, 0, 1, 1, 0])
    labels = np.array([1, 1, X, 1, X])
    assert accuracy(preds, labels) == {"accuracy": 2 / 3}


def test_accuracy_token_level_and_empty():
    preds = np.array([[1, 2, 0], [0, 0, 0]])
    labels = np.array([[1, X, 1], [0, X, X]])
    assert accuracy(preds, labels)["accuracy"] == pytest.approx(2 / 3)
    assert np.isnan(accuracy(np.array([1]), np.array([X]))["accuracy"])


def test_accuracy_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="accuracy: predictions .* same shape"):
        accuracy(np.zeros(3), np.zeros(4))


def test_trainer_default_metric_is_this_accuracy():
    from distill_toolkit.engine import loop

    assert loop.accuracy is accuracy


# ------------------------------------------------------------------------------ BIO entities

@pytest.mark.parametrize("tags, expected", [
    (["B-per", "I-per", "O", "B-loc"], [("per", 0, 1), ("loc", 3, 3)]),
    (["I-per", "I-per", "O"], [("per", 0, 1)]),                       # I- at the start opens an entity
    (["O", "I-loc", "B-loc", "I-loc"], [("loc", 1, 1), ("loc", 2, 3)]),  # I- after O opens; B- splits
    (["B-per", "I-loc", "I-loc"], [("per", 0, 0), ("loc", 1, 2)]),    # I- of another type opens a new one
    (["B-per", "B-per"], [("per", 0, 0), ("per", 1, 1)]),
    (["B-geo-loc", "I-geo-loc"], [("geo-loc", 0, 1)]),                # types may contain '-'
    (["O", "O"], []),
    ([], []),
])
def test_bio_entities(tags, expected):
    assert bio_entities(tags) == expected


def test_bio_rejects_other_schemes():
    with pytest.raises(ValueError, match="'S-per' at position 1 is not BIO"):
        bio_entities(["O", "S-per"])


# ------------------------------------------------------------------------------ entity F1

def test_entity_f1_hand_computed():
    # sentence 1: gold per[0-1], loc[3]; predicted per[0-1] (right), loc[3-4] (wrong end)
    # sentence 2: gold loc[1]; predicted per[0] (spurious), loc[1] (right)
    # found 2, gold 3, predicted 4 -> P = 1/2, R = 2/3, F1 = 4/7
    gold = [["B-per", "I-per", "O", "B-loc", "O"], ["O", "B-loc"]]
    pred = [["B-per", "I-per", "O", "B-loc", "I-loc"], ["B-per", "B-loc"]]
    scores = entity_scores(gold, pred)
    assert scores["entity_precision"] == pytest.approx(1 / 2)
    assert scores["entity_recall"] == pytest.approx(2 / 3)
    assert scores["entity_f1"] == pytest.approx(4 / 7)
    assert (scores["entities_gold"], scores["entities_predicted"]) == (3, 4)


def test_entity_f1_on_ids_drops_ignored_positions():
    # Word pieces after a word's first, special tokens and padding carry label -100: whatever is
    # predicted there must not count. Row 0 words: [CLS] Jo ##hn lives in Pa ##ris [SEP]
    labels = np.array([[X, BP, X, O, O, BL, X, X],
                       [X, BL, IL, X, X, X, X, X]])
    preds = np.array([[BL, BP, BL, O, O, BL, BP, IL],   # garbage at ignored positions
                      [O, BL, IL, IP, BP, O, O, O]])
    scores = entity_f1(preds, labels, NAMES)
    assert scores["entity_f1"] == 1.0
    assert (scores["entities_gold"], scores["entities_predicted"]) == (3, 3)
    # An entity split by an ignored position stays one entity: I- follows B- once -100 is dropped.
    assert entity_f1(np.array([[BP, O, IP]]), np.array([[BP, X, IP]]), NAMES)["entities_predicted"] == 1


def test_entity_f1_no_predicted_entities_is_zero():
    labels = np.array([[BP, IP, O, BL]])
    scores = entity_f1(np.zeros_like(labels), labels, NAMES)
    assert scores == {"entity_f1": 0.0, "entity_precision": 0.0, "entity_recall": 0.0,
                      "entities_gold": 2, "entities_predicted": 0}
    nothing = entity_f1(np.zeros((1, 3), int), np.zeros((1, 3), int), NAMES)
    assert nothing["entity_f1"] == 0.0


def test_entity_f1_entities_do_not_cross_sentences():
    # Flattened, I-per at the start of row 1 would continue row 0's B-per; per sentence it cannot.
    labels = np.array([[O, BP], [BP, O]])
    preds = np.array([[O, BP], [IP, O]])
    scores = entity_f1(preds, labels, NAMES)
    assert scores["entity_f1"] == 1.0  # I-per at a sentence start opens the same span as B-per


def test_entity_f1_errors_name_the_fix():
    with pytest.raises(ValueError, match="class id 7 but label_names has 5 names"):
        entity_f1(np.array([[7]]), np.array([[0]]), NAMES)
    with pytest.raises(ValueError, match="same shape"):
        entity_f1(np.zeros((2, 3)), np.zeros((2, 4)), NAMES)
    with pytest.raises(ValueError, match="use accuracy"):
        entity_f1(np.zeros(3, int), np.zeros(3, int), NAMES)
    with pytest.raises(ValueError, match="sentence 0 has 2 gold tags but 1 predicted"):
        entity_scores([["O", "O"]], [["O"]])


def test_entity_f1_equals_seqeval_on_random_tags():
    from seqeval import metrics as seqeval  # in the test extra
    rng = np.random.default_rng(0)
    tags = ["O", "B-per", "I-per", "B-loc", "I-loc", "I-org"]
    for _ in range(30):
        gold = [list(rng.choice(tags, size=rng.integers(1, 12), p=[.4, .15, .15, .1, .1, .1]))
                for _ in range(rng.integers(1, 8))]
        pred = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in sent] for sent in gold]
        ours = entity_scores(gold, pred)
        assert ours["entity_f1"] == pytest.approx(seqeval.f1_score(gold, pred, zero_division=0))
        assert ours["entity_precision"] == pytest.approx(seqeval.precision_score(gold, pred, zero_division=0))
        assert ours["entity_recall"] == pytest.approx(seqeval.recall_score(gold, pred, zero_division=0))


# ------------------------------------------------------------------------------ multi-label F1

def test_multi_label_f1_hand_computed():
    preds = np.array([[1, 0, 1],
                      [1, 1, 0],
                      [0, 0, 0],
                      [1, 0, 0]])
    labels = np.array([[1, 0, 0],
                       [1, 0, 0],
                       [0, 1, 0],
                       [0, 0, 0]], dtype=np.float32)
    # label 0: tp 2, fp 1, fn 0 -> F1 4/5; label 1: tp 0, fp 1, fn 1 -> 0; label 2: tp 0, fp 1 -> 0
    # micro: tp 2, fp 3, fn 1 -> 4 / 8
    scores = multi_label_f1(preds, labels, label_names=["a", "b", "c"])
    assert scores["micro_f1"] == pytest.approx(0.5)
    assert scores["macro_f1"] == pytest.approx(0.8 / 3)
    assert scores["f1/a"] == pytest.approx(0.8) and scores["f1/b"] == 0.0 and scores["f1/c"] == 0.0


def test_multi_label_f1_ignores_minus_100_and_absent_labels_score_zero():
    preds = np.array([[1, 0], [1, 1]])
    labels = np.array([[1, X], [X, 0]])
    # label 0: row 1 ignored -> tp 1 -> F1 1; label 1: row 0 ignored, row 1 a false positive -> F1 0
    scores = multi_label_f1(preds, labels)
    assert scores == {"micro_f1": pytest.approx(2 / 3), "macro_f1": pytest.approx(0.5)}
    empty = multi_label_f1(np.zeros((2, 2), int), np.zeros((2, 2)))
    assert empty == {"micro_f1": 0.0, "macro_f1": 0.0}


def test_multi_label_f1_equals_sklearn():
    from sklearn import metrics as sk  # in the test extra
    rng = np.random.default_rng(1)
    labels = (rng.random((50, 5)) < 0.3).astype(np.float32)
    preds = np.where(rng.random((50, 5)) < 0.8, labels, 1 - labels).astype(int)
    preds[:, 4] = 0  # one label never predicted
    ours = multi_label_f1(preds, labels)
    assert ours["micro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="micro", zero_division=0))
    assert ours["macro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro", zero_division=0))


def test_multi_label_f1_errors_name_the_fix():
    with pytest.raises(ValueError, match="0/1 decisions. Fix: threshold"):
        multi_label_f1(np.array([[0.7, 0.2]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="labels must be 0/1"):
        multi_label_f1(np.array([[1, 0]]), np.array([[2, 0]]))
    with pytest.raises(ValueError, match="2 label_names for 3 labels"):
        multi_label_f1(np.zeros((1, 3), int), np.zeros((1, 3)), label_names=["a", "b"])
    with pytest.raises(ValueError, match="one row of 0/1 targets"):
        multi_label_f1(np.zeros(3, int), np.zeros(3))
