"""A check on text given to the tokenizer (prompts, posts to evaluate, score, classify or draw attention on)."""

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, what: str) -> None:
    """ValueError when `text` holds a lone surrogate (U+D800 to U+DFFF), which no tokenizer can encode (the fast
    tokenizers fail with a TypeError). Such strings come from bytes that are not UTF-8, decoded with
    errors="surrogateescape" (command-line arguments and standard input on POSIX), or from a JSON "\\ud83d"
    escape of half an emoji."""
    match = _SURROGATE.search(text)
    if match:
        raise ValueError(
            f"{what} is not valid text: it holds the lone surrogate U+{ord(match.group()):04X} at character "
            f"{match.start()} (from bytes that are not UTF-8, or half of an emoji cut in two); fix its encoding"
        )
