"""Sliding-window benchmark: forward and generation at 2,048 tokens with and without a window, and the cache's bytes.

Two models with the same weights: a preset (default "small") configured for `--length` positions, with full
attention and with `sliding_window=--window` on every layer. Measured in one run, the two interleaved (full,
window, full, window, ...), medians of `--repeats` timed repetitions after one untimed warm-up:

  forward     batch 1 x length tokens, eval mode, torch.inference_mode, use_cache=False, per attention kernel
              (`--kernels`, default sdpa, eager and flex_attention; flex compiles in its warm-up call), ms;
  generation  greedy decoding from a `--prompt`-token prompt to `--length` tokens in all (min_new_tokens =
              max_new_tokens), batch 1, tokens/s: plain `generate` (the lean loop, whose sliding layers keep a
              ring of the window; checked by DECODING_PATHS) and transformers' own loop
              (`GenerationMixin.generate`, with transformers' DynamicCache, windowed layers for the window);
              the greedy tokens of the two loops are compared;
  cache bytes the keys and values held after generation: transformers' DynamicCache (returned by generate) and
              the lean loop's buffers (its growing full-attention buffers, its ring for sliding layers).

Ratios are window / full from the same run (time ratio < 1 and tokens/s ratio > 1: the window is faster). The
machine is shared (2 cores, other jobs running): one torch thread (--threads), and the load average is recorded at
the start and the end.

    python benchmarks/bench_sliding_window.py --preset small --length 2048 --window 256
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationMixin

from postformer import PostformerConfig, PostformerForCausalLM
from postformer.modeling import generation_postformer
from postformer.modeling.generation_postformer import DECODING_PATHS
from results_file import machine

RESULTS = Path(__file__).resolve().parent / "results"


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def cache_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class CapturingDecoder(generation_postformer.LeanDecoder):
    """The lean loop's decoder, kept after the call so that its cache buffers can be measured."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CapturingDecoder.last = self


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--length", type=int, default=2048, help="tokens of the forward pass and of each generation")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens of each generation")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward repetitions per model and kernel")
    parser.add_argument("--gen-repeats", type=int, default=3, help="timed generations per model and loop")
    parser.add_argument("--kernels", nargs="+", default=["sdpa", "eager", "flex_attention"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared 2-core machine "
                        "two threads contend with other jobs, and ran the lean loop 6x slower than one)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()

    torch.manual_seed(0)
    base = dict(max_position_embeddings=cli.length, hidden_dropout=0.0, attention_dropout=0.0)
    models = {"full": PostformerForCausalLM(PostformerConfig.from_preset(cli.preset, **base)).eval()}
    models["window"] = PostformerForCausalLM(
        PostformerConfig.from_preset(cli.preset, sliding_window=cli.window, **base)).eval()
    models["window"].load_state_dict(models["full"].state_dict())
    config = models["full"].config
    ids = torch.randint(4, config.vocab_size, (1, cli.length), generator=torch.Generator().manual_seed(0))
    prompt = ids[:, : cli.prompt]
    new = cli.length - cli.prompt
    greedy = dict(do_sample=False, max_new_tokens=new, min_new_tokens=new, eos_token_id=None, pad_token_id=0)
    results = {name: {"forward_ms": {}, "generation": {}} for name in models}

    with torch.inference_mode():
        for kernel in cli.kernels:
            samples = {name: [] for name in models}
            for name, model in models.items():
                model.set_attn_implementation(kernel)
                model(ids, use_cache=False)  # warm-up
            for _ in range(cli.repeats):  # interleaved
                for name, model in models.items():
                    samples[name].append(seconds(lambda: model(ids, use_cache=False)))
            for name in models:
                results[name]["forward_ms"][kernel] = statistics.median(samples[name]) * 1000
            print(kernel, {name: round(results[name]["forward_ms"][kernel], 2) for name in models}, flush=True)
        for model in models.values():
            model.set_attn_implementation("sdpa")

        generation_postformer.LeanDecoder = CapturingDecoder
        try:
            loops = {
                "lean": lambda model: model.generate(prompt, **greedy),
                "transformers": lambda model: GenerationMixin.generate(model, prompt, **greedy,
                                                                        return_dict_in_generate=True),
            }
            outputs = {}
            for loop, run in loops.items():
                samples = {name: [] for name in models}
                for name, model in models.items():
                    before = DECODING_PATHS["lean"]
                    outputs[name, loop] = run(model)  # warm-up, and the output measured below
                    assert (DECODING_PATHS["lean"] - before == 1) == (loop == "lean"), (name, loop)
                    if loop == "lean":
                        decoder = CapturingDecoder.last
                        results[name]["generation"]["lean_cache_bytes"] = cache_bytes(decoder.keys + decoder.values)
                    else:
                        cache = outputs[name, loop].cache
                        results[name]["generation"]["transformers_cache_bytes"] = cache_bytes(
                            [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)])
                for _ in range(cli.gen_repeats):
                    for name, model in models.items():
                        samples[name].append(seconds(lambda: run(model)))
                for name in models:
                    results[name]["generation"][f"{loop}_tokens_per_s"] = new / statistics.median(samples[name])
                print(loop, {name: round(results[name]["generation"][f"{loop}_tokens_per_s"]) for name in models},
                      flush=True)
        finally:
            generation_postformer.LeanDecoder = CapturingDecoder.__mro__[1]
        for name in models:
            lean, plain = outputs[name, "lean"], outputs[name, "transformers"].sequences
            results[name]["generation"]["lean_equals_transformers_tokens"] = bool(torch.equal(lean, plain))

    full, window = results["full"], results["window"]
    ratios = {f"forward_ms_{kernel}": window["forward_ms"][kernel] / full["forward_ms"][kernel]
              for kernel in cli.kernels}
    for key in ("lean_tokens_per_s", "transformers_tokens_per_s", "lean_cache_bytes", "transformers_cache_bytes"):
        ratios[key] = window["generation"][key] / full["generation"][key]
    record = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{machine()}, load average start {'/'.join(f'{x:.2f}' for x in load_start)}, end "
                   f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}",
        "settings": {"preset": cli.preset, "length": cli.length, "window": cli.window, "prompt": cli.prompt,
                     "new_tokens": new, "repeats": cli.repeats, "gen_repeats": cli.gen_repeats,
                     "kernels": cli.kernels, "parameters": sum(p.numel() for p in models["full"].parameters())},
        "results": results,
        "ratios_window_over_full": ratios,
        "total_s": round(time.perf_counter() - started, 1),
    }
    cli.output_dir.mkdir(parents=True, exist_ok=True)
    (cli.output_dir / "sliding_window.json").write_text(json.dumps(record, indent=2) + "\n")

    settings = record["settings"]
    lines = [
        "# Sliding-window attention: forward and generation with and without a window (CPU)",
        "",
        f"Command: `{record['command']}`", "", f"Machine: {record['machine']} (shared with other jobs)", "",
        f"Preset {settings['preset']} ({settings['parameters']:,} parameters) with max_position_embeddings "
        f"{settings['length']}: full attention against sliding_window {settings['window']} on every layer, same "
        f"weights. Medians: forward batch 1 x {settings['length']} ({settings['repeats']} repetitions per kernel), "
        f"greedy generation of {new} tokens after a {settings['prompt']}-token prompt, batch 1 "
        f"({settings['gen_repeats']} runs per loop); the two models interleaved. Ratio = window / full, same run. "
        f"Total time {record['total_s']} s.",
        "",
        "| measure | full | window | ratio |",
        "|---|---:|---:|---:|",
    ]
    for kernel in cli.kernels:
        lines.append(f"| forward ms ({kernel}) | {full['forward_ms'][kernel]:.1f} | {window['forward_ms'][kernel]:.1f} "
                     f"| {ratios[f'forward_ms_{kernel}']:.2f} |")
    names = {"lean_tokens_per_s": "generation tokens/s (generate: lean loop)",
             "transformers_tokens_per_s": "generation tokens/s (transformers' loop)"}
    for key, label in names.items():
        lines.append(f"| {label} | {full['generation'][key]:.0f} | {window['generation'][key]:.0f} | "
                     f"{ratios[key]:.2f} |")
    names = {"lean_cache_bytes": "cache after generation, lean loop (KB)",
             "transformers_cache_bytes": "cache after generation, transformers' DynamicCache (KB)"}
    for key, label in names.items():
        lines.append(f"| {label} | {full['generation'][key] / 1e3:.0f} | {window['generation'][key] / 1e3:.0f} | "
                     f"{ratios[key]:.3f} |")
    same = {name: results[name]["generation"]["lean_equals_transformers_tokens"] for name in models}
    lines += ["", f"Greedy tokens of the lean loop equal transformers' loop: full {same['full']}, window "
                  f"{same['window']}."]
    (cli.output_dir / "sliding_window.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
