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

`evaluate_posts`, `score_posts` and `token_losses` take a list of posts. For a corpus of any size,
`evaluate_source` and `score_to_file` take a stream of them (`postformer.processing`): read a window at a time,
batched by length within it, shared among the processes of a launch; `score_to_file` writes one JSON line per
input post as it goes and resumes after a crash.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._text import check_text
from .processing.runs import WINDOW


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
    _check_batching(batch_size, stride, context)


def _check_batching(batch_size, stride, context):
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
    encoded = [ids + [tokenizer.eos_token_id]
               for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]]
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
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:].to(model.device),
                                 reduction="none").cpu()  # one copy per batch, not one per row (a GPU waits for each)
        for row, (index, window) in enumerate(zip(order[start : start + batch_size], batch)):
            window_losses[index] = losses[row, window.first_scored - 1 : len(window.ids) - 1]
    model.train(model_was_training)
    per_post = [[] for _ in encoded]
    for window, losses in zip(windows, window_losses):
        per_post[window.post].append(losses)
    return [(ids, torch.cat(parts)) for ids, parts in zip(encoded, per_post)]


class _Totals:
    """What evaluation adds up over posts: the loss in nats, the tokens predicted, the characters (each post's end
    counted as one) and the posts."""

    def __init__(self, values=(0.0, 0, 0, 0)):
        self.loss, self.tokens, self.characters, self.posts = values

    def add(self, texts, results) -> None:
        for text, (_, losses) in zip(texts, results):
            self.loss += float(losses.double().sum())
            self.tokens += len(losses)
            self.characters += len(text) + 1
            self.posts += 1

    def metrics(self) -> dict:
        loss = self.loss / self.tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_character": self.loss / math.log(2) / self.characters,
            "posts": self.posts,
            "tokens": self.tokens,
            "characters": self.characters,
        }


def evaluate_posts(model, tokenizer, texts: list[str], batch_size: int = 8, stride: int | None = None) -> dict:
    """Loss (mean nats per predicted token), perplexity (exp of it) and bits per character over `texts`, with
    the counts they come from: posts, tokens (predicted) and characters (each post's end counted as one)."""
    totals = _Totals()
    totals.add(texts, token_losses(model, tokenizer, texts, batch_size, stride))
    return totals.metrics()


def evaluate_source(model, tokenizer, source, batch_size: int = 8, stride: int | None = None, *,
                    window: int = WINDOW, max_posts: int | None = None, progress: bool = False) -> dict:
    """`evaluate_posts` over a stream of posts (`postformer.processing.open_posts(...)`: a corpus of any size),
    `window` posts at a time (each window's posts sorted by length and batched, as `token_losses` does); under
    several processes (torchrun / accelerate launch) each scores its share of the windows and every process
    returns the metrics of all. The same metrics as `evaluate_posts` on the same posts, up to float rounding."""
    from .processing import processes
    from .processing.runs import Job, process_posts

    context = model.config.max_position_embeddings
    _check_batching(batch_size, context // 2 if stride is None else stride, context)
    totals = _Totals()

    class Evaluate(Job):
        command = "evaluate"

        def process(self, number, records):
            texts = [r.text for r in records]
            totals.add(texts, token_losses(model, tokenizer, texts, batch_size, stride))
            return [{}] * len(records)

    process_posts(Evaluate(), source, lambda records, lines: None, window=window, max_posts=max_posts,
                  progress=progress, share=True)
    every = processes().gather((totals.loss, totals.tokens, totals.characters, totals.posts))
    return _Totals(tuple(map(sum, zip(*every)))).metrics()


class ScoreJob:
    """`postformer score`'s work on a window of posts: `score_posts`'s record of each (see `processing.Job`)."""

    command = "score"

    def __init__(self, model, tokenizer, batch_size: int = 8, stride: int | None = None):
        context = model.config.max_position_embeddings
        _check_batching(batch_size, context // 2 if stride is None else stride, context)
        self.model, self.tokenizer, self.batch_size, self.stride = model, tokenizer, batch_size, stride
        self._tokens = {}  # token id -> its text: decoding a token at a time costs more than the model on a GPU

    def token_text(self, token_id: int) -> str:
        text = self._tokens.get(token_id)
        if text is None:
            text = self._tokens[token_id] = self.tokenizer.decode([token_id])
        return text

    def record(self, index: int, text: str, ids: list[int], losses: torch.Tensor) -> dict:
        loss = float(losses.double().mean())
        return {
            "index": index,
            "text": text,
            "loss": loss,
            "perplexity": math.exp(loss),
            "tokens": len(losses),
            "token_losses": [[self.token_text(token), round(value, 4)]
                             for token, value in zip(ids[1:], losses.tolist())],
        }

    def process(self, number, records) -> list[dict]:
        texts = [r.text for r in records]
        results = token_losses(self.model, self.tokenizer, texts, self.batch_size, self.stride)
        return [self.record(r.index, r.text, ids, losses) for r, (ids, losses) in zip(records, results)]

    def failed(self, record) -> dict:
        return {"index": record.index, "text": record.text, "error": record.problem}


def score_posts(model, tokenizer, texts: list[str], batch_size: int = 8, stride: int | None = None) -> list[dict]:
    """Per post: its mean token loss and perplexity (high: unusual for the model: spam, another language,
    generated text, ...), its token count, and each token with its loss (tokens as text)."""
    results = token_losses(model, tokenizer, texts, batch_size, stride)
    job = ScoreJob(model, tokenizer, batch_size, stride)
    return [job.record(index, text, ids, losses) for index, (text, (ids, losses)) in enumerate(zip(texts, results))]


def score_to_file(model, source, output, *, batch_size: int = 8, stride: int | None = None, window: int = WINDOW,
                  max_posts: int | None = None, overwrite: bool = False, options: dict | None = None,
                  progress: bool = False) -> dict:
    """Score every post of `source` (`postformer.processing.open_posts(...)`, or `Texts`) into the JSON lines file
    `output`: one line per input record, in input order (`score_posts`'s record, or {"index", "text", "error"}
    for a record without a post), written window by window; a rerun after a crash resumes, under any launcher
    (see `postformer.processing.runs`). `model`: a folder or Hub id, loaded only when there is work to do.
    `options`: more of what the lines depend on, recorded with the run (the CLI's text field, split, ...).
    Returns the run's summary (`postformer.processing.runs.run_to_file`)."""
    from .model_files import load_model
    from .processing.runs import model_identity, processes, run_to_file

    def job():
        loaded, tokenizer = load_model(model)
        return ScoreJob(loaded.to(processes().device), tokenizer, batch_size, stride)

    recorded = {**model_identity(model), "stride": stride, **(options or {})}
    return run_to_file("score", source, output, recorded, job, window=window, max_posts=max_posts,
                       overwrite=overwrite, progress=progress)


def most_unusual(path, top: int) -> list[dict]:
    """The `top` records of a score output file with the highest mean token loss, read a line at a time."""
    import heapq
    import json

    with open(path, encoding="utf-8") as file:
        records = (json.loads(line) for line in file)
        return heapq.nlargest(top, (r for r in records if "loss" in r), key=lambda r: r["loss"])


__all__ = ["token_losses", "evaluate_posts", "evaluate_source", "score_posts", "score_to_file", "most_unusual",
           "ScoreJob"]
