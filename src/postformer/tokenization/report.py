"""Fertility report: how a tokenizer cuts posts, measured on held-out posts.

tokens per post, characters per token, and for each kind of post entity (emoji, URL, hashtag, @mention):
the share of posts containing it whose entities all come back intact from decode(encode(post)), and the mean
number of tokens one entity takes.
"""

import re
import statistics

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .posts_tokenizer import URL_PATTERN

_EMOJI_CHAR = "[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u2300-\u23FF]"
_EMOJI_TAIL = "[\uFE0F\u20E3\U0001F3FB-\U0001F3FF\U000E0020-\U000E007F]*"
ENTITY_PATTERNS = {
    "emoji": re.compile(
        f"(?:{_EMOJI_CHAR}{_EMOJI_TAIL}|[0-9#*]\uFE0F?\u20E3)(?:\u200D{_EMOJI_CHAR}{_EMOJI_TAIL})*"
    ),
    "url": re.compile(URL_PATTERN),
    "hashtag": re.compile(r"(?<![\w/])#\w+"),
    "mention": re.compile(r"(?<!\w)@\w+"),
}


def fertility_report(tokenizer: PreTrainedTokenizerFast, texts: list[str], batch_size: int = 256) -> dict:
    """Measure `tokenizer` on `texts` (special tokens excluded from the counts)."""
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no posts to measure the tokenizer on")
    # A copy without the padding/truncation that earlier batch calls may have left switched on.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    n_tokens, entity_tokens = [], {kind: [] for kind in ENTITY_PATTERNS}
    intact = {kind: [] for kind in ENTITY_PATTERNS}
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        encodings = backend.encode_batch(batch, add_special_tokens=False)
        decoded = backend.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
        for text, encoding, back in zip(batch, encodings, decoded):
            n_tokens.append(len(encoding.ids))
            for kind, pattern in ENTITY_PATTERNS.items():
                found = pattern.findall(text)
                if not found:
                    continue
                intact[kind].append(pattern.findall(back) == found)
                for match in pattern.finditer(text):
                    entity_tokens[kind].append(
                        sum(1 for s, e in encoding.offsets if s < match.end() and e > match.start())
                    )
    total_chars = sum(len(t) for t in texts)
    report = {
        "posts": len(texts),
        "tokens": sum(n_tokens),
        "tokens_per_post": sum(n_tokens) / len(texts),
        "median_tokens_per_post": statistics.median(n_tokens),
        "chars_per_token": total_chars / max(1, sum(n_tokens)),
        "vocab_size": len(tokenizer),
        "entities": {},
    }
    for kind in ENTITY_PATTERNS:
        report["entities"][kind] = {
            "posts_with": len(intact[kind]),
            "roundtrip_intact_share": (sum(intact[kind]) / len(intact[kind])) if intact[kind] else None,
            "tokens_per_entity": statistics.fmean(entity_tokens[kind]) if entity_tokens[kind] else None,
        }
    return report


def format_report(report: dict) -> str:
    lines = [
        f"posts measured      {report['posts']:,}",
        f"tokens per post     {report['tokens_per_post']:.2f} (median {report['median_tokens_per_post']})",
        f"characters / token  {report['chars_per_token']:.3f}",
        "entity     posts  round-trip intact  tokens per entity",
    ]
    for kind, values in report["entities"].items():
        share = "-" if values["roundtrip_intact_share"] is None else f"{100 * values['roundtrip_intact_share']:.1f}%"
        per = "-" if values["tokens_per_entity"] is None else f"{values['tokens_per_entity']:.2f}"
        lines.append(f"{kind:<10} {values['posts_with']:>5}  {share:>17}  {per:>17}")
    return "\n".join(lines)
