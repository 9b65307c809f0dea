"""LoRA on an int8 base (`postformer finetune --lora --quantize int8`, QLoRA on the CPU) against plain LoRA and a
full fine-tune: peak training memory, training tokens/s and the validation loss after the same steps.

Variants, each built as `postformer finetune` builds it (`load_model`, with `quantization_config("int8")` for the
int8 base; PEFT LoRA with finetune's defaults: r 8, alpha 16, dropout 0.05, every Linear layer of the blocks):
  full        every weight trained (fp32), AdamW at finetune's full learning rate, 5e-5
  lora        LoRA adapters on the fp32 base, AdamW at finetune's LoRA learning rate, 2e-4
  lora-int8   LoRA adapters on the torchao int8 base (weight-only, one scale per row), 2e-4, with finetune's
              `keep_int8_for_backward` (the int8 layers keep only their int8 weights for the backward pass)
  lora-int8-stock  the same with torchao's linear as it is, which keeps an fp32 copy of each int8 weight for
              the backward pass (what finetune did before keep_int8_for_backward)
Constant learning rate, gradient clipping at 1.0 (Trainer's default), no weight decay; the same batches (--batch
blocks of --block packed train posts) in the same order for every variant.

Measured per preset, in one process:
  memory     peak tensor memory of each variant's first 2 training steps, bench_speed.py's measure
             (`profiled_peak`): the model's tensors (int8 weights counted as their int8 data and scales) + the
             highest running sum of the allocations torch.profiler records while a fresh AdamW takes 2 steps
             (gradients, AdamW's two moments, activations, dequantised weights). Deterministic: it does not depend
             on machine load. Also "state": the model's tensors + a gradient and two AdamW moments per trainable
             parameter, counted (the part of the peak that does not depend on the batch).
  speed      training tokens/s (forward, backward, clipping, AdamW step): batch x block / the median step time,
             over the steps after the 2 profiled ones and --warmup untimed ones; the variants are interleaved step
             by step (A B C A B C ...), so machine load hits them alike and the ratios are of the same moments.
  val loss   mean loss over the validation blocks before training and after --steps steps; for lora-int8 also
             after merging (PEFT re-quantises W + B A to int8: the merged model finetune writes).

    python benchmarks/bench_qlora.py --model small=runs/small --model medium=runs/medium --data ../shared/data/posts
    python benchmarks/bench_qlora.py --steps 6 --warmup 1 --max-posts 200 --output-dir /tmp/qlora  # smoke run

A preset without --model is randomly initialised (with a tokenizer trained on the train posts): fine for memory and
speed, while its validation losses say little. Results go to qlora.json (rows kept per preset across runs) and
qlora.md in --output-dir.
"""

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_speed import load_average, profiled_peak
from peft import LoraConfig, get_peft_model
from results_file import open_results
from transformers import set_seed

from postformer.compression import quantization_config
from postformer.data import load_posts
from postformer.model_files import load_model
from postformer.modeling import PostformerConfig, PostformerForCausalLM
from postformer.tokenization import config_token_ids, train_tokenizer
from postformer.training.arguments import FinetuneArguments
from postformer.training.finetune import keep_int8_for_backward
from postformer.training.data import pack_posts

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("full", "lora", "lora-int8", "lora-int8-stock")
INT8 = ("lora-int8", "lora-int8-stock")
LEARNING_RATES = {"full": 5e-5, "lora": 2e-4, "lora-int8": 2e-4, "lora-int8-stock": 2e-4}  # finetune's defaults
PROFILED_STEPS = 2
MIB = 2**20


def base_folder(preset: str, model: str | None, train_texts: list[str], scratch: Path) -> Path:
    """The preset's trained model folder, or a random one (with a tokenizer trained on `train_texts`) saved in
    `scratch`."""
    if model:
        return Path(model)
    folder = scratch / preset
    tokenizer = train_tokenizer(train_texts, vocab_size=8192, show_progress=False)
    torch.manual_seed(0)
    PostformerForCausalLM(PostformerConfig.from_preset(preset, **config_token_ids(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build(variant: str, folder: Path):
    """The model of `variant` as finetune builds it (in train mode) and its trainable parameters."""
    set_seed(0)  # the same LoRA initialisation for both LoRA variants
    options = {"quantization_config": quantization_config("int8")} if variant in INT8 else {}
    model, _ = load_model(folder, **options)
    if variant != "full":
        job = FinetuneArguments(model=str(folder))
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=job.lora_r, lora_alpha=job.lora_alpha,
                                                 lora_dropout=job.lora_dropout, target_modules=job.target_modules,
                                                 bias="none"))
    if variant == "lora-int8":
        keep_int8_for_backward(model)
    return model.train(), [p for p in model.parameters() if p.requires_grad]


def train_step(model, parameters, optimizer, batch) -> None:
    model(input_ids=batch, labels=batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def validation_loss(model, blocks: torch.Tensor, batch: int) -> float:
    """Mean loss over the blocks (each block's loss weighted alike, as Trainer's evaluation of equal blocks)."""
    model.eval()
    losses = [model(input_ids=blocks[i:i + batch], labels=blocks[i:i + batch]).loss.item() * len(blocks[i:i + batch])
              for i in range(0, len(blocks), batch)]
    model.train()
    return sum(losses) / len(blocks)


def bench_preset(preset: str, folder: Path, train: torch.Tensor, validation: torch.Tensor, args) -> dict:
    order = torch.arange(args.steps * args.batch) % len(train)  # the train blocks in order, again if need be
    batches = [train[order[i * args.batch:(i + 1) * args.batch]] for i in range(args.steps)]
    runs = {}
    for variant in VARIANTS:
        model, parameters = build(variant, folder)
        run = runs[variant] = {"model": model, "parameters": parameters, "times": []}
        before = validation_loss(model, validation, args.batch)
        trainable = sum(p.numel() for p in parameters)
        gc.collect()

        def first_steps(run=run):
            run["optimizer"] = torch.optim.AdamW(run["parameters"], lr=LEARNING_RATES[variant], weight_decay=0.0)
            for batch in batches[:PROFILED_STEPS]:
                train_step(run["model"], run["parameters"], run["optimizer"], batch)

        memory = profiled_peak(model, first_steps)
        model_bytes = memory["model_bytes"]
        run["result"] = {
            "trainable_parameters": trainable,
            "parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
            "model_mib": model_bytes / MIB,
            "state_mib": (model_bytes + 3 * 4 * trainable) / MIB,  # + gradient, exp_avg, exp_avg_sq (fp32)
            "peak_training_mib": memory["peak_bytes"] / MIB,
            "learning_rate": LEARNING_RATES[variant],
            "val_loss_before": before,
        }
        print(f"{preset} {variant}: peak {run['result']['peak_training_mib']:.1f} MiB", flush=True)

    for step in range(PROFILED_STEPS, args.steps):  # interleaved: A B C A B C ...
        for variant in VARIANTS:
            run = runs[variant]
            start = time.perf_counter()
            train_step(run["model"], run["parameters"], run["optimizer"], batches[step])
            if step >= PROFILED_STEPS + args.warmup:
                run["times"].append(time.perf_counter() - start)

    results = {}
    for variant in VARIANTS:
        run = runs[variant]
        result = run["result"]
        result["tokens_per_second"] = args.batch * args.block / statistics.median(run["times"])
        result["timed_steps"] = len(run["times"])
        result["val_loss"] = validation_loss(run["model"], validation, args.batch)
        if variant == "lora-int8":
            result["val_loss_merged"] = validation_loss(run["model"].merge_and_unload(), validation, args.batch)
        results[variant] = result
        del run["model"], run["optimizer"]
    for variant in VARIANTS[1:]:
        for key in ("peak_training_mib", "state_mib", "tokens_per_second"):
            results[variant][f"{key}_vs_full"] = results[variant][key] / results["full"][key]
    for variant in INT8:
        results[variant]["peak_vs_lora"] = results[variant]["peak_training_mib"] / results["lora"]["peak_training_mib"]
        results[variant]["speed_vs_lora"] = results[variant]["tokens_per_second"] / results["lora"]["tokens_per_second"]
    return results


def blocks_of(posts, tokenizer, block: int) -> torch.Tensor:
    return torch.tensor(pack_posts(posts, tokenizer, block)["input_ids"])


def markdown(results: dict) -> str:
    lines = [
        "# LoRA on an int8 base (QLoRA on the CPU) against LoRA and a full fine-tune",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']}; load average {results['load_average']}",
        "",
        f"Settings: {results['settings']}",
        "",
        "Peak training memory: the model's tensors + the highest running sum of torch.profiler's allocations over "
        "a fresh AdamW's first 2 steps (deterministic). State: model tensors + gradient and two AdamW moments per "
        "trainable parameter. Tokens/s: median step, variants interleaved. Val. loss: mean over the validation "
        "blocks, before training and after the steps (int8 merged: after PEFT's merge re-quantised the weights). "
        "lora-int8 is what `finetune --lora --quantize int8` runs; lora-int8-stock the same with torchao's linear "
        "as it is (an fp32 copy of each int8 weight kept for the backward pass).",
        "",
        "| preset | variant | trainable params | model MiB | state MiB | peak training MiB | peak vs full "
        "| tokens/s | speed vs full | val. loss before | val. loss after | int8 merged |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for preset, row in results["rows"].items():
        for variant in VARIANTS:
            r = row["variants"][variant]
            merged = f"{r['val_loss_merged']:.4f}" if "val_loss_merged" in r else ""
            lines.append(
                f"| {preset} | {variant} | {r['trainable_parameters']:,} | {r['model_mib']:.2f} | {r['state_mib']:.2f} "
                f"| {r['peak_training_mib']:.2f} | {r.get('peak_training_mib_vs_full', 1.0):.2f}x "
                f"| {r['tokens_per_second']:,.0f} | {r.get('tokens_per_second_vs_full', 1.0):.2f}x "
                f"| {r['val_loss_before']:.4f} | {r['val_loss']:.4f} | {merged} |")
    lines.append("")
    for preset, row in results["rows"].items():
        q, stock = row["variants"]["lora-int8"], row["variants"]["lora-int8-stock"]
        lines.append(f"- {preset} ({row['model']}): int8 base against fp32 LoRA: peak memory {q['peak_vs_lora']:.2f}x "
                     f"(stock torchao backward: {stock['peak_vs_lora']:.2f}x), speed {q['speed_vs_lora']:.2f}x "
                     f"({stock['speed_vs_lora']:.2f}x); {q['timed_steps']} timed steps per variant.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "medium"], choices=["small", "medium", "large"])
    parser.add_argument("--model", action="append", default=[], metavar="PRESET=DIR",
                        help="a trained model folder for a preset (default: random initialisation)")
    parser.add_argument("--data", help="posts (default: the bundled sample)")
    parser.add_argument("--max-posts", type=int, default=2000, help="train posts read (default 2000)")
    parser.add_argument("--max-eval-posts", type=int, default=200, help="validation posts (default 200)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per variant (default 40)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the profiled ones (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="blocks per step (default 8)")
    parser.add_argument("--block", type=int, default=64, help="tokens per block (default 64)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.steps < PROFILED_STEPS + args.warmup + 1:
        parser.error(f"--steps must exceed {PROFILED_STEPS} profiled + --warmup steps")
    models = dict(item.split("=", 1) for item in args.model)

    posts = load_posts(args.data, seed=0)
    train_posts = posts["train"].select(range(min(args.max_posts, len(posts["train"]))))
    eval_posts = posts["validation"].select(range(min(args.max_eval_posts, len(posts["validation"]))))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / "qlora.json"
    results = open_results(json_path)
    results["load_average"] = load_average()
    results["settings"] = (f"data {args.data or 'bundled sample'} ({len(train_posts)} train / {len(eval_posts)} "
                           f"validation posts), {args.steps} steps of {args.batch} x {args.block} tokens "
                           f"({PROFILED_STEPS} profiled, {args.warmup} warm-up, the rest timed), threads "
                           f"{torch.get_num_threads()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_qlora_") as scratch:
        for preset in args.presets:
            folder = base_folder(preset, models.get(preset), train_posts["text"], Path(scratch))
            _, tokenizer = load_model(folder)
            train, validation = (blocks_of(split, tokenizer, args.block) for split in (train_posts, eval_posts))
            variants = bench_preset(preset, folder, train, validation, args)
            results["rows"][preset] = {"model": str(models.get(preset, "random initialisation")),
                                       "variants": variants}
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps({preset: variants}, indent=2), flush=True)
    results["load_average"] += f" -> {load_average()}"
    results["seconds"] = time.perf_counter() - started
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    (args.output_dir / "qlora.md").write_text(markdown(results))
    print(f"{time.perf_counter() - started:.0f} s; results in {args.output_dir}")


if __name__ == "__main__":
    main()
