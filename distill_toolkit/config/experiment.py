"""A whole run as the CLI reads it: models (:class:`ModelSpec`), data (:class:`DataSpec`) and the
two configs of the loop and the strategy (:class:`ExperimentConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from distill_toolkit.config.augment import AugmentSpec
from distill_toolkit.config.base import Serializable, check, check_types, is_finite_number, is_int
from distill_toolkit.config.distillation import DistillationConfig
from distill_toolkit.config.training import TrainingConfig

DATA_SOURCES = ("sentiment", "twitter_ner", "files", "text", "hf", "shakespeare", "vader_sentences")
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
SPLITS = ("train", "dev", "test")


@dataclass
class ModelSpec(Serializable):
    """Where a model comes from, for the CLI.

    - ``path``: a folder with a saved Hugging Face model (``save_pretrained``), a Hub model ID
      (``org/name``, read from the Hugging Face cache when ``HF_HUB_OFFLINE=1``), or
      ``builtin:minilm`` for the all-MiniLM-L6-v2 weights the data module fetches.
    - ``revision``: a branch, tag or commit of a Hub model (default: ``main``).
    - ``dtype``: the dtype the weights load in: ``float32`` (default), ``bfloat16`` / ``bf16``,
      ``float16`` / ``fp16``, or ``auto`` (the saved dtype), e.g. a bf16 teacher.
    - ``trust_remote_code``: run the model's own code from the Hub (off by default; only for
      repositories you trust).
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
    revision: Optional[str] = None
    dtype: Optional[str] = None
    trust_remote_code: bool = False

    def validate(self, where: str) -> None:
        check(self.path is not None or self.init_from == "teacher", where,
              "needs `path` or `init_from: teacher`",
              "point `path` at a saved model folder, a Hub model ID (org/name) or `builtin:minilm`")
        check(self.init_from in (None, "teacher", "random"), f"{where}.init_from",
              f"unknown value {self.init_from!r}", "use `teacher`, `random` or remove it")
        check(isinstance(self.config, dict), f"{where}.config", f"must be a mapping, got {self.config!r}",
              "e.g. `config: {num_hidden_layers: 4, hidden_size: 312}`")
        if self.layers is not None:
            check(isinstance(self.layers, list) and self.layers and all(is_int(x) and x >= 0 for x in self.layers),
                  f"{where}.layers", f"must be a non-empty list of layer indices, got {self.layers!r}",
                  "e.g. `layers: [1, 3, 5]`")
        check(self.revision is None or (isinstance(self.revision, str) and self.revision), f"{where}.revision",
              f"must be a branch, tag or commit name, got {self.revision!r}", 'quote it, e.g. `revision: "v1.0"`')
        check(self.dtype is None or self.dtype in MODEL_DTYPES, f"{where}.dtype", f"unknown dtype {self.dtype!r}",
              f"use one of {', '.join(MODEL_DTYPES)}")
        check_types(self, where)


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
    - ``name: hf``: any data ``datasets`` reads, at ``path``: a Hub dataset ID (read from the local
      datasets cache when ``HF_HUB_OFFLINE=1``), a local dataset folder (e.g. ``train.parquet``,
      ``validation.parquet``), one parquet/CSV/JSON(-lines) file, or a ``save_to_disk`` folder;
      ``config`` names the dataset's configuration (e.g. ``sst2`` of ``glue``). ``splits`` maps the
      run's ``train`` / ``dev`` / ``test`` to the dataset's split names, slices allowed
      (``{train: "train[:90%]", dev: "train[90%:]"}``); by default ``train``, the first of
      ``validation`` / ``dev`` / ``valid`` / ``val`` and ``test`` (``null`` drops one). Label names come
      from a ``ClassLabel`` feature, the label values, or else the teacher's ``id2label``;
      ``max_examples`` keeps a seeded random subset of each split.

    - ``name: shakespeare`` / ``vader_sentences``: unlabelled English text (``text`` column), fetched once:
      every speech of Shakespeare's plays (31,354), or the VADER corpora's 23,703 sentences; for
      task-agnostic distillation (``distillation.task: general``) or masked-LM data.

    ``augment`` (a mapping, see :class:`~distill_toolkit.config.augment.AugmentSpec`) grows the training
    split with Tang et al.'s masked / word-replaced / n-gram copies of its texts, labelled by the teacher
    alone (their ``labels`` are -100), e.g. ``augment: {factor: 4, p_mask: 0.1, p_replace: 0.1, p_ngram: 0.25}``.

    ``max_examples`` keeps a seeded random subset of the corpus before it is split;
    ``max_train_examples`` a seeded random subset of the training split (``seed`` for both).

    Extractive QA (``distillation.task: question_answering``, ``name: files``): ``question_column``,
    ``context_column`` and ``answer_column`` (SQuAD's ``{text: [...], answer_start: [...]}``, or the
    answer's text with its character offset in ``answer_start_column``); only the context is truncated
    to ``max_length``. Masked LM (``distillation.task: masked_lm``, ``name: text`` or ``files``): texts
    in ``text_column``; ``mlm_probability`` of their tokens are masked, reproducibly (the mask is drawn
    from ``seed`` and each example's tokens, so every epoch, resume and teacher cache sees the same).
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
    path: Optional[str] = None
    config: Optional[str] = None
    splits: Optional[dict] = None
    question_column: str = "question"
    context_column: str = "context"
    answer_column: str = "answers"
    answer_start_column: str = "answer_start"
    mlm_probability: float = 0.15
    augment: Optional[dict] = None

    def validate(self, where: str = "data") -> None:
        check(self.name in DATA_SOURCES, f"{where}.name", f"unknown data set {self.name!r}",
              "use `sentiment` (the VADER corpora), `twitter_ner`, `files` (your own train_file/dev_file), "
              "`hf` (anything `datasets` reads: a Hub ID, a dataset folder, parquet/CSV/JSON, save_to_disk) or "
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
        if self.augment is not None:
            AugmentSpec.from_dict(self.augment, f"{where}.augment.").validate(f"{where}.augment")
        if self.name == "hf":
            self._validate_hf(where)
        check_types(self, where)
        for key, example in (("question_column", "question"), ("context_column", "context"),
                             ("answer_column", "answers"), ("answer_start_column", "answer_start")):
            value = getattr(self, key)
            check(isinstance(value, str) and value.strip() != "", f"{where}.{key}",
                  f"must be a column name, got {value!r}", f"set e.g. `{key}: {example}`")
        check(is_finite_number(self.mlm_probability) and 0 < self.mlm_probability <= 1, f"{where}.mlm_probability",
              f"must be a share in (0, 1], got {self.mlm_probability!r}", "set e.g. `mlm_probability: 0.15` (BERT's)")

    def _validate_hf(self, where: str) -> None:
        check(isinstance(self.path, str) and self.path.strip() != "", f"{where}.path",
              f"data.name 'hf' needs a `path`, got {self.path!r}",
              "set it to a Hub dataset ID (e.g. `glue`), a dataset folder, a parquet/CSV/JSON file or a "
              "save_to_disk folder")
        check(self.config is None or (isinstance(self.config, str) and self.config), f"{where}.config",
              f"must be the name of a dataset configuration, got {self.config!r}", "e.g. `config: sst2`, or remove it")
        splits = self.splits if self.splits is not None else {}
        check(isinstance(splits, dict), f"{where}.splits", f"must be a mapping, got {splits!r}",
              "e.g. `splits: {train: train, dev: validation, test: test}`")
        unknown = [k for k in splits if k not in SPLITS]
        check(not unknown, f"{where}.splits", f"unknown split {unknown[0] if unknown else ''!r}",
              f"map the run's {', '.join(SPLITS)} to the dataset's split names, e.g. `dev: validation`")
        for key, value in splits.items():
            check(value is None or (isinstance(value, str) and value.strip()), f"{where}.splits.{key}",
                  f"must be a split name of the dataset (or null), got {value!r}",
                  f"e.g. `{key}: {dict(train='train', dev='validation', test='test')[key]}`")
        check(splits.get("train", "train") is not None, f"{where}.splits.train", "the run needs a training split",
              "name one, e.g. `train: train`, or a slice such as `train: \"train[:90%]\"`")


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
        if self.distillation.task == "auto" and self.data.name in ("shakespeare", "vader_sentences"):
            self.distillation.validate_general("distillation")  # unlabelled text: the run is task 'general'
        if self.data.augment is not None:
            dist = self.distillation
            check(dist.hard_label_weight == 0 and not dist.probability_shift and dist.strategy != "supervised",
                  "data.augment", "augmented examples have no gold label (their labels are -100): only the "
                  "teacher labels them", "set distillation.hard_label_weight: 0 and probability_shift: false (and use "
                  "a strategy with a teacher), or remove data.augment")
        if self.distillation.strategy != "supervised":
            check(self.teacher is not None, "teacher", f"strategy {self.distillation.strategy!r} needs a teacher",
                  "add a `teacher:` section with a `path`, or use `strategy: supervised`")
            self.teacher.validate("teacher")
        if self.student.init_from == "teacher":
            check(self.teacher is not None, "student.init_from", "there is no teacher to copy from",
                  "add a `teacher:` section or give the student a `path`")
