"""`postformer` command line: a thin layer over functions the tests call directly.

Each subcommand parses its flags and calls one function. Errors that name a problem in the user's input
(ValueError, FileNotFoundError, ...) are printed as one line, without a traceback, and exit with status 2.
"""

import argparse
import json
import sys


def _train_tokenizer(args):
    from .tokenization import format_report, train_posts_tokenizer

    _, report = train_posts_tokenizer(
        output_dir=args.output_dir,
        data=args.data,
        text_field=args.text_field,
        vocab_size=args.vocab_size,
        normalize=args.normalize,
        model_max_length=args.model_max_length,
        show_progress=not args.quiet,
    )
    print(format_report(report))
    print(f"tokenizer and tokenizer_report.json written to {args.output_dir}")
    if args.json:
        print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postformer", description="Train, use and publish posts language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tok = commands.add_parser("train-tokenizer", help="train a byte-level BPE posts tokenizer")
    tok.add_argument("--data", help="posts: .jsonl/.csv/.txt file, folder of split files or a datasets folder "
                     "(default: the bundled sample)")
    tok.add_argument("--text-field", default="text", help="column holding the post text (default: text)")
    tok.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (default: 8192)")
    tok.add_argument("--output-dir", required=True, help="folder to write tokenizer.json and its config to")
    tok.add_argument("--normalize", action="store_true", help="map URLs to <url> and @mentions to <user>")
    tok.add_argument("--model-max-length", type=int, default=512, help="context length recorded in the tokenizer")
    tok.add_argument("--quiet", action="store_true", help="no progress display")
    tok.add_argument("--json", action="store_true", help="also print the report as JSON")
    tok.set_defaults(func=_train_tokenizer)
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"postformer {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
