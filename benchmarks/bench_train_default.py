"""The default training job (`postformer train` with no flags: tokenizer + "small" preset on the bundled sample),
timed end to end on this machine: wall time, validation perplexity and bits per character, tokens/second.

    python benchmarks/bench_train_default.py        # about 75 s on 2 quiet CPU cores
"""

import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from postformer.training import train
from postformer.training.arguments import command_arguments

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        job, args = command_arguments("train", output_dir=str(Path(tmp) / "small"), quiet=True)
        start = time.perf_counter()
        metrics = train(job, args)
        wall = time.perf_counter() - start
        history = json.loads((Path(args.output_dir) / "trainer_state.json").read_text())["log_history"]
    rates = [e["tokens_per_second"] for e in history if "tokens_per_second" in e]
    mfus = [e["mfu"] for e in history if "mfu" in e]
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                    "platform": platform.platform(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "config": {"preset": job.preset, "max_steps": args.max_steps, "batch_size": args.per_device_train_batch_size,
                   "block_size": job.block_size, "learning_rate": args.learning_rate, "vocab_size": job.vocab_size},
        "wall_time_s": wall,
        "train_runtime_s": metrics["train_runtime"],
        "parameters": metrics["parameters"],
        "eval_loss": metrics["eval_loss"],
        "eval_perplexity": metrics["eval_perplexity"],
        "eval_bits_per_character": metrics["eval_bits_per_character"],
        "median_tokens_per_second": statistics.median(rates),
        "median_mfu": statistics.median(mfus),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_default.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join([
        "| wall time | train time | parameters | val. perplexity | val. bits/char | tokens/s (median) | MFU (median) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {wall:.0f} s | {metrics['train_runtime']:.0f} s | {metrics['parameters']:,} | {metrics['eval_perplexity']:.1f} "
        f"| {metrics['eval_bits_per_character']:.3f} | {result['median_tokens_per_second']:,.0f} | {100 * result['median_mfu']:.1f}% |",
    ])
    (RESULTS / "train_default.md").write_text(f"# Default training job\n\nCommand: `{result['command']}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
