"""`postformer` command line: a thin layer over functions the tests call directly.

Each subcommand parses its flags and calls one function. Errors that name a problem in the user's input
(ValueError, FileNotFoundError, ...) are printed as one line, without a traceback, and exit with status 2; so is
running out of disk space (postformer.model_files.DiskFullError, or any write that fails with ENOSPC). Warnings
of postformer's own (skipped malformed lines, unknown config.json fields) are printed as one line
"postformer COMMAND: warning: ...".
"""

import argparse
import json
import os
import shlex
import sys
import warnings

from .progress import progress_bars
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
        on_bad_lines=_on_bad_lines(args),
    )
    print(format_report(report))
    print(f"tokenizer and tokenizer_report.json written to {args.output_dir}")
    if args.json:
        print(json.dumps(report, indent=2))


def _read_prompts(args):
    """Prompts from the arguments, else --prompts-file, else stdin when it is not a terminal, else one empty
    prompt (start a new post): a `postformer.processing` source. One prompt per line in a file or on stdin;
    blank lines are not prompts. A file is read as it is consumed (it can be larger than memory); stdin is read
    whole."""
    from .processing import Lines, Texts

    if args.prompts and args.prompts_file:
        raise ValueError("give prompts as arguments or with --prompts-file, not both")
    if args.prompts:
        return Texts(args.prompts, "prompt", first=1, allow_empty=True)
    if args.prompts_file:
        if not os.path.isfile(args.prompts_file):
            raise FileNotFoundError(f"prompts file not found: {args.prompts_file}")
        return Lines(args.prompts_file, "prompt", no_posts=f"prompts file {args.prompts_file!r} holds no prompts "
                     "(expected one prompt per line); pass PROMPT arguments, or '' to start a new post")
    if sys.stdin is not None and not sys.stdin.isatty():
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError as error:
            raise ValueError(f"standard input is not {error.encoding} text: byte 0x{error.object[error.start]:02x} "
                             f"cannot be decoded ({error.reason}); give prompts as UTF-8") from None
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise ValueError("no prompts on standard input (expected one prompt per line); pass PROMPT arguments, or "
                             "'' to start a new post")
        return Texts(prompts, "prompt", first=1, allow_empty=True)
    return Texts([""], "prompt", first=1, allow_empty=True)


def _generate(args):
    from .generation import GenerateJob, format_generations, generate_posts, generate_to_file, prompt_name
    from .model_files import load_model
    from .processing import Texts, process_posts, processes

    source = _read_prompts(args)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                   no_repeat_ngram_size=args.no_repeat_ngram_size, num_return_sequences=args.num_return_sequences,
                   seed=args.seed, do_sample=False if args.greedy else None, batch_size=args.batch_size,
                   compile=args.compile)
    if args.output:
        summary = generate_to_file(args.model, source, args.output, window=args.window_posts,
                                   overwrite=args.overwrite, progress=_show_progress(args), **options)
        if _report_run(args, summary):
            failed = summary["lines"] - summary["posts"]
            print(f"{summary['posts']} prompt(s) continued: {summary['lines']} line(s), one per input line, in "
                  f"{args.output}" + (f" ({failed} blank line(s) have an \"error\" instead)" if failed else ""))
        return
    model, tokenizer = load_model(args.model)
    model.to(processes().device)
    if (isinstance(source, Texts) and len(source.texts) == 1 and args.num_return_sequences == 1
            and not (args.no_stream or args.json)):
        from transformers import TextStreamer

        prompt = source.texts[0]

        class PromptStreamer(TextStreamer):
            """Prints the prompt's header when generation starts (after the inputs are checked), then the text."""

            def put(self, value):
                if self.next_tokens_are_prompt:
                    print(f"prompt 1: {prompt!r}\n  [1] {prompt}", end="", flush=True)
                super().put(value)

        streamer = PromptStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        generate_posts(model, tokenizer, [prompt], streamer=streamer, **options)
        return
    job = GenerateJob(model, tokenizer, prompt_name(source), **options)
    printer, printed = _JsonList(), [0]

    def show(records, lines):  # as each window is done; blank lines of a file are not prompts, as before
        done = [line for line in lines if "generations" in line]
        if args.json:
            for line in done:
                printer.add(line)
        elif done:
            print(format_generations([d["prompt"] for d in done], [d["generations"] for d in done], printed[0] + 1),
                  flush=True)
        printed[0] += len(done)

    process_posts(job, source, show, window=args.window_posts, progress=_show_progress(args))
    if args.json:
        printer.close()


class _JsonList:
    """Prints a JSON list a record at a time, as `json.dumps(records, ensure_ascii=False, indent=2)` prints it
    whole: the results of a long input appear as they come, and memory holds one window."""

    def __init__(self):
        self.count = 0

    def add(self, record: dict) -> None:
        import textwrap

        text = textwrap.indent(json.dumps(record, ensure_ascii=False, indent=2), "  ")
        print(("[\n" if self.count == 0 else ",\n") + text, end="", flush=True)
        self.count += 1

    def close(self) -> None:
        print("\n]" if self.count else "[]")


def _show_progress(args) -> bool:
    """A posts/s display on a terminal (not in logs or captured output), unless --quiet."""
    return not getattr(args, "quiet", False) and sys.stderr is not None and sys.stderr.isatty()


def _report_run(args, summary: dict) -> bool:
    """Say on stderr when a run with --output was resumed or found complete; True in the process that reports
    (process 0 under a launcher: the others return quietly)."""
    from .processing import processes

    if processes().rank != 0:
        return False
    if summary["already_complete"]:
        print(f"postformer {args.command}: {args.output} is complete already ({summary['lines']} lines): nothing was "
              "recomputed (--overwrite redoes it)", file=sys.stderr)
    elif summary["done_before"]:
        print(f"postformer {args.command}: resumed {args.output} after the {summary['done_before']} line(s) an earlier "
              "run had written", file=sys.stderr)
    return True


def _train(args):
    from .training import train
    from .training.arguments import dataclasses_from_namespace

    job, training_args = dataclasses_from_namespace("train", args)
    metrics = train(job, training_args)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch, report once
        return
    keys = ("eval_loss", "eval_perplexity", "eval_bits_per_character", "train_runtime", "parameters")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    print(f"model, tokenizer, metrics.json, loss_curve.png and model card (README.md) written to "
          f"{training_args.output_dir}")


def _posts_source(args):
    """The posts of --data (a file: all its posts; a folder: its --split) as a stream (`open_posts`)."""
    from .processing import open_posts

    if args.max_posts is not None and args.max_posts < 1:
        raise ValueError(f"--max-posts must be at least 1, got {args.max_posts}")
    return open_posts(args.data, args.text_field, args.split, _on_bad_lines(args))


def _on_bad_lines(args) -> str:
    return "skip" if getattr(args, "skip_bad_lines", False) else "error"


def _evaluate(args):
    from .evaluation import evaluate_source
    from .model_files import load_model
    from .processing import processes

    source = _posts_source(args)
    model, tokenizer = load_model(args.model)
    metrics = evaluate_source(model.to(processes().device), tokenizer, source, batch_size=args.batch_size,
                              stride=args.stride, window=args.window_posts, max_posts=args.max_posts,
                              progress=_show_progress(args))
    if processes().rank != 0:  # under a launcher, report once
        return
    from pathlib import Path

    from .saving import write_text

    data = Path(args.data) if args.data else None
    split = args.split if data is None or data.is_dir() else None  # a file is read whole
    metrics = {"model": str(args.model), "data": str(args.data or "bundled sample"), "split": split, **metrics}
    if args.output:
        write_text(args.output, json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


def _score(args):
    from .evaluation import ScoreJob, most_unusual, score_to_file
    from .model_files import load_model
    from .processing import Texts, process_posts, processes

    if args.texts and args.data:
        raise ValueError("give posts as TEXT arguments or with --data, not both")
    source = Texts(args.texts) if args.texts else _posts_source(args)
    max_posts = None if args.texts else args.max_posts
    if args.output:  # every post, with its per-token losses, one JSON object per line
        options = {"text_field": args.text_field, "split": args.split, "skip_bad_lines": args.skip_bad_lines}
        summary = score_to_file(args.model, source, args.output, batch_size=args.batch_size, stride=args.stride,
                                window=args.window_posts, max_posts=max_posts, overwrite=args.overwrite,
                                options=options, progress=_show_progress(args))
        if not _report_run(args, summary):
            return
        posts, ranked = summary["posts"], most_unusual(args.output, args.top)
    else:
        import heapq

        model, tokenizer = load_model(args.model)
        job = ScoreJob(model.to(processes().device), tokenizer, args.batch_size, args.stride)
        top = []  # (loss, -index, record): the --top highest losses, the earlier post first on a tie

        def keep(records, lines):
            for line in lines:
                if "loss" in line:
                    item = (line["loss"], -line["index"], line)
                    (heapq.heappush if len(top) < args.top else heapq.heappushpop)(top, item)

        posts = process_posts(job, source, keep, window=args.window_posts, max_posts=max_posts,
                              progress=_show_progress(args)).posts
        ranked = [item[2] for item in sorted(top, reverse=True)]
    if args.json:
        print(json.dumps(ranked, ensure_ascii=False, indent=2))
        return
    print(f"{posts} posts scored; the {len(ranked)} most unusual (highest mean token loss) first "
          "(#N: the post's number in the input, from 1):")
    for record in ranked:
        text = record["text"].replace("\n", " ")
        print(f"  #{record['index'] + 1:<6} loss {record['loss']:.3f}  ppl {record['perplexity']:10.1f}  "
              f"{record['tokens']:>4} tokens  {text[:80]}{'...' if len(text) > 80 else ''}")


def _compress(args):
    from .compression import compress_model, format_report

    report = compress_model(
        args.model,
        args.output_dir,
        dtype=args.dtype,
        int8=args.int8,
        prune=args.prune,
        prune_scope=args.prune_scope,
        data=args.data,
        text_field=args.text_field,
        max_posts=args.max_posts,
        on_bad_lines=_on_bad_lines(args),
    )
    print(format_report(report))
    print(f"model, tokenizer and compression_report.json written to {args.output_dir}")
    if args.json:
        print(json.dumps(report, indent=2))


def _classify_train(args):
    from .classification import run_classifier
    from .training.arguments import dataclasses_from_namespace

    job, training_args = dataclasses_from_namespace("classify-train", args)
    metrics = run_classifier(job, training_args)
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False, indent=2))
    else:
        for prefix, name in (("eval", "validation"), ("test", "test")):
            if f"{prefix}_accuracy" in metrics:
                print(f"{name} ({metrics[prefix + '_posts']} posts): accuracy {metrics[prefix + '_accuracy']:.3f}, "
                      f"macro-F1 {metrics[prefix + '_macro_f1']:.3f}; majority class {metrics['majority_label']!r}: "
                      f"accuracy {metrics[prefix + '_majority_accuracy']:.3f}, "
                      f"macro-F1 {metrics[prefix + '_majority_macro_f1']:.3f}")
        print(f"{'label':<20} {'train':>6} {'held out':>8} {'predicted':>9} {'F1':>6}")
        for label, row in metrics["eval_per_label"].items():
            print(f"{label[:20]:<20} {row['train']:>6} {row['support']:>8} {row['predicted']:>9} {row['f1']:>6.3f}")
    print(f"classifier, tokenizer, metrics.json and eval_predictions.jsonl written to {training_args.output_dir}")


def _classify(args):
    from .classification import ClassifyJob, classify_to_file, label_counts, load_classifier
    from .processing import Lines, Texts, process_posts

    if args.texts and args.file:
        raise ValueError("give posts as arguments or with --file, not both")
    if args.file:  # read as it is consumed: it can be larger than memory
        if not os.path.isfile(args.file):
            raise FileNotFoundError(f"posts file not found: {args.file}")
        source = Lines(args.file, "post")
    elif args.texts:
        source = Texts(args.texts)
    else:
        raise ValueError("no posts to classify: give TEXT arguments or --file with one post per line")
    if args.output:
        summary = classify_to_file(args.model, source, args.output, batch_size=args.batch_size,
                                   window=args.window_posts, overwrite=args.overwrite, progress=_show_progress(args))
        if _report_run(args, summary):
            counts, failed = label_counts(args.output)
            print(f"{summary['posts']} post(s) classified: {summary['lines']} line(s), one per input line, in "
                  f"{args.output}" + (f" ({failed} blank line(s) have an \"error\" instead)" if failed else ""))
            print("labels: " + ", ".join(f"{label} {count}" for label, count in counts.items()))
        return
    job = ClassifyJob(*load_classifier(args.model), args.batch_size)
    printer = _JsonList()

    def show(records, lines):  # as each window is done; blank lines are not posts, as before
        for line in lines:
            if "label" not in line:
                continue
            if args.json:
                printer.add(line)
            else:
                text = line["text"].replace("\n", " ")
                print(f"{line['label']}\t{line['score']:.3f}\t{text[:80]}{'...' if len(text) > 80 else ''}")

    process_posts(job, source, show, window=args.window_posts, progress=_show_progress(args))
    if args.json:
        printer.close()


def _attention(args):
    import importlib.util

    from .attention_maps import attention_weights, plot_attention
    from .model_files import load_model

    if importlib.util.find_spec("matplotlib") is None:  # say so before loading the model, as a user error
        print("postformer attention: error: drawing attention maps needs matplotlib: "
              "pip install 'postformer[extras]'", file=sys.stderr)
        raise SystemExit(2)
    model, tokenizer = load_model(args.model)
    maps = attention_weights(model, tokenizer, args.text)
    path = plot_attention(maps, args.output, layer=args.layer, head=args.head)
    if args.json:
        record = {"text": maps.text, "tokens": maps.tokens, "token_ids": maps.token_ids,
                  "shape": list(maps.weights.shape), "layer": args.layer, "head": args.head, "output": str(path)}
        if args.layer is not None and args.head is not None:  # one map is small enough to print
            record["weights"] = [[round(float(w), 6) for w in row] for row in maps.weights[args.layer, args.head]]
        print(json.dumps(record, ensure_ascii=False, indent=2))
        return
    layers, heads = maps.num_layers, maps.num_heads
    shown = (f"layer {args.layer}, head {args.head}" if args.layer is not None and args.head is not None
             else f"the {heads} heads of layer {args.layer}" if args.layer is not None
             else f"head {args.head} of the {layers} layers" if args.head is not None
             else f"{layers} layers x {heads} heads")
    print(f"{len(maps.tokens)} tokens: {' '.join(repr(token) for token in maps.tokens)}")
    print(f"attention of {shown} written to {path}")


def _push(args):
    from .push import format_plan, left_out, push_to_hub, upload_plan

    if args.dry_run:
        print(format_plan(upload_plan(args.model), args.repo_id, left_out(args.model)))
        print("dry run: nothing was uploaded")
        return
    url = push_to_hub(args.model, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message, token=args.token)
    print(f"pushed {args.model} to {args.repo_id}: {url}")


def _finetune(args):
    from .training.arguments import dataclasses_from_namespace
    from .training.finetune import run_finetune

    job, training_args = dataclasses_from_namespace("finetune", args)
    metrics = run_finetune(job, training_args)
    keys = ("eval_loss_before", "eval_loss", "eval_perplexity_before", "eval_perplexity", "train_runtime",
            "trainable_parameters", "parameters")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    written = "model"
    if job.lora:
        written = f"merged model ({job.quantize}), adapter/" if job.quantize else "merged model, adapter/"
    print(f"{written}, tokenizer, metrics.json and model card written to {training_args.output_dir}")


def _upgrade_adapter(args):
    from .training.finetune import upgrade_adapter

    upgrade_adapter(args.adapter, args.output_dir, model_dir=args.model)
    print(f"upgraded adapter (q_proj, k_proj, v_proj instead of qkv_proj) written to {args.output_dir}")


def _card(args):
    from .hub_cards import write_model_card

    path = write_model_card(args.model, base_model=args.base_model, license=args.license)
    if args.print:
        print(path.read_text(encoding="utf-8"))
    print(f"model card written to {path}", file=sys.stderr if args.print else sys.stdout)


def _export(args):
    from .export import export_model

    report = export_model(args.model, args.to, args.output_dir)
    if args.to == "onnx":
        print(f"exported to ONNX ({report['architecture']} graph with a key/value cache; ONNX Runtime's logits within "
              f"{report['max_abs_logit_difference_onnx']:.2e} of PyTorch's, greedy decoding identical) in "
              f"{args.output_dir}")
    else:
        print(f"exported to {report['architecture']} (largest logit difference "
              f"{report['max_abs_logit_difference']:.2e}, greedy decoding identical) in {args.output_dir}")


# (subcommand handlers are added above this line)


def _add_posts_flags(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--data", help=f"posts: a .jsonl/.csv/.txt file (all its posts) or a folder of split files "
                        f"or a datasets folder (default: {default})")
    parser.add_argument("--split", default="validation", help="split of a folder to use (default: validation)")
    parser.add_argument("--text-field", default="text", help="column holding the post text (default: text)")
    _add_skip_bad_lines_flag(parser)
    parser.add_argument("--max-posts", type=int, help="use only the first N posts")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    parser.add_argument("--stride", type=int, help="sliding-window step for posts longer than the context "
                        "(default: half the context)")


def _at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _add_window_flag(parser: argparse.ArgumentParser) -> None:
    from .processing import WINDOW

    parser.add_argument("--window-posts", type=_at_least_one, default=WINDOW, metavar="N",
                        help=f"posts read ahead, sorted by length and batched together (less padding), results still "
                        f"in input order; with --output, the unit of progress a rerun resumes from (default: {WINDOW})")


def _add_output_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--output", help=f"write {what} to this JSONL file, one line per input post (line, record) in "
                        "input order, as the work goes; rerun the same command to resume after a crash (progress is "
                        "kept in OUTPUT.progress/); under torchrun / accelerate launch the processes share the posts "
                        "and write one merged file")
    parser.add_argument("--overwrite", action="store_true", help="start --output over, even when it holds another "
                        "or an unfinished run (a finished run of the same command is otherwise not redone)")
    _add_window_flag(parser)


def _add_skip_bad_lines_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-bad-lines", action="store_true", help="skip malformed JSON lines and CSV rows "
                        "(and posts that are not text) with a warning giving their count, instead of stopping at the "
                        "first with an error naming its line")


def _add_training_command(commands, name: str, **kwargs):
    """A training command's parser: its job's options and PostformerTrainingArguments (HfArgumentParser), with the
    command's defaults and --config."""
    from .training.arguments import COMMAND_DEFAULTS, JOB_ARGUMENTS, PostformerTrainingArguments, add_config_flag

    parser = commands.add_parser(name, dataclass_types=(JOB_ARGUMENTS[name], PostformerTrainingArguments), **kwargs)
    add_config_flag(parser)
    parser.set_defaults(**COMMAND_DEFAULTS[name])
    if "output_dir" not in COMMAND_DEFAULTS[name]:  # where the result goes is the user's to say
        next(a for a in parser._actions if a.dest == "output_dir").required = True
    return parser


def build_parser() -> argparse.ArgumentParser:
    from transformers import HfArgumentParser

    from . import __version__

    parser = argparse.ArgumentParser(prog="postformer", description="Train, use and publish posts language models.")
    parser.add_argument("--version", action="version", version=f"postformer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=HfArgumentParser)

    tok = commands.add_parser("train-tokenizer", help="train a byte-level BPE posts tokenizer")
    tok.add_argument("--data", help="posts: .jsonl/.csv/.txt file, folder of split files or a datasets folder "
                     "(default: the bundled sample)")
    tok.add_argument("--text-field", default="text", help="column holding the post text (default: text)")
    _add_skip_bad_lines_flag(tok)
    tok.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (default: 8192)")
    tok.add_argument("--output-dir", required=True, help="folder to write tokenizer.json and its config to")
    tok.add_argument("--normalize", action="store_true", help="map URLs to <url> and @mentions to <user>")
    tok.add_argument("--model-max-length", type=int, default=512, help="context length recorded in the tokenizer")
    tok.add_argument("--quiet", action="store_true", help="no progress display")
    tok.add_argument("--json", action="store_true", help="also print the report as JSON")
    tok.set_defaults(func=_train_tokenizer)

    train = _add_training_command(
        commands, "train", help="train a tokenizer and a model (default: the small preset on the bundled sample)",
        description="Train a Postformer model. With no flags: the small preset on the bundled posts sample, on "
        "the CPU, in a few minutes. Runs under torchrun / accelerate launch unchanged. Every option of "
        "transformers' TrainingArguments is a flag too (--optim, --report_to, --gradient_checkpointing, ...).",
    )
    train.set_defaults(func=_train)

    gen = commands.add_parser("generate", help="continue prompts with a trained model")
    gen.add_argument("prompts", nargs="*", metavar="PROMPT",
                     help="text to continue; '' starts a new post (default: --prompts-file, else one prompt per "
                     "line on stdin when it is not a terminal, else a new post)")
    gen.add_argument("--model", required=True,
                     help="folder holding the model and its tokenizer (save_pretrained), or a Hub repo id")
    gen.add_argument("--prompts-file", "--file", help="file with one prompt per line")
    gen.add_argument("--max-new-tokens", type=int, default=60, help="tokens to generate at most (default: 60)")
    own = "default: the model's generation config, else postformer's posts settings"
    gen.add_argument("--temperature", type=float, help=f"sampling temperature, > 0 ({own})")
    gen.add_argument("--top-k", type=int, help=f"sample from the k likeliest tokens, 0: all ({own})")
    gen.add_argument("--top-p", type=float, help=f"nucleus sampling mass, in (0, 1] ({own})")
    gen.add_argument("--repetition-penalty", type=float, help=f"> 1 discourages repeats, 1: off ({own})")
    gen.add_argument("--no-repeat-ngram-size", type=int, help=f"never repeat an n-gram of this size, 0: off ({own})")
    gen.add_argument("--num-return-sequences", type=int, default=1, help="continuations per prompt (default: 1)")
    gen.add_argument("--seed", type=int, help="random seed: the same seed gives the same text")
    gen.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default: 8)")
    gen.add_argument("--compile", action="store_true", help="transformers' static cache and a torch.compile'd "
                     "decoding step (after a first call that compiles, seconds) instead of Postformer's lean loop, "
                     "which is faster on CPUs")
    gen.add_argument("--no-stream", action="store_true", help="print a single continuation at the end, not as it comes")
    gen.add_argument("--json", action="store_true", help="print a JSON list of {prompt, generations}")
    _add_output_flags(gen, "each prompt's {prompt, generations} (a blank line: {prompt, error})")
    gen.set_defaults(func=_generate)
    ev = commands.add_parser("evaluate", help="loss, perplexity and bits per character of a model on posts")
    ev.add_argument("--model", required=True, help="folder holding the model and its tokenizer, or a Hub repo id")
    _add_posts_flags(ev, "the bundled sample")
    ev.add_argument("--output", help="also write the metrics to this JSON file")
    _add_window_flag(ev)
    ev.set_defaults(func=_evaluate)

    sc = commands.add_parser("score", help="each post's mean token loss (find unusual or spammy posts)")
    sc.add_argument("texts", nargs="*", metavar="TEXT", help="posts to score (default: the posts of --data)")
    sc.add_argument("--model", required=True, help="folder holding the model and its tokenizer, or a Hub repo id")
    _add_posts_flags(sc, "the bundled sample")
    sc.add_argument("--top", type=int, default=20, help="print the N highest-loss posts (default: 20)")
    sc.add_argument("--json", action="store_true", help="print the top posts as JSON, with per-token losses")
    _add_output_flags(sc, "every post with its per-token losses (a record without a post: {index, text, error})")
    sc.set_defaults(func=_score)

    ct = _add_training_command(
        commands, "classify-train", help="fine-tune a trained language model into a posts classifier",
        description="Put a classification head on a trained language model and fine-tune it on labelled posts; "
        "reports accuracy and macro-F1 on held-out posts beside the majority-class baseline. Every option of "
        "transformers' TrainingArguments is a flag too.",
    )
    ct.add_argument("--json", action="store_true", help="print all metrics as JSON")
    ct.set_defaults(func=_classify_train)

    cl = commands.add_parser("classify", help="label posts with a classifier from classify-train")
    cl.add_argument("texts", nargs="*", metavar="TEXT", help="posts to classify")
    cl.add_argument("--model", required=True, help="classifier folder (written by `postformer classify-train`), or a "
                    "Hub repo id")
    cl.add_argument("--file", "--prompts-file", help="file with one post per line")
    cl.add_argument("--batch-size", type=int, default=32, help="posts classified together (default: 32)")
    cl.add_argument("--json", action="store_true", help="print a JSON list of {text, label, score, scores}")
    _add_output_flags(cl, "each post's {text, label, score, scores} (a blank line: {text, error})")
    cl.set_defaults(func=_classify)

    cmp = commands.add_parser(
        "compress", help="shrink a model folder (bf16/fp16, int8 weights, pruning) and measure the cost",
        description="Write a compressed copy of a model folder (model, tokenizer, compression_report.json): "
        "pruning first, then --dtype, then --int8. The report compares weights on disk, sparsity, validation "
        "perplexity and greedy generation speed before and after. The result is a custom-code model folder, "
        "like any Postformer folder: it loads with AutoModelForCausalLM.from_pretrained(OUT, "
        "trust_remote_code=True), nothing more for the compression; an --int8 folder needs torchao installed "
        "(pip install 'postformer[extras]').",
    )
    cmp.add_argument("--model", required=True, help="folder holding the model and its tokenizer (save_pretrained)")
    cmp.add_argument("--output-dir", required=True, help="new or empty folder to write the compressed model to")
    cmp.add_argument("--dtype", choices=["fp16", "bf16"], help="cast the weights to this half precision")
    cmp.add_argument("--int8", action="store_true", help="int8 weight-only quantisation of the decoder's Linear "
                     "layers with torchao (the tied embedding / LM head stay in floating point)")
    cmp.add_argument("--prune", type=float, metavar="RATIO", help="zero this fraction, in [0, 1), of the "
                     "smallest-magnitude Linear weights (L1 unstructured; not the embedding / LM head)")
    cmp.add_argument("--prune-scope", choices=["global", "layer"], default="global",
                     help="rank weights over all layers together, or prune each layer by RATIO (default: global)")
    cmp.add_argument("--data", help="posts to measure perplexity on: a file (all its posts) or a folder's "
                     "validation split (default: the bundled sample's validation split)")
    cmp.add_argument("--text-field", default="text", help="column holding the post text (default: text)")
    cmp.add_argument("--max-posts", type=int, help="measure perplexity on the first N posts only")
    _add_skip_bad_lines_flag(cmp)
    cmp.add_argument("--json", action="store_true", help="also print the report as JSON")
    cmp.set_defaults(func=_compress)

    att = commands.add_parser(
        "attention", help="draw a model's attention on a post as a heat-map PNG",
        description="Run the model once on a post and draw its attention probabilities (queries as rows, keys "
        "as columns): one head with --layer and --head, all heads of a layer with --layer alone, one head "
        "across the layers with --head alone, else a grid of every layer and head. Layers and heads are "
        "numbered from 0. Needs matplotlib (pip install 'postformer[extras]').",
    )
    att.add_argument("--model", required=True,
                     help="folder holding the model and its tokenizer (save_pretrained), or a Hub repo id")
    att.add_argument("--text", required=True, help="the post, encoded as a post: <s> then the text")
    att.add_argument("--output", required=True, help="PNG file to write (missing folders are made)")
    att.add_argument("--layer", type=int, help="layer to draw, from 0 (default: all layers)")
    att.add_argument("--head", type=int, help="head to draw, from 0 (default: all heads)")
    att.add_argument("--json", action="store_true", help="print the tokens and the weights' shape as JSON, and "
                     "the weights too when --layer and --head pick one map")
    att.set_defaults(func=_attention)

    push = commands.add_parser(
        "push", help="check a model folder and upload it to the Hugging Face Hub",
        description="Upload a model folder (weights, config with auto_map, code, tokenizer, generation config, "
        "model card) to a Hub model repository in one commit. Checkpoints, logs, pickles, hidden and temporary "
        "files are left out; --dry-run lists what would be uploaded.",
    )
    push.add_argument("--model", required=True, help="the model folder (save_pretrained output with README.md)")
    push.add_argument("--repo-id", required=True, help="the Hub repository: 'name' or 'namespace/name'")
    push.add_argument("--private", action="store_true", help="create the repository private (if it is new)")
    push.add_argument("--revision", help="branch to commit to, created if missing (default: main)")
    push.add_argument("--commit-message", help="commit message (default: 'Upload FOLDER with postformer')")
    push.add_argument("--token", help="Hub token with write access (default: HF_TOKEN, else `hf auth login`'s)")
    push.add_argument("--dry-run", action="store_true", help="check the folder and list the files; upload nothing")
    push.set_defaults(func=_push)

    ft = _add_training_command(
        commands, "finetune", help="fine-tune a saved model on posts, fully or with LoRA",
        description="Fine-tune a model folder on posts. With --lora, LoRA adapters are trained on "
        "--target-modules (default: q_proj k_proj v_proj o_proj up_proj down_proj, every Linear layer of the "
        "blocks) and the output folder gets the merged model plus the adapter in adapter/. --lora --quantize int8 "
        "trains the adapters on a base loaded with int8 weights (QLoRA on the CPU, torchao); the merged model is then "
        "int8 too. Every option of transformers' TrainingArguments is a flag too.",
    )
    ft.set_defaults(func=_finetune)

    card = commands.add_parser(
        "card", help="(re)write a model folder's README.md model card from the files it holds",
        description="Render the model card (README.md with Hub metadata) of a saved model folder from its "
        "config.json, weights, training_config.json, metrics.json, loss_curve.png and compression_report.json.",
    )
    card.add_argument("--model", required=True, help="folder holding the saved model")
    card.add_argument("--base-model", help="Hub id of the model this one was fine-tuned from (metadata base_model)")
    card.add_argument("--license", help="licence identifier for the card (default: mit for the bundled sample, "
                      "the data README's licence, else other)")
    card.add_argument("--print", action="store_true", help="also print the card")
    card.set_defaults(func=_card)

    upgrade = commands.add_parser(
        "upgrade-adapter", help="rewrite a Postformer 0.1 LoRA adapter (fused qkv_proj) for q_proj/k_proj/v_proj",
        description="LoRA adapters trained on Postformer 0.1 target its fused qkv_proj, which models no longer "
        "have: PEFT loads such an adapter without an error but drops its qkv_proj weights. This writes an "
        "equivalent adapter for the separate q_proj, k_proj and v_proj.",
    )
    upgrade.add_argument("adapter", help="the old adapter folder (adapter_config.json, adapter_model.safetensors)")
    upgrade.add_argument("--output-dir", required=True, help="folder to write the upgraded adapter to")
    upgrade.add_argument("--model", help="the base model folder, for the q/k/v sizes (default: the folder above the "
                         "adapter, where finetune puts it)")
    upgrade.set_defaults(func=_upgrade_adapter)

    export = commands.add_parser(
        "export", help="export a model to a stock transformers architecture (starcoder2 or gpt2) or to ONNX",
        description="Write the model as a stock Starcoder2ForCausalLM (rotary positions) or GPT2LMHeadModel (learned, "
        "sinusoidal or no positions) with its tokenizer, loadable with no custom code, or (--to onnx) that model as "
        "model.onnx with its key/value cache as inputs and outputs, for ONNX Runtime (pip install "
        "'postformer[onnx]'); the export is checked against the Postformer (logits and greedy decoding) before it "
        "is written.",
    )
    export.add_argument("--model", required=True, help="folder holding the saved Postformer model")
    export.add_argument("--to", required=True, choices=["starcoder2", "gpt2", "onnx"], help="target architecture")
    export.add_argument("--output-dir", required=True, help="folder to write the exported model to")
    export.set_defaults(func=_export)

    # (subcommands are added above this line, one block each)
    for command in commands.choices.values():  # one progress switch for every command (see progress.py)
        if "--quiet" not in command._option_string_actions:
            command.add_argument("--quiet", action="store_true", help="no progress bars (the libraries' included)")
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
               NonFiniteLossError, ConnectionError)


def _show_warning(command: str, show_default):
    """Warnings of postformer's own classes (skipped lines, unknown config fields) as one line, like errors."""

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] == "postformer":
            print(f"postformer {command}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show_default(message, category, filename, lineno, file, line)

    return show


def _expand_config(parser, argv: list[str]) -> list[str]:
    """`COMMAND --config FILE ...`: the file's options as flags placed before the command line's, which win."""
    command = _training_commands(parser).get(argv[0]) if argv else None
    if command is None or "--config" not in argv:
        return argv
    from .training.arguments import config_file_arguments

    at = argv.index("--config")
    if at + 1 >= len(argv):
        return argv  # argparse reports the missing value
    return [argv[0], *config_file_arguments(argv[at + 1], command), *argv[1:at], *argv[at + 2 :]]


def _commands(parser) -> dict:
    """Each subcommand's name and parser."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _training_commands(parser) -> dict:
    from .training.arguments import JOB_ARGUMENTS

    return {name: _commands(parser)[name] for name in JOB_ARGUMENTS}


def _parse(parser, argv: list[str]):
    """Parse; unknown flags are reported by the command's own parser with the closest flags it knows."""
    import difflib

    args, extras = parser.parse_known_args(argv)
    if extras:
        command = _commands(parser)[args.command]
        options = [o for o in command._option_string_actions if o.startswith("--")]
        hints = []
        for extra in extras:
            close = difflib.get_close_matches(extra.split("=")[0], options, n=2, cutoff=0.6)
            if close and extra.startswith("-"):
                hints.append(f"{extra} (did you mean {' or '.join(close)}?)")
        command.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; {'; '.join(hints)}" if hints else ""))
    return args


def main(argv=None) -> int:
    from .training.run import TrainingInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = argv[0] if argv else None
    try:
        args = _parse(parser, _expand_config(parser, argv))
    except USER_ERRORS as error:  # an unreadable --config file
        print(f"postformer {command}: error: {error}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(), progress_bars(not getattr(args, "quiet", False)):
        warnings.showwarning = _show_warning(args.command, warnings.showwarning)
        try:
            args.func(args)
        except TrainingInterrupted as interrupted:
            again = argv if "--resume" in argv else [*argv, "--resume"]
            print(f"\npostformer {args.command}: interrupted at step {interrupted.step}; resume with: "
                  f"postformer {shlex.join(again)}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:  # Ctrl-C elsewhere: one line, the usual exit status, no traceback
            resume = "; the same command resumes where it stopped" if getattr(args, "overwrite", None) is not None \
                and args.output else ""
            print(f"\npostformer {args.command}: interrupted{resume}", file=sys.stderr)
            return 130
        except USER_ERRORS as error:
            print(f"postformer {args.command}: error: {error}", file=sys.stderr)
            return 2
        except Exception as error:
            from .saving import DiskFullError, is_disk_full

            if not is_disk_full(error):
                raise
            # Saves that stage their files say what and where (DiskFullError); any other write says so here.
            where = f" while writing {error.filename}" if getattr(error, "filename", None) else ""
            message = error if isinstance(error, DiskFullError) else (
                f"no space left on device{where}; free some space and run again (the error was: {error})")
            print(f"postformer {args.command}: error: {message}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
