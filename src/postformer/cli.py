"""`postformer` command line: a thin layer over functions the tests call directly.

Each subcommand parses its flags and calls one function. Errors that name a problem in the user's input
(ValueError, FileNotFoundError, ...) are printed as one line, without a traceback, and exit with status 2.
"""

import argparse
import json
import os
import sys

from .training.trainer import NonFiniteLossError


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


def _read_prompts(args) -> list[str]:
    """Prompts from the arguments, else --prompts-file, else stdin when it is not a terminal, else one empty
    prompt (start a new post). One prompt per line in a file or on stdin; blank lines are skipped."""
    if args.prompts and args.prompts_file:
        raise ValueError("give prompts as arguments or with --prompts-file, not both")
    if args.prompts:
        return list(args.prompts)
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as file:
            text, empty = file.read(), f"prompts file {args.prompts_file!r} holds no prompts"
    elif sys.stdin is not None and not sys.stdin.isatty():
        text, empty = sys.stdin.read(), "no prompts on standard input"
    else:
        return [""]
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(
            f"{empty} (expected one prompt per line); pass PROMPT arguments, or '' to start a new post"
        )
    return prompts


def _generate(args):
    from .generation import format_generations, generate_posts, load_model_and_tokenizer

    prompts = _read_prompts(args)
    model, tokenizer = load_model_and_tokenizer(args.model)
    streamer = None
    if not (args.no_stream or args.json) and len(prompts) == 1 and args.num_return_sequences == 1:
        from transformers import TextStreamer

        class PromptStreamer(TextStreamer):
            """Prints the prompt's header when generation starts (after the inputs are checked), then the text."""

            def put(self, value):
                if self.next_tokens_are_prompt:
                    print(f"prompt 1: {prompts[0]!r}\n  [1] {prompts[0]}", end="", flush=True)
                super().put(value)

        streamer = PromptStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    generations = generate_posts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        num_return_sequences=args.num_return_sequences,
        seed=args.seed,
        do_sample=not args.greedy,
        streamer=streamer,
        batch_size=args.batch_size,
    )
    if args.json:
        records = [{"prompt": p, "generations": g} for p, g in zip(prompts, generations)]
        print(json.dumps(records, ensure_ascii=False, indent=2))
    elif streamer is None:
        print(format_generations(prompts, generations))


def _train(args):
    import dataclasses

    from .training import TrainingConfig, train

    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    given = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    config = TrainingConfig.from_file(args.config, **given) if args.config else TrainingConfig(**given)
    metrics = train(config)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch, report once
        return
    keys = ("eval_loss", "eval_perplexity", "eval_bits_per_character", "train_runtime", "parameters")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    print(f"model, tokenizer, metrics.json and loss_curve.png written to {config.output_dir}")


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingConfig field; flags left out keep the --config file's or the default value."""
    import dataclasses
    import typing

    from .training import TrainingConfig

    hints = typing.get_type_hints(TrainingConfig)
    defaults = TrainingConfig()
    for f in dataclasses.fields(TrainingConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = f"(default: {getattr(defaults, f.name)})"
        if kind in (bool, bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "sample_prompts":
            parser.add_argument(flag, nargs="*", default=None, help=help_text)
        else:
            base = next((t for t in typing.get_args(kind) or (kind,) if t is not type(None)), str)
            parser.add_argument(flag, type=base, default=None, help=help_text)


# (subcommand handlers are added above this line)


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

    train = commands.add_parser(
        "train", help="train a tokenizer and a model (default: the small preset on the bundled sample)",
        description="Train a Postformer model. With no flags: the small preset on the bundled posts sample, on "
        "the CPU, in a few minutes. Runs under torchrun / accelerate launch unchanged.",
    )
    train.add_argument("--config", help="YAML or JSON file of options (flags given here win)")
    _add_training_flags(train)
    train.set_defaults(func=_train)

    gen = commands.add_parser("generate", help="continue prompts with a trained model")
    gen.add_argument("prompts", nargs="*", metavar="PROMPT",
                     help="text to continue; '' starts a new post (default: --prompts-file, else one prompt per "
                     "line on stdin when it is not a terminal, else a new post)")
    gen.add_argument("--model", required=True, help="folder holding the model and its tokenizer (save_pretrained)")
    gen.add_argument("--prompts-file", help="file with one prompt per line")
    gen.add_argument("--max-new-tokens", type=int, default=60, help="tokens to generate at most (default: 60)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0 (default: 1.0)")
    gen.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens, 0: all (default: 50)")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass, in (0, 1] (default: 0.95)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1.0)")
    gen.add_argument("--num-return-sequences", type=int, default=1, help="continuations per prompt (default: 1)")
    gen.add_argument("--seed", type=int, help="random seed: the same seed gives the same text")
    gen.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default: 8)")
    gen.add_argument("--no-stream", action="store_true", help="print a single continuation at the end, not as it comes")
    gen.add_argument("--json", action="store_true", help="print a JSON list of {prompt, generations}")
    gen.set_defaults(func=_generate)
    # (subcommands are added above this line, one block each)
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
               NonFiniteLossError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        print(f"postformer {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
