"""Compression of the trained default model on the CPU: what each variant saves and what it costs.

Variants, each saved with save_pretrained (safetensors) and measured on the copy loaded back from its folder:
  fp32          the trained model as it is
  bf16, fp16    every floating tensor in half precision
  int8          torchao weight-only int8 of the decoder's Linear layers (embedding / tied LM head stay fp32)
  bf16+int8     int8 Linear weights, everything else bf16
  pruned30      30% of the decoder's Linear weights zeroed (L1 unstructured, global), fp32
  pruned30+int8 the same, then int8
Measured: weights on disk, validation perplexity (the bundled sample's validation split, `evaluate_posts`) and
greedy generation speed at batch 1, in new tokens per second: every run generates exactly --new-tokens tokens
from "<s>" (end-of-post ignored, so that all variants do the same work); the variants are interleaved
(A B C ... A B C ...) after --warmup untimed rounds, and the median over --repeats rounds is reported.

    python benchmarks/bench_compression.py                     # trains the default model first (~75 s)
    python benchmarks/bench_compression.py --model runs/small  # a trained model folder
    python benchmarks/bench_compression.py --model DIR --repeats 1 --warmup 0 --max-posts 20 \\
        --output-dir /tmp/bench                                # smoke run: numbers mean nothing
"""

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from postformer.compression import prune_model, quantize_int8, sparsity, to_dtype, weights_size
from postformer.data import load_posts_split
from postformer.evaluation import evaluate_posts
from postformer.model_files import load_model

VARIANTS = {  # name: (prune ratio, dtype, int8), applied in that order, as `postformer compress` does
    "fp32": (None, None, False),
    "bf16": (None, "bf16", False),
    "fp16": (None, "fp16", False),
    "int8": (None, None, True),
    "bf16+int8": (None, "bf16", True),
    "pruned30": (0.3, None, False),
    "pruned30+int8": (0.3, None, True),
}


def build_variant(model_dir: Path, name: str, folder: Path) -> Path:
    """Save variant `name` of the model in `model_dir` to `folder` (the original folder for fp32)."""
    ratio, dtype, int8 = VARIANTS[name]
    if ratio is None and dtype is None and not int8:
        return model_dir
    model, tokenizer = load_model(model_dir)
    if ratio is not None:
        prune_model(model, ratio, "global")
    if dtype is not None:
        to_dtype(model, dtype)
    if int8:
        model = quantize_int8(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def time_generation(model, inputs, new_tokens: int, pad_id: int) -> float:
    """New tokens per second of one greedy generation of exactly `new_tokens` tokens."""
    start = time.perf_counter()
    output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            pad_token_id=pad_id)
    return (output.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - start)


def markdown_table(results: list[dict]) -> str:
    lines = ["| variant | weights MB | size vs fp32 | sparsity | val. perplexity | change | tokens/s (median) "
             "| speed vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['weights_mb']:.2f} | {r['size_ratio']:.2f}x | {r['sparsity']:.1%} "
            f"| {r['perplexity']:.2f} | {r['perplexity_change']:+.2%} | {r['tokens_per_second']:.1f} "
            f"| {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="trained model folder (default: train the default model)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-posts", type=int, help="validation posts for perplexity (default: all)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per timed generation (default 64)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if "fp32" not in args.variants:
        args.variants.insert(0, "fp32")  # the reference of every ratio

    machine = {"torch": torch.__version__, "transformers": transformers.__version__,
               "python": platform.python_version(), "threads": torch.get_num_threads(),
               "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    settings = {k: getattr(args, k) for k in ("max_posts", "new_tokens", "repeats", "warmup")}
    settings.update(batch_size=1, decoding="greedy", prompt="<s> (a new post)", prune_scope="global")
    command = shlex.join(["python", *sys.argv])

    with tempfile.TemporaryDirectory(prefix="bench-compression-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from postformer.training import train
            from postformer.training.arguments import command_arguments

            print("training the default model ...", flush=True)
            model_dir = tmp / "small"
            train(*command_arguments("train", output_dir=str(model_dir), quiet=True))
        texts = load_posts_split(None, "text", "validation")[: args.max_posts]

        models, results = {}, {}
        for name in args.variants:
            print(f"building and evaluating {name} ...", flush=True)
            folder = build_variant(model_dir, name, tmp / name)
            model, tokenizer = load_model(folder)
            metrics = evaluate_posts(model, tokenizer, texts)
            models[name] = model
            results[name] = {"variant": name, "steps": dict(zip(("prune", "dtype", "int8"), VARIANTS[name])),
                             "weights_bytes": weights_size(folder), "weights_mb": weights_size(folder) / 1e6,
                             "sparsity": sparsity(model)["overall"], "perplexity": metrics["perplexity"],
                             "bits_per_character": metrics["bits_per_character"], "posts": metrics["posts"]}

        inputs = tokenizer("", return_tensors="pt")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        new_tokens = min(args.new_tokens, models["fp32"].config.max_position_embeddings - inputs["input_ids"].shape[1])
        samples = {name: [] for name in models}
        print("timing generation ...", flush=True)
        with torch.inference_mode():
            for rep in range(args.warmup + args.repeats):
                for name, model in models.items():  # interleaved: A B C ... A B C ...
                    speed = time_generation(model, inputs, new_tokens, pad_id)
                    if rep >= args.warmup:
                        samples[name].append(speed)

    reference = results["fp32"]
    for name, result in results.items():
        result["tokens_per_second"] = statistics.median(samples[name])
        result["samples_tokens_per_second"] = samples[name]
        result["size_ratio"] = result["weights_bytes"] / reference["weights_bytes"]
        result["perplexity_change"] = result["perplexity"] / reference["perplexity"] - 1
    for result in results.values():
        result["speedup"] = result["tokens_per_second"] / reference["tokens_per_second"]
    rows = list(results.values())
    table = markdown_table(rows)
    print("\n" + table)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "model": str(args.model or "default model, trained by this run"),
              "machine": machine, "settings": settings, "results": rows}
    (args.output_dir / "compression.json").write_text(json.dumps(report, indent=2) + "\n")
    header = [
        "# Compression of the trained default model (CPU)", "",
        f"Command: `{command}`", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), "",
        "Weights on disk: the safetensors files. Perplexity: the bundled sample's validation split. Speed: greedy "
        "new tokens per second at batch 1, median of interleaved rounds; > 1x: faster than fp32. int8 is torchao "
        "weight-only on the decoder's Linear layers; the tied embedding / LM head stays in floating point.", "",
    ]
    if args.repeats < 3:
        header += ["**Smoke run: too few repetitions for the speeds to mean anything.**", ""]
    (args.output_dir / "compression.md").write_text("\n".join(header) + "\n" + table + "\n")
    print(f"\nwrote {args.output_dir / 'compression.json'} and {args.output_dir / 'compression.md'}")


if __name__ == "__main__":
    main()
