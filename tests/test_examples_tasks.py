"""examples/ner.py and examples/multi_label.py run end to end on a small slice and return sane rows."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

KEYS = {"model", "layers", "hidden", "params", "metric", "dev", "test", "examples_per_s", "distilled", "command"}


def _check_rows(rows, metric, script, layers):
    assert [r["distilled"] for r in rows] == [False, True, False]
    for r in rows:
        assert KEYS <= set(r), f"row misses {KEYS - set(r)}"
        assert r["metric"] == metric and 0.0 <= r["dev"] <= 1.0 and 0.0 <= r["test"] <= 1.0
        assert r["examples_per_s"] > 0 and r["command"].startswith(f"python examples/{script} ")
        assert "--quick" in r["command"]
    assert [r["layers"] for r in rows] == layers
    assert rows[1]["params"] == rows[2]["params"] < rows[0]["params"]
    assert rows[1]["steps"] == rows[2]["steps"] == 20
    json.dumps(rows)  # the last line of the script is this object


def test_ner_example_end_to_end(tmp_path):
    import ner

    rows = ner.run(output_dir=str(tmp_path), quick=True, tiny=True, batch_size=8)
    _check_rows(rows, "entity_f1", "ner.py", layers=[4, 2, 2])
    assert rows[0]["command"] == f"python examples/ner.py --output-dir {tmp_path} --batch-size 8 --quick --tiny"
    # the teacher was fine-tuned once and cached; both students start from its blocks 1 and 3
    assert len(list((tmp_path / "ner" / "teachers").glob("*/final/config.json"))) == 1


def test_multi_label_example_end_to_end(tmp_path):
    import multi_label

    rows = multi_label.run(output_dir=str(tmp_path), quick=True, batch_size=8, max_length=32)
    _check_rows(rows, "micro_f1", "multi_label.py", layers=[6, 3, 3])
    assert all(0.0 <= r["dev_macro_f1"] <= 1.0 and 0.0 <= r["test_macro_f1"] <= 1.0 for r in rows)
    # 30 steps are enough for the teacher to learn something about six labels (all-zero scores 0)
    assert rows[0]["test"] > 0.3


def test_multi_label_targets_are_real_and_multi_label():
    from multi_label import LABELS, multi_label_data

    data = multi_label_data(per_domain=50)
    assert {k: len(v) for k, v in data.items()} == {"train": 160, "dev": 20, "test": 20}
    targets = np.array(data["train"]["targets"])
    assert targets.shape == (160, len(LABELS))
    assert (targets[:, :4].sum(axis=1) == 1).all()           # exactly one domain per sentence
    assert (targets.sum(axis=1) > 1).mean() > 0.4              # most carry several labels at once
    rating = np.array(data["train"]["rating"])
    assert (targets[:, 4] == (rating > 0)).all() and (targets[:, 5] == (np.abs(rating) >= 2)).all()
    assert (targets[:, 5] == 1).any() and (targets[:, 5] == 0).any()


def test_command_line_names_only_changed_flags():
    import common
    import ner

    assert common.command_line("ner.py", ner.run, {"epochs": 4.0, "quick": True, "temperature": 4}) == \
        "python examples/ner.py --temperature 4 --quick"  # signature order


def test_ner_hidden_matches_follow_the_copied_blocks():
    from ner import hidden_matches

    pairs = [(m.student_layer, m.teacher_layer) for m in hidden_matches([1, 3, 5], 0.5)]
    assert pairs == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert [(m.student_layer, m.teacher_layer) for m in hidden_matches([0, 2], 1.0)] == [(0, 0), (1, 1), (2, 3)]
