"""Train the posts tokenizer on a corpus, save it, and report its fertility on the validation split."""

import json
from pathlib import Path

from ..data import load_posts
from ..saving import check_writable, saving
from .posts_tokenizer import train_tokenizer
from .report import fertility_report

REPORT_NAME = "tokenizer_report.json"


def train_posts_tokenizer(
    output_dir: str | Path,
    data: str | Path | None = None,
    text_field: str = "text",
    vocab_size: int = 8192,
    normalize: bool = False,
    model_max_length: int = 512,
    show_progress: bool = True,
    on_bad_lines: str = "error",
):
    """Train on the train split of `data` (the bundled sample when None), save to `output_dir` with a
    `tokenizer_report.json`; return (tokenizer, report). `on_bad_lines`: as for `postformer.data.load_posts`.
    The files are saved all or nothing: when saving fails (a DiskFullError when the device is full),
    `output_dir` keeps what it held, a previous tokenizer included."""
    check_writable(output_dir)
    posts = load_posts(data, text_field=text_field, on_bad_lines=on_bad_lines)
    tokenizer = train_tokenizer(
        posts["train"]["text"],
        vocab_size=vocab_size,
        normalize=normalize,
        model_max_length=model_max_length,
        show_progress=show_progress,
        length=len(posts["train"]),
    )
    report = fertility_report(tokenizer, posts["validation"]["text"])
    report.update(data=str(data) if data is not None else "bundled sample", normalize=normalize)
    output_dir = Path(output_dir)
    with saving(output_dir, "the tokenizer") as staging:
        tokenizer.save_pretrained(staging)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return tokenizer, report
