"""Time Postformer presets against transformers' LlamaForCausalLM of the same shape, on the CPU.

For each preset both models get the same vocab, hidden and feed-forward sizes, layers, heads, key-value heads,
positions and tied embeddings. Llama's feed-forward is gated (three matrices against Postformer's two) and has
no biases, so it has somewhat more parameters: both counts are reported.

Measured, with the two models interleaved (A B A B ...) after warm-up, medians over repetitions:
  forward     batch 1 x 128 tokens, eval mode, torch.inference_mode (each repetition: mean of a few calls)
  train step  batch 8 x 128 tokens: forward with labels, backward, AdamW step, zero_grad
Neither model builds a key-value cache (use_cache=False): one pass over a prompt does not need it.
Speed-up = llama ms / postformer ms, so > 1 means Postformer is faster.

    python benchmarks/bench_model.py                  # small, medium, large (a few minutes on 2 cores)
    python benchmarks/bench_model.py --quick          # smoke run: numbers mean nothing
"""

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from postformer.modeling import PostformerConfig, PostformerForCausalLM

SEQ_LEN, FORWARD_BATCH, TRAIN_BATCH = 128, 1, 8
SHARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "max_position_embeddings")


def build_models(preset: str) -> dict:
    config = PostformerConfig.from_preset(preset, hidden_dropout=0.0, attention_dropout=0.0)
    llama_config = LlamaConfig(**{k: getattr(config, k) for k in SHARED}, tie_word_embeddings=True,
                               attention_dropout=0.0)
    torch.manual_seed(0)
    postformer = PostformerForCausalLM(config)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(llama_config)
    return {"postformer": postformer, "llama": llama}


def time_forward(model, input_ids, calls: int) -> float:
    """Mean milliseconds of one forward pass over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        model(input_ids=input_ids, use_cache=False)
    return (time.perf_counter() - start) / calls * 1000


def time_train_step(model, optimizer, input_ids) -> float:
    start = time.perf_counter()
    loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return (time.perf_counter() - start) * 1000


def bench_preset(preset: str, args) -> dict:
    models = build_models(preset)
    generator = torch.Generator().manual_seed(0)
    vocab = models["postformer"].config.vocab_size
    forward_ids = torch.randint(4, vocab, (FORWARD_BATCH, SEQ_LEN), generator=generator)
    train_ids = torch.randint(4, vocab, (TRAIN_BATCH, SEQ_LEN), generator=generator)
    forward = {name: [] for name in models}
    train = {name: [] for name in models}

    with torch.inference_mode():
        for model in models.values():
            model.eval()
        for rep in range(args.warmup + args.repeats):
            for name, model in models.items():  # interleaved: A B A B ...
                ms = time_forward(model, forward_ids, args.calls)
                if rep >= args.warmup:
                    forward[name].append(ms)

    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    for model in models.values():
        model.train()
    for rep in range(args.warmup + args.train_repeats):
        for name, model in models.items():
            ms = time_train_step(model, optimizers[name], train_ids)
            if rep >= args.warmup:
                train[name].append(ms)

    result = {"preset": preset, "config": {k: getattr(models["postformer"].config, k) for k in SHARED},
              "params": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}}
    for key, samples in (("forward", forward), ("train_step", train)):
        medians = {name: statistics.median(values) for name, values in samples.items()}
        result[key] = {"median_ms": medians, "samples_ms": samples,
                       "speedup_llama_over_postformer": medians["llama"] / medians["postformer"]}
    return result


def markdown_table(results: list[dict]) -> str:
    lines = ["| preset | params postformer | params llama | forward ms postformer | forward ms llama "
             "| forward speed-up | train-step ms postformer | train-step ms llama | train-step speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f, t = r["forward"], r["train_step"]
        lines.append(
            f"| {r['preset']} | {r['params']['postformer']:,} | {r['params']['llama']:,} "
            f"| {f['median_ms']['postformer']:.2f} | {f['median_ms']['llama']:.2f} "
            f"| {f['speedup_llama_over_postformer']:.2f}x "
            f"| {t['median_ms']['postformer']:.1f} | {t['median_ms']['llama']:.1f} "
            f"| {t['speedup_llama_over_postformer']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "medium", "large"],
                        choices=["small", "medium", "large", "base"])
    parser.add_argument("--repeats", type=int, default=7, help="timed forward repetitions (default 7)")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed training steps (default 5)")
    parser.add_argument("--calls", type=int, default=5, help="forward calls averaged per repetition (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (default 2)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 1 call, 1 warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.train_repeats, args.calls, args.warmup = 2, 2, 1, 1

    machine = {"torch": torch.__version__, "transformers": transformers.__version__,
               "python": platform.python_version(), "threads": torch.get_num_threads(),
               "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    settings = {k: getattr(args, k) for k in ("repeats", "train_repeats", "calls", "warmup", "quick")}
    settings.update(seq_len=SEQ_LEN, forward_batch=FORWARD_BATCH, train_batch=TRAIN_BATCH)
    command = shlex.join(["python", *sys.argv])

    results = []
    for preset in args.presets:
        print(f"benchmarking {preset} ...", flush=True)
        results.append(bench_preset(preset, args))
    table = markdown_table(results)
    print("\n" + table)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "machine": machine, "settings": settings, "results": results}
    (args.output_dir / "model_vs_llama.json").write_text(json.dumps(report, indent=2) + "\n")
    header = [
        "# Postformer vs LlamaForCausalLM (same shape, CPU)", "",
        f"Command: `{command}`", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), "",
        "Medians in milliseconds; speed-up = llama / postformer (> 1: Postformer faster). "
        "Llama's gated feed-forward gives it more parameters at the same sizes.", "",
    ]
    if args.quick:
        header += ["**Smoke run (--quick): too few repetitions for the numbers to mean anything.**", ""]
    (args.output_dir / "model_vs_llama.md").write_text("\n".join(header) + "\n" + table + "\n")
    print(f"\nwrote {args.output_dir / 'model_vs_llama.json'} and {args.output_dir / 'model_vs_llama.md'}")


if __name__ == "__main__":
    main()
