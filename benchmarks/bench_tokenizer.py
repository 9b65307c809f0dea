"""Benchmark the posts tokenizer against a plain byte-level BPE baseline on the bundled posts sample.

Three tokenizers, all trained on the train split with the same vocab size:
  posts            the posts pre-tokenizer (URLs, hashtags, @mentions, emoji kept as pieces)
  baseline         GPT-2's plain byte-level splitting (posts_pre_tokenizer=False)
  posts+normalize  the posts tokenizer with URLs -> <url>, @mentions -> <user>

Measured, interleaved across tokenizers (A B C A B C ...), medians over --repeats:
  training time     train_tokenizer on the train texts
  encoding          posts/second over validation+test: batched (padding, truncation to 512) and one post at a time
Then the fertility report on the validation texts, side by side.

    python benchmarks/bench_tokenizer.py                       # about 10 s on 2 cores
    python benchmarks/bench_tokenizer.py --parallelism false   # tokenizers' Rust code on one thread

TOKENIZERS_PARALLELISM defaults to true (the library's default, the environment's value when set), and is
reported. On a 2-core machine it made batched encoding about 1.45x faster but training about 30% slower
than false. tokenizers reads the variable at each call, so setting it in main() is enough.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from postformer.data import load_posts
from postformer.tokenization import ENTITY_PATTERNS, fertility_report, train_tokenizer

VARIANTS = {
    "posts": dict(),
    "baseline": dict(posts_pre_tokenizer=False),
    "posts+normalize": dict(normalize=True),
}
MAX_LENGTH = 512


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def encode_batched(tok, texts, batch_size):
    for start in range(0, len(texts), batch_size):
        tok(texts[start : start + batch_size], padding=True, truncation=True, max_length=MAX_LENGTH)


def encode_unbatched(tok, texts):
    for text in texts:
        tok(text, truncation=True, max_length=MAX_LENGTH)


def run(args, train, validation, evaluation) -> dict:
    train_s = {name: [] for name in VARIANTS}
    tokenizers = {}
    for _ in range(args.repeats):
        for name, kwargs in VARIANTS.items():  # interleaved: A B C A B C ...
            seconds, tokenizers[name] = timed(
                lambda: train_tokenizer(train, vocab_size=args.vocab_size, show_progress=False, **kwargs))
            train_s[name].append(seconds)

    # Before any encode call below: calling with truncation=True leaves truncation switched on in the
    # backend tokenizer, which fertility_report uses as it is.
    fertility = {name: fertility_report(tok, validation) for name, tok in tokenizers.items()}

    for tok in tokenizers.values():  # untimed warm-up
        encode_batched(tok, evaluation, args.batch_size)
    batched = {name: [] for name in VARIANTS}
    unbatched = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, tok in tokenizers.items():
            batched[name].append(len(evaluation) / timed(lambda: encode_batched(tok, evaluation, args.batch_size))[0])
            unbatched[name].append(len(evaluation) / timed(lambda: encode_unbatched(tok, evaluation))[0])

    return {name: {"vocab_size": len(tokenizers[name]),
                   "train_s": {"median": statistics.median(train_s[name]), "samples": train_s[name]},
                   "batched_posts_per_s": {"median": statistics.median(batched[name]), "samples": batched[name]},
                   "unbatched_posts_per_s": {"median": statistics.median(unbatched[name]), "samples": unbatched[name]},
                   "fertility": fertility[name]}
            for name in VARIANTS}


def fmt(value, spec, scale=1, suffix=""):
    return "-" if value is None else format(scale * value, spec) + suffix


def markdown_tables(results: dict) -> str:
    names = list(results)
    head = "| tokenizer | vocab | train s | batched posts/s | unbatched posts/s | batched / unbatched |"
    lines = ["## Speed (medians)", "", head, "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        b, u = r["batched_posts_per_s"]["median"], r["unbatched_posts_per_s"]["median"]
        lines.append(f"| {name} | {r['vocab_size']:,} | {r['train_s']['median']:.2f} | {b:,.0f} | {u:,.0f} "
                     f"| {b / u:.2f}x |")
    lines += ["", "## Fertility (validation split)", "",
              "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    fert = {name: r["fertility"] for name, r in results.items()}
    rows = [("posts", lambda f: f"{f['posts']:,}"), ("tokens / post", lambda f: f"{f['tokens_per_post']:.2f}"),
            ("median tokens / post", lambda f: f"{f['median_tokens_per_post']:g}"),
            ("chars / token", lambda f: f"{f['chars_per_token']:.3f}")]
    for kind in ENTITY_PATTERNS:
        rows += [(f"{kind}: posts with", lambda f, k=kind: f"{f['entities'][k]['posts_with']:,}"),
                 (f"{kind}: round-trip intact",
                  lambda f, k=kind: fmt(f["entities"][k]["roundtrip_intact_share"], ".1f", 100, "%")),
                 (f"{kind}: tokens / entity", lambda f, k=kind: fmt(f["entities"][k]["tokens_per_entity"], ".2f"))]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(fert[name]) for name in names) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each measurement (default 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="posts per batched encode call (default 256)")
    parser.add_argument("--parallelism", choices=["true", "false"],
                        default=os.environ.get("TOKENIZERS_PARALLELISM", "true").lower(),
                        help="TOKENIZERS_PARALLELISM (default: the environment's, else true)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    os.environ["TOKENIZERS_PARALLELISM"] = args.parallelism

    posts = load_posts()
    train, validation = list(posts["train"]["text"]), list(posts["validation"]["text"])
    evaluation = validation + list(posts["test"]["text"])
    machine = {**{pkg: version(pkg) for pkg in ("torch", "tokenizers", "transformers", "datasets")},
               "python": platform.python_version(), "platform": platform.platform(),
               "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "TOKENIZERS_PARALLELISM": os.environ["TOKENIZERS_PARALLELISM"],
               "rust threads": (os.environ.get("RAYON_NUM_THREADS", os.cpu_count())
                                if args.parallelism == "true" else 1),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    settings = {"vocab_size": args.vocab_size, "repeats": args.repeats, "batch_size": args.batch_size,
                "max_length": MAX_LENGTH, "train_posts": len(train), "encoded_posts (validation+test)": len(evaluation),
                "fertility_posts (validation)": len(validation)}
    command = shlex.join(["python", *sys.argv])

    print("training and timing ...", flush=True)
    results = run(args, train, validation, evaluation)
    header = ["# Posts tokenizer vs byte-level BPE baseline", "", f"Command: `{command}`", "",
              "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
              "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), "",
              "Timings interleaved across tokenizers; medians over repeats. Round-trip intact: share of posts "
              "containing the entity whose entities all survive decode(encode(post)); normalisation replaces "
              "URLs and mentions by design.", ""]
    markdown = "\n".join(header) + "\n" + markdown_tables(results) + "\n"
    print("\n" + markdown)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "machine": machine, "settings": settings, "results": results}
    (args.output_dir / "tokenizer.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "tokenizer.md").write_text(markdown)
    print(f"wrote {args.output_dir / 'tokenizer.json'} and {args.output_dir / 'tokenizer.md'}")


if __name__ == "__main__":
    main()
