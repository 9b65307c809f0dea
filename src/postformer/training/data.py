"""Language-modelling datasets: posts tokenised with `datasets.map`, packed into fixed-length blocks.

Each post becomes <s> post </s>; posts are concatenated and cut into `block_size` blocks (the remainder of each
map batch is dropped), so no compute is spent on padding and a long post simply continues in the next block.
"""

from itertools import chain

import datasets
from transformers import PreTrainedTokenizerBase

MAP_BATCH_SIZE = 1000


def _tokenize(batch, tokenizer):
    # verbose=False: posts longer than the context are fine here (packing cuts them into blocks), so no warning
    encoded = tokenizer(batch["text"], add_special_tokens=True, verbose=False)["input_ids"]  # <s> post
    return {"input_ids": [ids + [tokenizer.eos_token_id] for ids in encoded]}


def _pack(batch, block_size):
    stream = list(chain.from_iterable(batch["input_ids"]))
    usable = len(stream) // block_size * block_size
    return {"input_ids": [stream[i : i + block_size] for i in range(0, usable, block_size)]}


def pack_posts(posts, tokenizer: PreTrainedTokenizerBase, block_size: int):
    """Tokenise a posts dataset ("text" column; `Dataset` or streaming `IterableDataset`) into packed blocks."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    common = dict(batched=True, batch_size=MAP_BATCH_SIZE, remove_columns=["text"])
    if isinstance(posts, datasets.Dataset):
        common["desc"] = "tokenising posts"
    tokenized = posts.map(_tokenize, fn_kwargs={"tokenizer": tokenizer}, **common)
    pack_kwargs = dict(batched=True, batch_size=MAP_BATCH_SIZE, fn_kwargs={"block_size": block_size})
    if isinstance(posts, datasets.Dataset):
        pack_kwargs["desc"] = f"packing into blocks of {block_size}"
    return tokenized.map(_pack, **pack_kwargs)


def tokens_per_character(posts: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> float:
    """Tokens (with <s> and </s>) per character (each post's end counted as one, like a newline), for
    converting a per-token loss into bits per character, which compares runs with different tokenizers."""
    tokens = chars = 0
    for start in range(0, len(posts), MAP_BATCH_SIZE):
        texts = posts[start : start + MAP_BATCH_SIZE]["text"]
        tokens += sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"])
        chars += sum(len(text) + 1 for text in texts)
    if chars == 0:
        raise ValueError("no posts to measure tokens per character on")
    return tokens / chars
