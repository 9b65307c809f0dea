"""The posts tokenizer (byte-level BPE trained with `tokenizers`) and its fertility report."""

from .posts_tokenizer import (
    BOS,
    EOS,
    MENTION_TOKEN,
    PAD,
    POSTS_SPLIT_PATTERN,
    SEP,
    SPECIAL_TOKENS,
    URL_TOKEN,
    build_tokenizer,
    config_token_ids,
    posts_generation_config,
    minimum_vocab_size,
    train_tokenizer,
    wrap_tokenizer,
)
from .report import ENTITY_PATTERNS, fertility_report, format_report
from .train import train_posts_tokenizer

__all__ = [
    "BOS", "EOS", "PAD", "SEP", "SPECIAL_TOKENS", "URL_TOKEN", "MENTION_TOKEN", "POSTS_SPLIT_PATTERN",
    "build_tokenizer", "train_tokenizer", "wrap_tokenizer", "config_token_ids", "posts_generation_config", "minimum_vocab_size",
    "ENTITY_PATTERNS", "fertility_report", "format_report", "train_posts_tokenizer",
]
