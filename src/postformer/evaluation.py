"""Evaluating a language model on posts: loss, perplexity and bits per character, and per-token losses.

Each post is scored as the tokenizer encodes it, "<s> post </s>": the model predicts every token after "<s>",
the end-of-post included, so a post of n tokens contributes n - 1 predictions. Perplexity is exp of the mean
loss over all predicted tokens of all posts (not the mean of per-post perplexities). Bits per character divide
the same total loss, in bits, by the characters, counting each post's end as one character (as training does),
which compares models with different tokenizers.

A post longer than the model's context is scored with a sliding window (the method of transformers'
perplexity guide): windows of `max_position_embeddings` tokens that advance by `stride` tokens; each window
scores only the tokens no earlier window scored, with the tokens before them as context, so every token is
predicted exactly once with at least `max_position_embeddings - stride` tokens of context (all it has, near
the start).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._text import check_text


@dataclass
class _Window:
    post: int  # index of the post it belongs to
    ids: list[int]  # the tokens fed to the model
    first_scored: int  # predictions for ids[first_scored:] are scored; earlier ids are context only


def _windows(post: int, ids: list[int], context: int, stride: int) -> list[_Window]:
    if len(ids) <= context:
        return [_Window(post, ids, 1)]
    windows, begin, scored_to = [], 0, 1
    while scored_to < len(ids):
        end = min(begin + context, len(ids))
        windows.append(_Window(post, ids[begin:end], scored_to - begin))
        scored_to = end
        begin = end - (context - stride)
    return windows


def _check_options(texts, batch_size, stride, context):
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings (posts)")
    if len(texts) == 0:
        raise ValueError("no posts to evaluate: the list is empty")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"{len(empty)} empty post(s) (first at index {empty[0]}): every post needs some text")
    for index, text in enumerate(texts):
        check_text(text, f"post {index}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(stride, int) or not 1 <= stride <= context - 1:
        raise ValueError(
            f"stride must be an integer in [1, {context - 1}] (below the model's context of {context} tokens), "
            f"got {stride!r}"
        )


@torch.no_grad()
def token_losses(model, tokenizer, texts: list[str], batch_size: int = 8, stride: int | None = None):
    """Per post, its token ids ("<s> post </s>") and the loss in nats of predicting each token after "<s>"
    (a float tensor of length len(ids) - 1). `stride`: the sliding window's step for posts longer than the
    model's context (default: half the context)."""
    context = model.config.max_position_embeddings
    stride = context // 2 if stride is None else stride
    _check_options(texts, batch_size, stride, context)
    encoded = [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]]
    windows = [w for post, ids in enumerate(encoded) for w in _windows(post, ids, context, stride)]
    # Batch windows of similar length together, so that little compute goes to padding.
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
    window_losses = [None] * len(windows)
    model_was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        batch = [windows[i] for i in order[start : start + batch_size]]
        width = max(len(w.ids) for w in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, window in enumerate(batch):  # right padding: positions start at 0 in every row
            input_ids[row, : len(window.ids)] = torch.tensor(window.ids)
            attention_mask[row, : len(window.ids)] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:].to(model.device), reduction="none")
        for row, (index, window) in enumerate(zip(order[start : start + batch_size], batch)):
            window_losses[index] = losses[row, window.first_scored - 1 : len(window.ids) - 1].cpu()
    model.train(model_was_training)
    per_post = [[] for _ in encoded]
    for window, losses in zip(windows, window_losses):
        per_post[window.post].append(losses)
    return [(ids, torch.cat(parts)) for ids, parts in zip(encoded, per_post)]


def evaluate_posts(model, tokenizer, texts: list[str], batch_size: int = 8, stride: int | None = None) -> dict:
    """Loss (mean nats per predicted token), perplexity (exp of it) and bits per character over `texts`, with
    the counts they come from: posts, tokens (predicted) and characters (each post's end counted as one)."""
    results = token_losses(model, tokenizer, texts, batch_size, stride)
    total = sum(float(losses.double().sum()) for _, losses in results)
    tokens = sum(len(losses) for _, losses in results)
    characters = sum(len(text) + 1 for text in texts)
    loss = total / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_character": total / math.log(2) / characters,
        "posts": len(texts),
        "tokens": tokens,
        "characters": characters,
    }


def score_posts(model, tokenizer, texts: list[str], batch_size: int = 8, stride: int | None = None) -> list[dict]:
    """Per post: its mean token loss and perplexity (high: unusual for the model: spam, another language,
    generated text, ...), its token count, and each token with its loss (tokens as text)."""
    scored = []
    for index, (text, (ids, losses)) in enumerate(zip(texts, token_losses(model, tokenizer, texts, batch_size, stride))):
        loss = float(losses.double().mean())
        tokens = [tokenizer.decode([token_id]) for token_id in ids[1:]]
        scored.append({
            "index": index,
            "text": text,
            "loss": loss,
            "perplexity": math.exp(loss),
            "tokens": len(losses),
            "token_losses": [[token, round(float(value), 4)] for token, value in zip(tokens, losses)],
        })
    return scored


__all__ = ["token_losses", "evaluate_posts", "score_posts"]
