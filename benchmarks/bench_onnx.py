"""ONNX Runtime against PyTorch: greedy decoding speed of `postformer export --to onnx` on the CPU.

Per preset (randomly initialised, seed 0, rotary positions: the ONNX graph is Starcoder2's), the model is exported
as `postformer export --to onnx` exports it (`convert`, `write_onnx`, then `verify_onnx`: logits within 1e-4 at
prefill and decoding steps, greedy tokens equal). Then greedy decoding of exactly --new-tokens tokens after a
16-token prompt (no stop token; the generation config of training, pad and "<s>" suppressed), batch 1 and batch 8:

  pytorch       `model.generate(do_sample=False)` on the Postformer: its lean CPU decoding loop (checked by
                DECODING_PATHS["lean"] to have run)
  onnxruntime   `postformer.export.onnx_greedy` on model.onnx: ONNX Runtime (CPU execution provider, all graph
                optimisations) and a numpy loop feeding the key/value cache back

Both get the same number of threads (torch's, ONNX Runtime's intra-op; --threads: each value in turn). The two
are interleaved (A B A B ...) after --warmup untimed rounds; reported: the median tokens/s (= batch * new tokens /
seconds) over --repeats rounds, and ONNX Runtime / PyTorch from the same run (> 1: ONNX Runtime faster). The
tokens of both are compared. Rows of earlier runs are kept in onnx.json (keyed by preset, batch and threads); the
load average is recorded, since this machine is shared.

    python benchmarks/bench_onnx.py                                 # small and medium, 1 and 2 threads
    python benchmarks/bench_onnx.py --presets small --repeats 1 --warmup 0 --new-tokens 8 --output-dir /tmp/o
                                                                    # smoke run: numbers mean nothing
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from postformer.export import convert, onnx_greedy, verify_onnx, write_onnx
from postformer.modeling import PostformerConfig, PostformerForCausalLM
from postformer.modeling.generation_postformer import DECODING_PATHS
from results_file import open_results

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT_LENGTH, BATCHES = 16, (1, 8)


def build(preset: str, folder: Path):
    """The preset's model (eval, fp32, the generation config training writes but with no stop token), exported to
    `folder` (model.onnx, generation_config.json) and checked there; the model and the checks."""
    torch.manual_seed(0)
    model = PostformerForCausalLM(PostformerConfig.from_preset(preset, hidden_dropout=0.0,
                                                               attention_dropout=0.0)).eval()
    config = model.config
    model.generation_config.update(eos_token_id=None, pad_token_id=config.pad_token_id,
                                   suppress_tokens=[config.pad_token_id, config.bos_token_id])
    model.generation_config.save_pretrained(folder)
    stock = convert(model, "starcoder2")
    write_onnx(stock, folder / "model.onnx")
    checks = verify_onnx(model, stock, folder)
    return model, checks


def session(folder: Path, threads: int):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])


def measure(preset: str, threads: int, new_tokens: int, repeats: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model, checks = build(preset, folder)
        ort = session(folder, threads)
        rows = {}
        for batch in BATCHES:
            prompt = torch.randint(4, model.config.vocab_size, (batch, PROMPT_LENGTH),
                                   generator=torch.Generator().manual_seed(batch))
            runs = {
                "pytorch": lambda: model.generate(prompt, do_sample=False, max_new_tokens=new_tokens).numpy(),
                "onnxruntime": lambda: onnx_greedy(folder, prompt.numpy(), max_new_tokens=new_tokens, session=ort),
            }
            times, tokens = {name: [] for name in runs}, {}
            lean = DECODING_PATHS["lean"]
            with torch.inference_mode():
                for round_ in range(warmup + repeats):
                    for name, run in runs.items():
                        start = time.perf_counter()
                        tokens[name] = run()
                        if round_ >= warmup:
                            times[name].append(time.perf_counter() - start)
            if DECODING_PATHS["lean"] - lean != warmup + repeats:
                raise RuntimeError("model.generate did not take the lean decoding loop on every call")
            if tokens["pytorch"].shape != (batch, PROMPT_LENGTH + new_tokens):
                raise RuntimeError(f"PyTorch generated {tokens['pytorch'].shape[1] - PROMPT_LENGTH} tokens")
            speed = {name: batch * new_tokens / statistics.median(values) for name, values in times.items()}
            rows[f"{preset}, batch {batch}, {threads} threads"] = {
                "preset": preset, "batch": batch, "threads": threads, "new_tokens": new_tokens, "repeats": repeats,
                "parameters": sum(p.numel() for p in model.parameters()),
                "tokens_per_s": speed, "ratio": speed["onnxruntime"] / speed["pytorch"],
                "same_tokens": bool(np.array_equal(tokens["pytorch"], tokens["onnxruntime"])),
                "max_abs_logit_difference_onnx": checks["max_abs_logit_difference_onnx"],
            }
            print(json.dumps(rows[f"{preset}, batch {batch}, {threads} threads"]), flush=True)
    return rows


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# ONNX Runtime against PyTorch: greedy decoding on the CPU", "",
        f"Command: `{results['command']}`", "", f"Machine: {results['machine']}", "",
        f"Load average (1 min) at the start / end: {results['load']}", "",
        f"Greedy decoding of exactly N new tokens after a {PROMPT_LENGTH}-token prompt, randomly initialised "
        "presets (rotary positions), fp32. PyTorch: the Postformer's `model.generate(do_sample=False)` (its lean "
        "CPU loop); ONNX Runtime: `postformer.export.onnx_greedy` on the `postformer export --to onnx` graph "
        "(Starcoder2 with its key/value cache as tensors). Medians of the timed repeats, the two interleaved; "
        "ratio = ONNX Runtime / PyTorch tokens/s (> 1: ONNX Runtime faster).", "",
        "| preset | params | batch | threads | new tokens | PyTorch tokens/s | ONNX Runtime tokens/s | ratio | "
        "same tokens | ONNX logit diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in results["rows"].values():
        speed = row["tokens_per_s"]
        lines.append(f"| {row['preset']} | {row['parameters']:,} | {row['batch']} | {row['threads']} | "
                     f"{row['new_tokens']} | {speed['pytorch']:.0f} | {speed['onnxruntime']:.0f} | "
                     f"{row['ratio']:.2f} | {'yes' if row['same_tokens'] else 'NO'} | "
                     f"{row['max_abs_logit_difference_onnx']:.1e} |")
    lines += ["", "Noise: a 2-core machine shared with other sessions; the ratio is the figure to read (both measured "
              "in the same run, interleaved), absolute tokens/s move with the load."]
    lines += [""] * bool(results.get("notes")) + [f"- {note}" for note in results.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", default=["small", "medium"],
                        help="presets to measure (default: small medium; none: only rewrite onnx.md, e.g. with --note)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch and ONNX Runtime threads, one run of each preset per value (default: 1 2)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where onnx.json/.md go")
    parser.add_argument("--note", action="append", default=[], help="a note for the results (kept with them)")
    cli = parser.parse_args()
    json_path = cli.output_dir / "onnx.json"
    results = json.loads(json_path.read_text()) if not cli.presets else open_results(json_path)
    results["notes"] = results.get("notes", []) + cli.note
    if cli.presets:
        results["machine"] += f", onnxruntime {onnxruntime.__version__}"
        start_load = os.getloadavg()[0]
        for threads in cli.threads:
            torch.set_num_threads(threads)
            for preset in cli.presets:
                results["rows"].update(measure(preset, threads, cli.new_tokens, cli.repeats, cli.warmup))
        results["load"] = f"{start_load:.2f} / {os.getloadavg()[0]:.2f}"
    cli.output_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, cli.output_dir / "onnx.md")
    print((cli.output_dir / "onnx.md").read_text())


if __name__ == "__main__":
    main()
