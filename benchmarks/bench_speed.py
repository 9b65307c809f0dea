"""Speed harness: Postformer presets against transformers' LlamaForCausalLM at equal parameter count, on the CPU.

Main view, equal parameters. Llama gets Postformer's vocab, hidden size, layers, heads, key-value heads, head
size, positions and tied embeddings, and no dropout; its feed-forward is gated (three matrices against
Postformer's two) and has no biases, so at Postformer's intermediate_size it would have 8-24% more parameters.
Its intermediate_size is therefore solved from Llama's parameter formula (tied embeddings counted once):

    params = vocab * hidden + layers * (attention + 3 * hidden * intermediate + 2 * hidden) + hidden
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)

for Postformer's parameter count, rounded to the nearest multiple of 16, and the result is checked by counting
`sum(p.numel() for p in model.parameters())` on both models (tied weights are one parameter, counted once; the
tie is asserted): the run stops unless the counts agree within 1%. Both counts are reported. At the presets:
small 304 (1,222,704 vs Postformer's 1,221,696), medium 688 (4,470,528 vs 4,466,944), large 1024 (11,997,312 vs
12,018,816).

Second view, equal shape ("Llama same shape": Llama at Postformer's own intermediate_size, more parameters, as
this harness compared before): measured for the forward pass (both batches, in the same interleaved loop as the
main view, so it costs little) and plain greedy generation only; training and memory are not repeated for it,
to keep the run short.

All models get the same generation config (end at "</s>" or "<sep>", pad 0, "<pad>" and "<s>" suppressed), so
greedy decoding runs the same logits processors on each.

Measured in one run, per preset; within each measurement the models are interleaved (A B C A B C ...) and the
numbers are medians of the timed repetitions that follow untimed warm-up repetitions:

  forward      batch 1 x 128 and batch 8 x 128 tokens: eval mode, torch.inference_mode, use_cache=False, ms
               (each repetition: the mean of --calls calls at batch 1, of one call at batch 8). Extra row:
               Postformer under torch.compile(model, dynamic=False), whose first call per shape (the
               compilation) is timed separately; and a floor (forward_products): the Postformer forward's
               matrix products alone, interleaved with the rest, which bounds the forward speed-up over Llama
               reachable with these kernels (at equal parameters both do the same products' FLOPs).
  training     batch 8 x 256 tokens: forward with labels + backward + AdamW step + zero_grad, in fp32 and under
               torch.autocast("cpu", dtype=torch.bfloat16); tokens/s, and MFU = tokens/s * flops_per_token /
               the matmul peak of the same dtype (postformer.training.measure_matmul_peak, measured at the start
               and at the end of the run; the higher of the two is the yardstick).
  memory       peak training memory, fp32 and bf16, and inference memory (see below).
  generation   greedy decoding of exactly 128 new tokens (min_new_tokens = max_new_tokens = 128, do_sample=False)
               after a 16-token prompt, batch 1 and batch 8, tokens/s (= batch * 128 / seconds). Postformer: plain
               `model.generate`, which takes the lean decoding loop (modeling/generation_postformer.py; every call
               is checked to have run it, by DECODING_PATHS["lean"]); transformers' own loop on the same model,
               `transformers.GenerationMixin.generate(model, ...)`, for reference; and, for transparency,
               `generate(**compiled_generation_options())` (static cache + compiled decoding step, which is
               transformers' loop). Llama: plain `generate` (the yardstick of the targets) and the same static-cache
               + compile options; Llama same shape: plain `generate`. The greedy tokens of the lean loop and of
               transformers' loop are compared (and those of each compiled variant with its plain one), and
               recorded. The first compiled call per batch size compiles: it is timed and reported apart (compile
               time = first call - median call), warm-up calls follow, and only later calls enter the medians.
               Dynamo recompilations during the timed calls are counted (they should be 0). Compile times are
               those of a first compilation: the run gives Inductor a fresh, empty cache folder
               (--warm-compile-cache: its usual on-disk cache, which makes them shorter). Beside them, two
               floors of a decoding step (decode_floor): one pass over the weights, and the lean decoder's matrix
               products alone; each bounds the speed-up a decoding loop can reach against Llama on this machine.

Peak training memory, the same method for both models: the tensor memory that PyTorch's CPU allocator hands
out, as torch.profiler records it (profile_memory=True: every allocation and free, with its size). `torch.cpu`
has no max_memory_allocated, and resident-set sizes (ru_maxrss, VmHWM) depend on what glibc's malloc keeps
cached from earlier work in the process, so they are not comparable between two models measured one after the
other. Per (model, dtype): gradients are dropped, Python's garbage is collected (and collection paused), a new
AdamW is made, and two training steps run under the profiler (the second step is the first with the optimizer
state already present). Peak = bytes of the model's parameters and buffers + the highest running sum of the
allocations and frees recorded: weights + gradients + AdamW state + activations (+ autocast's bf16 weight
copies), the CPU analogue of torch.cuda.max_memory_allocated for a fresh training run. Memory that libraries
take outside PyTorch's allocator (oneDNN scratch, the Python heap) is not counted, for either model. The
number does not depend on machine load: it repeats to the byte from run to run.

Inference memory. The design's memory column (45 / 180 / 450 MB for small / medium / large) is about 10x the fp32
weights, so it counts more than the weights. Two measures, the same way for Postformer and Llama (equal
parameters), in MB = 10^6 bytes as the design writes them:
  (a) peak tensor memory of one inference forward, batch 1 x 128 (eval, inference_mode, use_cache=False): the
      profiler method above, weights + the highest running sum of allocations (activations, logits);
  (b) serving memory: a fresh Python process (this script, run again with --serving-memory-child) imports torch,
      transformers and postformer, reads its resident set (VmRSS in /proc/self/status), builds the one model and
      runs one forward batch 1 x 128 under torch.inference_mode, then reads VmRSS again. Reported: the increase
      (what holding and running the model costs the process: weights, activations that malloc keeps, library
      buffers and lazily imported code) and the total. A fresh process per model, so neither inherits the other's
      malloc cache.
The design's figure is compared with (b)'s increase: a serving process is what a memory figure for a model
describes, and the design's ~10x of the weights is not a tensor count ((a) is the weights plus ~4 MB, mostly the
logits: 1.9x the weights at small, less above); (a) is shown beside it. (b)'s total is mostly the libraries
(~500 MB after the imports on Linux with torch 2.13), the same for both models.

Ratios: speed-up = llama ms / postformer ms and tokens/s ratio = postformer / llama (> 1: Postformer faster);
memory ratio = postformer / llama (< 1: Postformer smaller). Results go to speed.json and speed.md in
--output-dir, with the design's claims and the issue's targets (pass / short) beside the measurements. Targets,
at equal parameters: forward batch 1 x 128 >= 1.3x Llama at every preset; training tokens/s >= 1.2x (fp32) and
>= 1.5x (bf16) at medium and large; greedy generation (Postformer's plain generate, i.e. the lean loop, against
Llama's plain generate) >= 3x at batch 1 and >= 2x at batch 8 at every preset; peak training memory <= Llama's.

    python benchmarks/bench_speed.py                        # small, medium, large: meant to take <= 15 minutes
                                                            # on 2 quiet cores, ~8 expected (the report states
                                                            # its total); --repeats, --calls, --train-repeats,
                                                            # --gen-repeats, --warmup set the repetitions
    python benchmarks/bench_speed.py --presets large --skip-generation
    python benchmarks/bench_speed.py --quick --output-dir /tmp/speedsmoke   # smoke run: every code path,
                                                            # numbers mean nothing

Timings need a quiet machine: the load average at the start and at the end is recorded next to the results.
"""

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch._dynamo
import transformers
from torch.profiler import ProfilerActivity, profile
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM

from postformer.generation import compiled_generation_options
from postformer.modeling import PostformerConfig, PostformerForCausalLM
from postformer.modeling.generation_postformer import DECODING_PATHS, LeanDecoder
from postformer.training import flops_per_token, measure_matmul_peak

PRESETS = ("small", "medium", "large")
SHARED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "head_dim", "max_position_embeddings")
MODELS = ("postformer", "llama", "llama_same_shape")  # llama: equal parameters; llama_same_shape: the second view
LLAMA_SIZE_MULTIPLE = 16  # Llama's equal-parameter intermediate_size is rounded to a multiple of this
PARAM_TOLERANCE = 0.01  # |Llama params - Postformer params| / Postformer params may not exceed this
FORWARD_SEQ, FORWARD_BATCHES = 128, (1, 8)
TRAIN_SEQ, TRAIN_BATCH = 256, 8
PROMPT_LEN, NEW_TOKENS, GENERATION_BATCHES = 16, 128, (1, 8)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # None: no autocast
MB = 1e6  # the design's memory unit, used for inference memory

# The design's table.
DESIGN_CLAIMS = {
    "small": {"params": 1.2e6, "forward_ms": 2.5, "memory_mb": 45},
    "medium": {"params": 4.8e6, "forward_ms": 8.1, "memory_mb": 180},
    "large": {"params": 12.3e6, "forward_ms": 18.7, "memory_mb": 450},
}
# The issue's targets, all against Llama at equal parameters.
FORWARD_MIN_SPEEDUP = 1.3
TRAIN_MIN_RATIO = {"fp32": 1.2, "bf16": 1.5}
TRAIN_TARGET_PRESETS = ("medium", "large")
GENERATION_MIN_RATIO = {1: 3.0, 8: 2.0}  # batch size: Postformer's plain generate / Llama's plain generate


# ------------------------------------------------------------------------------------------------ models

def postformer_config(preset: str) -> PostformerConfig:
    return PostformerConfig.from_preset(preset, hidden_dropout=0.0, attention_dropout=0.0)


def llama_parameter_count(config: PostformerConfig, intermediate_size: int) -> int:
    """LlamaForCausalLM's parameters with Postformer's sizes and the given intermediate_size: tied embedding
    (once), per layer q/k/v/o without biases + gate/up/down + two RMSNorm weights, and the final RMSNorm."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    attention = hidden * config.head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    layer = attention + 3 * hidden * intermediate_size + 2 * hidden
    return config.vocab_size * hidden + layers * layer + hidden


def equal_parameter_intermediate_size(config: PostformerConfig, target: int) -> tuple[int, float]:
    """Llama's intermediate_size for `target` parameters: the formula solved exactly, then rounded to the nearest
    multiple of LLAMA_SIZE_MULTIPLE (to the nearest integer if that missed the tolerance)."""
    exact = (target - llama_parameter_count(config, 0)) / (3 * config.hidden_size * config.num_hidden_layers)
    size = max(LLAMA_SIZE_MULTIPLE, LLAMA_SIZE_MULTIPLE * round(exact / LLAMA_SIZE_MULTIPLE))
    if abs(llama_parameter_count(config, size) - target) > PARAM_TOLERANCE * target:
        size = max(1, round(exact))
    return size, exact


def make_model(name: str, config: PostformerConfig, llama_intermediate_size: int | None = None):
    """One of MODELS, seeded, with the generation config that training writes for posts
    (postformer.tokenization.posts_generation_config)."""
    torch.manual_seed(0)
    if name == "postformer":
        model = PostformerForCausalLM(config)
    else:
        size = config.intermediate_size if name == "llama_same_shape" else llama_intermediate_size
        model = LlamaForCausalLM(LlamaConfig(**{k: getattr(config, k) for k in SHARED}, intermediate_size=size,
                                             tie_word_embeddings=True, attention_dropout=0.0))
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError(f"{name}: the LM head is not tied to the embedding")
    model.generation_config.update(
        eos_token_id=[config.eos_token_id, config.sep_token_id], pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id, suppress_tokens=[config.pad_token_id, config.bos_token_id],
    )
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight is one parameter: counted once


def build_models(preset: str, same_shape: bool = True) -> tuple[dict, dict]:
    """Postformer, Llama at equal parameters and (same_shape) Llama at Postformer's sizes, and the sizing record.
    Raises unless Llama's parameter count (counted) is within PARAM_TOLERANCE of Postformer's."""
    config = postformer_config(preset)
    postformer = make_model("postformer", config)
    target = count_parameters(postformer)
    size, exact = equal_parameter_intermediate_size(config, target)
    models = {"postformer": postformer, "llama": make_model("llama", config, size)}
    if same_shape:
        models["llama_same_shape"] = make_model("llama_same_shape", config)
    params = {name: count_parameters(model) for name, model in models.items()}
    if params["llama"] != llama_parameter_count(config, size):
        raise RuntimeError(f"{preset}: Llama has {params['llama']:,} parameters, the formula says "
                           f"{llama_parameter_count(config, size):,}: the formula no longer matches LlamaForCausalLM")
    difference = (params["llama"] - target) / target
    if abs(difference) > PARAM_TOLERANCE:
        raise RuntimeError(f"{preset}: Llama has {params['llama']:,} parameters against Postformer's {target:,} "
                           f"({100 * difference:+.2f}%), beyond the {100 * PARAM_TOLERANCE:.0f}% tolerance")
    sizing = {"postformer_intermediate_size": config.intermediate_size, "llama_intermediate_size": size,
              "llama_intermediate_size_exact": exact, "params": params,
              "llama_params_difference": difference}
    return models, sizing


def median(values):
    return statistics.median(values) if values else None


def ratio(numerator, denominator):
    return numerator / denominator if numerator is not None and denominator else None


def unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def short_error(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


# ----------------------------------------------------------------------------------------------- forward

def projections(model) -> list:
    """Every layer's linear projections (query, key, value, output, up, down), in the order the forward runs them."""
    return [child for layer in model.model.layers for block in (layer.self_attn, layer.mlp)
            for name, child in block.named_children() if name.endswith("_proj")]


def forward_products(model, batch: int):
    """The matrix products of one Postformer forward of batch x FORWARD_SEQ tokens alone, on fixed inputs: every
    layer's query, key, value, output, up and down products (with their biases) and the LM head, each the model's
    own module called as the forward calls it. No forward built on these kernels runs faster, and at equal
    parameters Llama's forward does the same products' FLOPs (the attention scores' as well): Llama's ms over this
    floor is the highest forward speed-up over Llama reachable with these fp32 kernels. Called like a model."""
    generator = torch.Generator().manual_seed(0)
    modules = [*projections(model), model.lm_head]
    inputs = [torch.randn(batch, FORWARD_SEQ, module.in_features, generator=generator) for module in modules]

    def run(**_):
        return [module(x) for module, x in zip(modules, inputs)]
    return run


def bench_forward(models: dict, vocab: int, args) -> dict:
    generator = torch.Generator().manual_seed(0)
    results = {}
    runners = {name: model for name, model in models.items()}
    for model in models.values():
        model.eval()
    compiled_postformer = None
    if not args.skip_compiled_forward:
        compiled_postformer = torch.compile(models["postformer"], dynamic=False)
    with torch.inference_mode():
        for batch in FORWARD_BATCHES:
            ids = torch.randint(4, vocab, (batch, FORWARD_SEQ), generator=generator)
            calls = args.calls if batch == 1 else 1
            entry = {"calls_per_repetition": calls, "samples_ms": {}, "median_ms": {}}
            active = {**runners, "postformer_products": forward_products(models["postformer"], batch)}
            if compiled_postformer is not None:
                start, graphs = time.perf_counter(), unique_graphs()
                try:
                    compiled_postformer(input_ids=ids, use_cache=False)
                    active["postformer_compiled"] = compiled_postformer
                    entry["postformer_compiled_first_call_s"] = time.perf_counter() - start
                    entry["postformer_compiled_graphs"] = unique_graphs() - graphs
                except Exception as error:  # reported, not fatal
                    traceback.print_exc()
                    entry["postformer_compiled_error"] = short_error(error)
            samples = {name: [] for name in active}
            for rep in range(args.warmup + args.repeats):
                for name, model in active.items():  # interleaved: A B C A B C ...
                    start = time.perf_counter()
                    for _ in range(calls):
                        model(input_ids=ids, use_cache=False)
                    ms = (time.perf_counter() - start) / calls * 1000
                    if rep >= args.warmup:
                        samples[name].append(ms)
            entry["samples_ms"] = samples
            medians = entry["median_ms"] = {name: median(values) for name, values in samples.items()}
            entry["speedup_llama_over_postformer"] = ratio(medians["llama"], medians["postformer"])
            entry["ceiling_over_llama"] = ratio(medians["llama"], medians["postformer_products"])
            if "llama_same_shape" in medians:
                entry["speedup_llama_same_shape_over_postformer"] = ratio(medians["llama_same_shape"],
                                                                          medians["postformer"])
            if "postformer_compiled" in medians:
                entry["speedup_llama_over_postformer_compiled"] = ratio(medians["llama"],
                                                                        medians["postformer_compiled"])
            results[f"b{batch}x{FORWARD_SEQ}"] = entry
    return results


# ---------------------------------------------------------------------------------------------- training

def train_step(model, optimizer, ids, autocast_dtype):
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench_training(models: dict, ids, args) -> dict:
    tokens = ids.numel()
    results = {}
    for model in models.values():
        model.train()
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    for dtype_name, autocast_dtype in DTYPES.items():
        samples = {name: [] for name in models}
        for rep in range(args.warmup + args.train_repeats):
            for name, model in models.items():  # interleaved
                start = time.perf_counter()
                train_step(model, optimizers[name], ids, autocast_dtype)
                seconds = time.perf_counter() - start
                if rep >= args.warmup:
                    samples[name].append(seconds * 1000)
        step_ms = {name: median(values) for name, values in samples.items()}
        tokens_per_s = {name: tokens / (ms / 1000) for name, ms in step_ms.items()}
        flops = {name: flops_per_token(model, TRAIN_SEQ) for name, model in models.items()}
        results[dtype_name] = {
            "samples_step_ms": samples, "median_step_ms": step_ms, "tokens_per_second": tokens_per_s,
            "flops_per_token": flops,
            "tokens_per_second_ratio_postformer_over_llama": ratio(tokens_per_s["postformer"], tokens_per_s["llama"]),
        }
    del optimizers
    for model in models.values():
        model.zero_grad(set_to_none=True)
    return results


def add_mfu(training: dict, peaks: dict):
    """MFU against the run's best matmul peak of the same dtype (peaks are final only at the end of the run)."""
    for dtype_name, entry in training.items():
        peak = peaks[dtype_name]["flops"]
        entry["matmul_peak_flops"] = peak
        entry["mfu"] = {name: entry["tokens_per_second"][name] * entry["flops_per_token"][name] / peak
                        for name in entry["tokens_per_second"]}


# ------------------------------------------------------------------------------------------------ memory

def tensor_bytes(model) -> int:
    """Bytes of the model's parameters and buffers, each storage once; a tensor subclass (torchao's int8 weights)
    by the plain tensors it holds (its int8 data and scales), not the floating-point size it poses as."""
    storages = {}

    def add(tensor):
        if hasattr(tensor, "__tensor_flatten__"):
            for name in tensor.__tensor_flatten__()[0]:
                add(getattr(tensor, name))
            return
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
    return sum(storages.values())


def profiled_peak(model, run) -> dict:
    """Bytes of the model's parameters and buffers + the highest running sum of the allocations and frees that
    torch.profiler records while `run()` runs (Python's garbage collection paused)."""
    gc.collect()
    model_bytes = tensor_bytes(model)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        gc.disable()  # a collection inside the window would free (and record) older objects
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                run()
        finally:
            gc.enable()
        prof.export_chrome_trace(str(trace))
        del prof
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0),
                    key=lambda e: float(e["ts"]))
    if not memory:
        raise RuntimeError("torch.profiler recorded no memory events: peak memory cannot be measured")
    running = peak = 0
    for event in memory:
        running += event["args"]["Bytes"]
        peak = max(peak, running)
    return {"peak_bytes": model_bytes + peak, "model_bytes": model_bytes, "peak_above_model_bytes": peak,
            "end_above_model_bytes": running, "memory_events": len(memory)}


def peak_training_memory(model, ids, autocast_dtype, steps: int = 2) -> dict:
    """Peak tensor bytes of `steps` training steps with a new AdamW, from torch.profiler's memory events."""
    model.train()
    model.zero_grad(set_to_none=True)

    def run():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(steps):
            train_step(model, optimizer, ids, autocast_dtype)
        del optimizer

    result = profiled_peak(model, run)
    model.zero_grad(set_to_none=True)
    gc.collect()
    return result


def peak_inference_memory(model, ids) -> dict:
    """Peak tensor bytes of one inference forward (eval, inference_mode, use_cache=False)."""
    model.eval()

    def run():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)

    return profiled_peak(model, run)


def bench_memory(models: dict, ids) -> dict:
    results = {}
    for dtype_name, autocast_dtype in DTYPES.items():
        entry = {name: peak_training_memory(models[name], ids, autocast_dtype) for name in ("postformer", "llama")}
        entry["peak_ratio_postformer_over_llama"] = ratio(entry["postformer"]["peak_bytes"],
                                                          entry["llama"]["peak_bytes"])
        results[dtype_name] = entry
    return results


def process_memory() -> dict:
    """This process's resident set now (VmRSS) and its peak (VmHWM), in bytes; from getrusage's ru_maxrss (the
    peak only) where /proc is missing."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        kib = {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}
        return {"rss_bytes": kib["VmRSS"] * 1024, "hwm_bytes": kib["VmHWM"] * 1024, "source": "/proc/self/status"}
    except (OSError, KeyError, ValueError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return {"rss_bytes": peak, "hwm_bytes": peak, "source": "getrusage ru_maxrss (peak)"}


def serving_memory_child(preset: str, name: str, llama_intermediate_size: int) -> dict:
    """Run in a fresh process (--serving-memory-child): resident memory after the imports, then after building one
    model and running one forward batch 1 x FORWARD_SEQ under inference_mode."""
    gc.collect()
    before = process_memory()
    config = postformer_config(preset)
    model = make_model(name, config, llama_intermediate_size)
    model.eval()
    ids = torch.randint(4, config.vocab_size, (1, FORWARD_SEQ), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
    gc.collect()
    after = process_memory()
    return {"params": count_parameters(model), "weight_bytes": tensor_bytes(model),
            "rss_after_imports_bytes": before["rss_bytes"], "rss_bytes": after["rss_bytes"],
            "rss_increase_bytes": after["rss_bytes"] - before["rss_bytes"],
            "peak_rss_bytes": after["hwm_bytes"], "peak_rss_increase_bytes": after["hwm_bytes"] - before["rss_bytes"],
            "source": after["source"], "threads": torch.get_num_threads()}


def serving_memory(preset: str, name: str, llama_intermediate_size: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--serving-memory-child", preset, name,
               str(llama_intermediate_size), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"serving-memory process for {preset} {name} failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def bench_inference_memory(models: dict, sizing: dict, preset: str, vocab: int, args) -> dict:
    ids = torch.randint(4, vocab, (1, FORWARD_SEQ), generator=torch.Generator().manual_seed(3))
    names = ("postformer", "llama")
    tensor = {name: peak_inference_memory(models[name], ids) for name in names}
    results = {"tensor_peak": tensor, "tensor_peak_ratio_postformer_over_llama":
               ratio(tensor["postformer"]["peak_bytes"], tensor["llama"]["peak_bytes"])}
    if not args.skip_serving_memory:
        serving = {name: serving_memory(preset, name, sizing["llama_intermediate_size"]) for name in names}
        results["serving"] = serving
        results["serving_increase_ratio_postformer_over_llama"] = ratio(serving["postformer"]["rss_increase_bytes"],
                                                                        serving["llama"]["rss_increase_bytes"])
        results["serving_total_ratio_postformer_over_llama"] = ratio(serving["postformer"]["rss_bytes"],
                                                                     serving["llama"]["rss_bytes"])
    return results


# -------------------------------------------------------------------------------------------- generation

# Which DECODING_PATHS counter each Postformer variant must move by one per call (None: neither may move, since
# GenerationMixin.generate bypasses PostformerForCausalLM.generate, which does the counting).
EXPECTED_PATH = {"postformer": "lean", "postformer_hf_loop": None, "postformer_compiled": "fallback"}
# Pairs whose greedy tokens are compared: (variant, reference).
COMPARED = (("postformer", "postformer_hf_loop"), ("postformer_compiled", "postformer_hf_loop"),
            ("llama_compiled", "llama"))


def generation_variants(models: dict, args) -> dict:
    """name -> (model, generate function, extra options); in the order they are interleaved."""
    postformer, llama = models["postformer"], models["llama"]
    variants = {"postformer": (postformer, type(postformer).generate, {}),
                "postformer_hf_loop": (postformer, GenerationMixin.generate, {})}
    if not args.skip_compiled_generation and not args.skip_postformer_compiled:
        variants["postformer_compiled"] = (postformer, type(postformer).generate, compiled_generation_options())
    variants["llama"] = (llama, type(llama).generate, {})
    if not args.skip_compiled_generation and not args.skip_llama_compiled:
        variants["llama_compiled"] = (llama, type(llama).generate, compiled_generation_options())
    if "llama_same_shape" in models:
        variants["llama_same_shape"] = (models["llama_same_shape"], type(models["llama_same_shape"]).generate, {})
    return variants


def compare_tokens(output: torch.Tensor, reference: torch.Tensor) -> dict:
    new, ref = output[:, PROMPT_LEN:], reference[:, PROMPT_LEN:]
    differs = (new != ref).any(dim=0).nonzero()
    return {"identical": bool(torch.equal(output, reference)),
            "new_tokens_equal_fraction": (new == ref).float().mean().item(),
            "first_difference_at_new_token": None if differs.numel() == 0 else int(differs[0])}


def decode_floor(model, ids: torch.Tensor, args) -> dict:
    """Two floors of a decoding step, each timed for NEW_TOKENS steps (median of --gen-repeats after --warmup):
    - products: the lean decoder's matrix products alone (its fused query-key-value, output, feed-forward and head
      products, built as it builds them for this batch) back to back on fixed inputs: no loop built on these
      kernels runs a step faster;
    - read: one pass over the same weights (a sum of each matrix), what any fp32 step must at least read.
    Llama's ms per step over a floor is the highest generation speed-up reachable against it."""
    config, batch = model.config, ids.shape[0]
    with torch.inference_mode():
        prefill = model(input_ids=ids, use_cache=True)
        decoder = LeanDecoder(model, batch, PROMPT_LEN + NEW_TOKENS, prefill.cache, None,
                              torch.full((batch,), PROMPT_LEN - 1))
    # LeanDecoder.layers' entries: (norm, qkv product, qk-norm, output product, norm, up product, act, down product)
    widths = (config.hidden_size, config.num_attention_heads * config.head_dim, config.hidden_size,
              config.intermediate_size)
    products = [(layer[index], width) for layer in decoder.layers for index, width in zip((1, 3, 5, 7), widths)]
    products.append((decoder.head, config.hidden_size))
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, width, generator=generator) for _, width in products]

    weights = [module.weight for module in projections(model)] + [model.lm_head.weight]
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    steps = {"products": lambda: [product(x) for (product, _), x in zip(products, inputs)],
             "read": lambda: [w.sum() for w in weights]}
    result = {"weight_mb": weight_bytes / MB}
    for name, step in steps.items():
        def run():
            start = time.perf_counter()
            with torch.inference_mode():
                for _ in range(NEW_TOKENS):
                    step()
            return (time.perf_counter() - start) / NEW_TOKENS

        for _ in range(args.warmup):
            run()
        seconds = median([run() for _ in range(args.gen_repeats)])
        result[name] = {"ms_per_step": 1e3 * seconds, "gb_per_s": weight_bytes / seconds / 1e9}
    return result


def bench_generation(models: dict, vocab: int, args) -> dict:
    generator = torch.Generator().manual_seed(1)
    for model in models.values():
        model.eval()
    variants = generation_variants(models, args)
    common = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    results = {}
    for batch in GENERATION_BATCHES:
        ids = torch.randint(4, vocab, (batch, PROMPT_LEN), generator=generator)
        mask = torch.ones_like(ids)
        entry = {"first_call_s": {}, "graphs_compiled_first_call": {}, "errors": {}, "samples_s": {},
                 "tokens_compared": {}, "decoding_paths": {}}
        active, outputs = {}, {}

        def call(name):
            model, generate, options = variants[name]
            paths = Counter(DECODING_PATHS)
            start = time.perf_counter()
            out = generate(model, input_ids=ids, attention_mask=mask, **common, **options)
            seconds = time.perf_counter() - start
            if out.shape != (batch, PROMPT_LEN + NEW_TOKENS):
                raise RuntimeError(f"{name}: generated shape {tuple(out.shape)}, expected "
                                   f"{(batch, PROMPT_LEN + NEW_TOKENS)}")
            if name in EXPECTED_PATH:
                moved = {path: DECODING_PATHS[path] - paths[path] for path in ("lean", "fallback")}
                expected = {path: int(path == EXPECTED_PATH[name]) for path in ("lean", "fallback")}
                if moved != expected:
                    raise RuntimeError(f"{name}: decoding loops run {moved}, expected {expected}")
                entry["decoding_paths"][name] = EXPECTED_PATH[name] or "transformers' loop (uncounted)"
            return seconds, out

        for name in variants:  # first calls: the compiled variants compile here
            graphs = unique_graphs()
            try:
                entry["first_call_s"][name], outputs[name] = call(name)
                entry["graphs_compiled_first_call"][name] = unique_graphs() - graphs
                active[name] = variants[name]
            except Exception as error:  # reported, not fatal (a compiled path may not work)
                if name == "postformer":
                    raise  # the lean path is what this measures
                traceback.print_exc()
                entry["errors"][name] = short_error(error)
        for name, reference in COMPARED:
            if name in outputs and reference in outputs:
                entry["tokens_compared"][f"{name}_vs_{reference}"] = compare_tokens(outputs[name], outputs[reference])
        lean = entry["tokens_compared"].get("postformer_vs_postformer_hf_loop")
        if lean is not None and not lean["identical"]:
            print(f"  WARNING: batch {batch}: the lean loop's greedy tokens differ from transformers' loop: {lean}",
                  flush=True)
        for rep in range(args.warmup):
            for name in active:
                call(name)
        samples = {name: [] for name in active}
        graphs_before = unique_graphs()
        for rep in range(args.gen_repeats):
            for name in active:  # interleaved
                samples[name].append(call(name)[0])
        entry["recompiles_during_timing"] = unique_graphs() - graphs_before
        seconds = {name: median(values) for name, values in samples.items()}
        tps = {name: batch * NEW_TOKENS / s for name, s in seconds.items()}
        entry.update(samples_s=samples, median_s=seconds, tokens_per_second=tps)
        entry["compile_s"] = {name: entry["first_call_s"][name] - seconds[name]
                              for name in seconds if name.endswith("_compiled")}
        entry["decode_floor"] = floor = decode_floor(models["postformer"], ids, args)
        llama_ms = 1e3 * seconds["llama"] / NEW_TOKENS if "llama" in seconds else None
        for name in ("products", "read"):
            floor[name]["ceiling_over_llama"] = ratio(llama_ms, floor[name]["ms_per_step"])
        entry["ratios"] = {
            "postformer_over_llama": ratio(tps.get("postformer"), tps.get("llama")),
            "postformer_over_llama_compiled": ratio(tps.get("postformer"), tps.get("llama_compiled")),
            "postformer_over_postformer_hf_loop": ratio(tps.get("postformer"), tps.get("postformer_hf_loop")),
            "postformer_hf_loop_over_llama": ratio(tps.get("postformer_hf_loop"), tps.get("llama")),
            "postformer_compiled_over_llama_compiled": ratio(tps.get("postformer_compiled"), tps.get("llama_compiled")),
            "postformer_over_llama_same_shape": ratio(tps.get("postformer"), tps.get("llama_same_shape")),
        }
        results[f"b{batch}"] = entry
    return results


# -------------------------------------------------------------------------------------------- the run

def bench_preset(preset: str, args) -> dict:
    torch._dynamo.reset()  # compiled code of the previous preset's models goes; limits start afresh
    models, sizing = build_models(preset, same_shape=not args.skip_same_shape)
    config = models["postformer"].config
    params = sizing["params"]
    print(f"  {preset}: Postformer {params['postformer']:,} parameters; Llama intermediate_size "
          f"{sizing['llama_intermediate_size']} (exact {sizing['llama_intermediate_size_exact']:.1f}): "
          f"{params['llama']:,} ({100 * sizing['llama_params_difference']:+.2f}%)", flush=True)
    result = {"preset": preset, "config": {k: getattr(config, k) for k in (*SHARED, "intermediate_size")},
              **sizing, "elapsed_s": {}}
    main_models = {name: models[name] for name in ("postformer", "llama")}
    train_ids = torch.randint(4, config.vocab_size, (TRAIN_BATCH, TRAIN_SEQ),
                              generator=torch.Generator().manual_seed(2))
    parts = [("forward", not args.skip_forward, lambda: bench_forward(models, config.vocab_size, args)),
             ("training", not args.skip_training, lambda: bench_training(main_models, train_ids, args)),
             ("memory", not args.skip_memory, lambda: bench_memory(main_models, train_ids)),
             ("inference_memory", not args.skip_memory,
              lambda: bench_inference_memory(main_models, sizing, preset, config.vocab_size, args)),
             ("generation", not args.skip_generation, lambda: bench_generation(models, config.vocab_size, args))]
    for key, wanted, run in parts:
        if not wanted:
            continue
        print(f"  {preset}: {key} ...", flush=True)
        start = time.perf_counter()
        result[key] = run()
        result["elapsed_s"][key] = time.perf_counter() - start
        print(f"  {preset}: {key} done in {result['elapsed_s'][key]:.0f} s", flush=True)
    return result


def measure_peaks(args) -> dict:
    return {name: measure_matmul_peak(dtype or torch.float32, size=args.peak_size, repeats=args.peak_repeats)
            for name, dtype in DTYPES.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------- reporting

def fmt(value, spec=".2f", suffix=""):
    return "—" if value is None else f"{value:{spec}}{suffix}"


def mark(ok) -> str:
    return "—" if ok is None else ("pass" if ok else "short")


def mib(value):
    return None if value is None else value / 2**20


def mb(value):
    return None if value is None else value / MB


def get(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def at_most(value, limit):
    return None if value is None else value <= limit


def design_table(results) -> list[str]:
    lines = ["| preset | params (design) | params Postformer | params Llama | forward b1x128 ms (design) "
             "| Postformer ms | mark | inference memory MB (design) | Postformer serving increase MB | mark "
             "| Postformer serving total MB | Postformer peak tensor MB (weights) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|"]
    for r in results:
        claim = DESIGN_CLAIMS[r["preset"]]
        ms = get(r, "forward", f"b1x{FORWARD_SEQ}", "median_ms", "postformer")
        serving = get(r, "inference_memory", "serving", "postformer") or {}
        tensor = get(r, "inference_memory", "tensor_peak", "postformer") or {}
        increase = mb(serving.get("rss_increase_bytes"))
        weights = "" if not tensor else f" ({fmt(mb(tensor['model_bytes']), '.1f')})"
        lines.append(
            f"| {r['preset']} | {claim['params'] / 1e6:.1f}M | {r['params']['postformer'] / 1e6:.2f}M "
            f"| {r['params']['llama'] / 1e6:.2f}M | {claim['forward_ms']} | {fmt(ms)} "
            f"| {mark(at_most(ms, claim['forward_ms']))} | {claim['memory_mb']} | {fmt(increase, '.1f')} "
            f"| {mark(at_most(increase, claim['memory_mb']))} | {fmt(mb(serving.get('rss_bytes')), '.1f')} "
            f"| {fmt(mb(tensor.get('peak_bytes')), '.1f')}{weights} |")
    return lines


def sizing_table(results) -> list[str]:
    lines = ["| preset | Postformer intermediate | Postformer params | Llama intermediate (exact solution) "
             "| Llama params | difference | Llama same shape params |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        same = r["params"].get("llama_same_shape")
        lines.append(
            f"| {r['preset']} | {r['postformer_intermediate_size']} | {r['params']['postformer']:,} "
            f"| {r['llama_intermediate_size']} ({r['llama_intermediate_size_exact']:.1f}) | {r['params']['llama']:,} "
            f"| {100 * r['llama_params_difference']:+.2f}% | {fmt(same, ',')} |")
    return lines


def forward_table(results) -> list[str]:
    lines = ["| preset | batch x tokens | Postformer ms | Llama ms | speed-up | Postformer compiled ms "
             "| compiled speed-up | compile (first call) s | matrix products alone ms | ceiling over Llama |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for shape, e in (r.get("forward") or {}).items():
            compiled = fmt(e["median_ms"].get("postformer_compiled"))
            if "postformer_compiled_error" in e:
                compiled = "failed"
            lines.append(
                f"| {r['preset']} | {shape.lstrip('b')} | {fmt(e['median_ms']['postformer'])} "
                f"| {fmt(e['median_ms']['llama'])} | {fmt(e['speedup_llama_over_postformer'], '.2f', 'x')} "
                f"| {compiled} | {fmt(e.get('speedup_llama_over_postformer_compiled'), '.2f', 'x')} "
                f"| {fmt(e.get('postformer_compiled_first_call_s'), '.1f')} "
                f"| {fmt(e['median_ms'].get('postformer_products'))} "
                f"| {fmt(e.get('ceiling_over_llama'), '.2f', 'x')} |")
    return lines


def training_table(results) -> list[str]:
    lines = ["| preset | dtype | Postformer tokens/s | Llama tokens/s | ratio | MFU Postformer | MFU Llama "
             "| peak memory Postformer MiB | peak memory Llama MiB | memory ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for dtype_name in DTYPES:
            t = get(r, "training", dtype_name) or {}
            m = get(r, "memory", dtype_name) or {}
            if not t and not m:
                continue
            mfu = t.get("mfu") or {}
            lines.append(
                f"| {r['preset']} | {dtype_name} | {fmt(get(t, 'tokens_per_second', 'postformer'), ',.0f')} "
                f"| {fmt(get(t, 'tokens_per_second', 'llama'), ',.0f')} "
                f"| {fmt(t.get('tokens_per_second_ratio_postformer_over_llama'), '.2f', 'x')} "
                f"| {fmt(None if 'postformer' not in mfu else 100 * mfu['postformer'], '.1f', '%')} "
                f"| {fmt(None if 'llama' not in mfu else 100 * mfu['llama'], '.1f', '%')} "
                f"| {fmt(mib(get(m, 'postformer', 'peak_bytes')), '.1f')} "
                f"| {fmt(mib(get(m, 'llama', 'peak_bytes')), '.1f')} "
                f"| {fmt(m.get('peak_ratio_postformer_over_llama'), '.2f')} |")
    return lines


def inference_memory_table(results) -> list[str]:
    lines = ["| preset | model | weights MB | peak tensor MB, forward b1x128 | serving: after imports MB "
             "| serving: after model + forward MB | serving increase MB | serving peak increase MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r.get("inference_memory")
        if not m:
            continue
        for name in ("postformer", "llama"):
            tensor, serving = m["tensor_peak"][name], get(m, "serving", name) or {}
            lines.append(
                f"| {r['preset']} | {name.capitalize()} | {fmt(mb(tensor['model_bytes']), '.1f')} "
                f"| {fmt(mb(tensor['peak_bytes']), '.1f')} | {fmt(mb(serving.get('rss_after_imports_bytes')), '.1f')} "
                f"| {fmt(mb(serving.get('rss_bytes')), '.1f')} | {fmt(mb(serving.get('rss_increase_bytes')), '.1f')} "
                f"| {fmt(mb(serving.get('peak_rss_increase_bytes')), '.1f')} |")
        lines.append(
            f"| {r['preset']} | ratio | | {fmt(m['tensor_peak_ratio_postformer_over_llama'], '.2f')} | "
            f"| {fmt(m.get('serving_total_ratio_postformer_over_llama'), '.2f')} "
            f"| {fmt(m.get('serving_increase_ratio_postformer_over_llama'), '.2f')} | |")
    return lines


def generation_table(results) -> list[str]:
    lines = ["| preset | batch | Postformer tokens/s | Postformer, transformers' loop | Postformer compiled "
             "| Llama tokens/s | Llama compiled | Postformer / Llama | Postformer / Llama compiled "
             "| transformers' loop / Llama | compiled / Llama compiled | lean tokens = transformers' loop "
             "| first call (compile) s: Postformer compiled / Llama compiled | recompiles while timed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in results:
        for batch, e in (r.get("generation") or {}).items():
            tps, ratios = e["tokens_per_second"], e["ratios"]

            def cell(name):
                return "failed" if name in e["errors"] else fmt(tps.get(name), ",.0f")

            def first(name):
                if name not in e["first_call_s"]:
                    return "—"
                return f"{e['first_call_s'][name]:.1f} ({fmt(e['compile_s'].get(name), '.1f')})"

            same = get(e, "tokens_compared", "postformer_vs_postformer_hf_loop")
            same = "—" if same is None else ("yes" if same["identical"] else
                                             f"no ({100 * same['new_tokens_equal_fraction']:.0f}% equal)")
            lines.append(
                f"| {r['preset']} | {batch.lstrip('b')} | {cell('postformer')} | {cell('postformer_hf_loop')} "
                f"| {cell('postformer_compiled')} | {cell('llama')} | {cell('llama_compiled')} "
                f"| {fmt(ratios['postformer_over_llama'], '.2f', 'x')} "
                f"| {fmt(ratios['postformer_over_llama_compiled'], '.2f', 'x')} "
                f"| {fmt(ratios['postformer_hf_loop_over_llama'], '.2f', 'x')} "
                f"| {fmt(ratios['postformer_compiled_over_llama_compiled'], '.2f', 'x')} | {same} "
                f"| {first('postformer_compiled')} / {first('llama_compiled')} "
                f"| {e['recompiles_during_timing']} |")
    return lines


def floor_table(results) -> list[str]:
    lines = ["| preset | batch | weights per step MB | read alone ms/step (GB/s) | matrix products alone ms/step "
             "(GB/s) | Postformer ms/step | Llama ms/step | target | ceiling over Llama: read / products "
             "| Postformer / Llama |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for batch, e in (r.get("generation") or {}).items():
            floor = e.get("decode_floor")
            if floor is None:
                continue
            steps = {name: fmt(1e3 * e["median_s"].get(name) / NEW_TOKENS if name in e["median_s"] else None)
                     for name in ("postformer", "llama")}
            minimum = GENERATION_MIN_RATIO.get(int(batch.lstrip("b")))
            read, products = floor["read"], floor["products"]
            lines.append(
                f"| {r['preset']} | {batch.lstrip('b')} | {floor['weight_mb']:.1f} "
                f"| {read['ms_per_step']:.3f} ({read['gb_per_s']:.1f}) "
                f"| {products['ms_per_step']:.3f} ({products['gb_per_s']:.1f}) "
                f"| {steps['postformer']} | {steps['llama']} | {fmt(minimum, '.1f', 'x')} "
                f"| {fmt(read['ceiling_over_llama'], '.2f', 'x')} / {fmt(products['ceiling_over_llama'], '.2f', 'x')} "
                f"| {fmt(e['ratios']['postformer_over_llama'], '.2f', 'x')} |")
    return lines


def same_shape_table(results) -> list[str]:
    lines = ["| preset | Llama same shape params (Postformer's) | forward b1x128 ms Postformer / Llama | speed-up "
             "| forward b8x128 speed-up | generation b1 tokens/s Postformer / Llama | ratio | generation b8 ratio |",
             "|---|---|---|---:|---:|---|---:|---:|"]
    for r in results:
        if "llama_same_shape" not in r["params"]:
            continue
        f1, f8 = get(r, "forward", f"b1x{FORWARD_SEQ}") or {}, get(r, "forward", f"b8x{FORWARD_SEQ}") or {}
        g1, g8 = get(r, "generation", "b1") or {}, get(r, "generation", "b8") or {}
        lines.append(
            f"| {r['preset']} | {r['params']['llama_same_shape']:,} ({r['params']['postformer']:,}) "
            f"| {fmt(get(f1, 'median_ms', 'postformer'))} / {fmt(get(f1, 'median_ms', 'llama_same_shape'))} "
            f"| {fmt(f1.get('speedup_llama_same_shape_over_postformer'), '.2f', 'x')} "
            f"| {fmt(f8.get('speedup_llama_same_shape_over_postformer'), '.2f', 'x')} "
            f"| {fmt(get(g1, 'tokens_per_second', 'postformer'), ',.0f')} / "
            f"{fmt(get(g1, 'tokens_per_second', 'llama_same_shape'), ',.0f')} "
            f"| {fmt(get(g1, 'ratios', 'postformer_over_llama_same_shape'), '.2f', 'x')} "
            f"| {fmt(get(g8, 'ratios', 'postformer_over_llama_same_shape'), '.2f', 'x')} |")
    return lines


def targets(results) -> list[dict]:
    rows = []
    for r in results:
        preset = r["preset"]
        speedup = get(r, "forward", f"b1x{FORWARD_SEQ}", "speedup_llama_over_postformer")
        if speedup is not None:
            ceiling = get(r, "forward", f"b1x{FORWARD_SEQ}", "ceiling_over_llama")
            rows.append({"target": f"forward b1x128 >= {FORWARD_MIN_SPEEDUP}x Llama", "preset": preset,
                         "measured": f"{speedup:.2f}x (ceiling {fmt(ceiling, '.2f', 'x')})",
                         "ok": speedup >= FORWARD_MIN_SPEEDUP})
        for dtype_name, minimum in TRAIN_MIN_RATIO.items():
            value = get(r, "training", dtype_name, "tokens_per_second_ratio_postformer_over_llama")
            if value is not None and preset in TRAIN_TARGET_PRESETS:
                rows.append({"target": f"training tokens/s {dtype_name} >= {minimum}x Llama", "preset": preset,
                             "measured": f"{value:.2f}x", "ok": value >= minimum})
        for batch, minimum in GENERATION_MIN_RATIO.items():
            ratios = get(r, "generation", f"b{batch}", "ratios")
            if ratios:
                primary = ratios["postformer_over_llama"]
                rows.append({"target": f"greedy generation batch {batch} >= {minimum}x Llama's plain generate",
                             "preset": preset,
                             "measured": f"{fmt(primary, '.2f', 'x')} (vs Llama compiled "
                                         f"{fmt(ratios['postformer_over_llama_compiled'], '.2f', 'x')})",
                             "ok": None if primary is None else primary >= minimum})
        for dtype_name in DTYPES:
            value = get(r, "memory", dtype_name, "peak_ratio_postformer_over_llama")
            if value is not None:
                pf, ll = (mib(get(r, "memory", dtype_name, m, "peak_bytes")) for m in ("postformer", "llama"))
                rows.append({"target": f"peak training memory {dtype_name} <= Llama's", "preset": preset,
                             "measured": f"{pf:.1f} vs {ll:.1f} MiB ({value:.2f}x)", "ok": value <= 1})
    return rows


def targets_table(rows) -> list[str]:
    lines = ["| target | preset | measured | mark |", "|---|---|---|---|"]
    lines += [f"| {row['target']} | {row['preset']} | {row['measured']} | {mark(row['ok'])} |" for row in rows]
    return lines


def markdown(report) -> str:
    results, machine, settings = report["results"], report["machine"], report["settings"]
    peaks = report["matmul_peaks"]
    out = ["# Postformer vs LlamaForCausalLM: speed at equal parameter count (CPU)", "",
           f"Command: `{report['command']}`", "",
           "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
           "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), "",
           f"Total time: {report['total_s']:.0f} s (" + ", ".join(
               f"{r['preset']} {sum(r['elapsed_s'].values()):.0f} s" for r in results) + ")", "",
           "Matmul peaks for MFU (postformer.training.measure_matmul_peak, best of the start and end of the run): "
           + (", ".join(f"{name} {p['flops'] / 1e9:.1f} GFLOP/s (start {p['start'] / 1e9:.1f}, end "
                        f"{p['end'] / 1e9:.1f})" for name, p in peaks.items()) or "not measured (no training)"), ""]
    if settings.get("quick"):
        out += ["**Smoke run (--quick): too few repetitions for the numbers to mean anything.**", ""]
    out += ["Medians. \"Llama\" is LlamaForCausalLM with Postformer's sizes except its intermediate_size, which is "
            "chosen so that both models have the same number of parameters (within 1%; table below). Speed-up = "
            "Llama ms / Postformer ms; ratios of tokens/s = Postformer / Llama (> 1: Postformer faster); memory "
            "ratio = Postformer / Llama (< 1: Postformer smaller). Peak training memory: tensor memory from "
            "PyTorch's CPU allocator (torch.profiler memory events) over two AdamW steps of batch 8 x 256, weights "
            "included; see the docstring of benchmarks/bench_speed.py.", ""]
    out += ["## Parameter counts", "", *sizing_table(results), "",
            f"Llama's intermediate_size: its parameter formula solved for Postformer's count, rounded to a multiple "
            f"of {LLAMA_SIZE_MULTIPLE}; counts are `sum(p.numel() for p in model.parameters())`, tied embeddings "
            "once.", ""]
    out += ["## Design's table and measurements", "", *design_table(results), "",
            "Inference memory (MB = 10^6 bytes): the design's figure is compared with the serving increase, the "
            "growth of a fresh process's resident set (VmRSS) from after importing torch, transformers and "
            "postformer to after building the model and running one forward of batch 1 x 128 under "
            "inference_mode; serving total is the process's resident set then. Peak tensor memory: weights + the "
            "highest running sum of PyTorch's allocations in that forward (torch.profiler); weights in brackets.",
            ""]
    out += ["## Issue's targets (equal parameters)", "", *targets_table(report["targets"]), ""]
    if any(r.get("forward") for r in results):
        out += ["## Forward latency (eval, inference_mode, use_cache=False)", "", *forward_table(results), "",
                "Matrix products alone: the Postformer forward's query, key, value, output, feed-forward and head "
                "products (its own modules, with biases) back to back on fixed inputs, interleaved with the "
                "forwards (bench_speed.forward_products): no forward built on these kernels is faster. At equal "
                "parameters Llama's forward does the same products' FLOPs, so ceiling over Llama = Llama ms / "
                "this floor is the highest forward speed-up reachable against it in fp32 on this machine; what "
                "the rest of a forward costs (attention, normalisation, activation) is the only room left.", ""]
    if any(r.get("training") or r.get("memory") for r in results):
        out += [f"## Training (batch {TRAIN_BATCH} x {TRAIN_SEQ}: forward with labels, backward, AdamW step, "
                "zero_grad)",
                "", *training_table(results), ""]
    if any(r.get("inference_memory") for r in results):
        out += ["## Inference memory (batch 1 x 128, MB = 10^6 bytes)", "", *inference_memory_table(results), "",
                "Serving: a fresh process per model; resident set (VmRSS) after the imports, then after building "
                "the model and one forward under inference_mode; peak increase = peak resident set (VmHWM) then - "
                "resident set after the imports.", ""]
    if any(r.get("generation") for r in results):
        out += [f"## Greedy generation ({PROMPT_LEN}-token prompt, exactly {NEW_TOKENS} new tokens)", "",
                *generation_table(results), "",
                "Postformer: plain `generate` (the lean decoding loop; each call checked with DECODING_PATHS); "
                "transformers' loop: `transformers.GenerationMixin.generate(model, ...)`; compiled: "
                "`generate(**compiled_generation_options())`, static cache + compiled decoding step (transformers' "
                "loop). Llama: plain `generate` (the targets' yardstick) and compiled the same way. Lean tokens = "
                "transformers' loop: the greedy tokens of the first calls compared. First call: the first compiled "
                "call per batch size, which compiles (excluded from the medians); compile s: that call less the "
                "median call (compile cache: "
                f"{settings['compile_cache']}). Recompiles while timed: new Dynamo graphs during the timed calls "
                "(should be 0).", "",
                "### How fast a decoding step can be", "", *floor_table(results), "",
                "Every fp32 decoding step reads all the weights of the layers' matrices and of the head (weights per "
                "step). Read alone: one pass over them (a sum of each matrix) per step, the least any step costs on "
                "this machine; matrix products alone: the lean decoder's query-key-value, output, feed-forward and "
                "head products (split or prepacked as it builds them) back to back on fixed inputs, "
                f"{NEW_TOKENS} steps (bench_speed.decode_floor), the least a step built on these kernels costs. "
                "Ceiling over Llama = "
                "Llama's ms per step / a floor: the highest speed-up reachable against Llama with fp32 weights. GB/s "
                "= weights per step / floor: once the weights outgrow the last-level cache (32 MiB here: large), "
                "both run at the memory's bandwidth. Postformer and Llama ms/step: whole `generate` calls (prompt "
                "included) / new tokens."]
        errors = [f"- {r['preset']} batch {b.lstrip('b')} {name}: {msg}" for r in results
                  for b, e in (r.get("generation") or {}).items() for name, msg in e["errors"].items()]
        differ = [f"- {r['preset']} batch {b.lstrip('b')} {pair}: {c}" for r in results
                  for b, e in (r.get("generation") or {}).items() for pair, c in e["tokens_compared"].items()
                  if not c["identical"]]
        if errors:
            out += ["", "Failures:", *errors]
        if differ:
            out += ["", "Greedy tokens that differ:", *differ]
        out += [""]
    if any("llama_same_shape" in r["params"] for r in results) and any(
            r.get("forward") or r.get("generation") for r in results):
        out += ["## Second view: Llama of the same shape (more parameters)", "", *same_shape_table(results), "",
                "Llama same shape: Postformer's intermediate_size, so a gated feed-forward with more parameters, as "
                "this harness compared before. Measured in the same interleaved loops as the main view, for the "
                "forward pass and plain greedy generation only (Postformer's plain generate against Llama's).", ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--repeats", type=int, default=7, help="timed forward repetitions (default 7)")
    parser.add_argument("--calls", type=int, default=5,
                        help="forward calls averaged per repetition at batch 1 (default 5)")
    parser.add_argument("--train-repeats", type=int, default=5,
                        help="timed training steps per model and dtype (default 5)")
    parser.add_argument("--gen-repeats", type=int, default=3,
                        help="timed generate calls per variant and batch (default 3)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed repetitions before each measurement (default 2; compiled generation's first, "
                             "compiling call comes on top)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores available)")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak FLOP/s (default 2048)")
    parser.add_argument("--peak-repeats", type=int, default=20, help="matmuls timed for the peak (default 20)")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-compiled-forward", action="store_true", help="no torch.compile(model) forward row")
    parser.add_argument("--skip-training", action="store_true", help="no training tokens/s and MFU")
    parser.add_argument("--skip-memory", action="store_true", help="no peak training memory, no inference memory")
    parser.add_argument("--skip-serving-memory", action="store_true",
                        help="inference memory without the fresh-process resident-set measure")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-compiled-generation", action="store_true",
                        help="no static cache + compile generation, for either model")
    parser.add_argument("--skip-postformer-compiled", action="store_true",
                        help="no static cache + compile generation for Postformer")
    parser.add_argument("--skip-llama-compiled", action="store_true", help="no compiled generation for Llama")
    parser.add_argument("--skip-same-shape", action="store_true",
                        help="no second view (Llama of Postformer's shape, more parameters)")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="let torch.compile use its on-disk cache (default: a fresh, empty cache for the run, so "
                             "compile times are those of a first compilation)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 warm-up, 2 repeats, 1 call, small matmul peak (shapes unchanged)")
    parser.add_argument("--serving-memory-child", nargs=3, metavar=("PRESET", "MODEL", "LLAMA_INTERMEDIATE"),
                        help=argparse.SUPPRESS)  # internal: one serving-memory measure, in a fresh process
    args = parser.parse_args(argv)
    if args.serving_memory_child:
        if args.threads:
            torch.set_num_threads(args.threads)
        preset, name, size = args.serving_memory_child
        print(json.dumps(serving_memory_child(preset, name, int(size))))
        return
    if args.quick:
        args.repeats, args.train_repeats, args.gen_repeats, args.calls, args.warmup = 2, 2, 1, 1, 1
        args.peak_size, args.peak_repeats = 512, 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    cache = None
    if not args.warm_compile_cache:  # read by Inductor at each compilation; nothing has compiled yet
        cache = tempfile.TemporaryDirectory(prefix="bench_speed_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    print(f"torch threads: {torch.get_num_threads()} (cores available: {cores})", flush=True)

    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", "bench_speed.py", *argv])
    machine = {"cpu": cpu_model(), "cores": cores, "threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "torch": torch.__version__, "transformers": transformers.__version__,
               "python": platform.python_version(), "platform": platform.platform(),
               "load_average_start": load_average(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    settings = {k: getattr(args, k) for k in ("presets", "repeats", "calls", "train_repeats", "gen_repeats", "warmup",
                                              "peak_size", "peak_repeats", "quick")}
    settings["compile_cache"] = "warm (on-disk cache allowed)" if args.warm_compile_cache else "cold (fresh per run)"
    settings.update(forward=f"batch {'/'.join(map(str, FORWARD_BATCHES))} x {FORWARD_SEQ}",
                    training=f"batch {TRAIN_BATCH} x {TRAIN_SEQ}",
                    generation=f"prompt {PROMPT_LEN}, new {NEW_TOKENS}, batch {'/'.join(map(str, GENERATION_BATCHES))}",
                    llama=f"equal parameters (intermediate_size a multiple of {LLAMA_SIZE_MULTIPLE}, within "
                          f"{100 * PARAM_TOLERANCE:.0f}%)")
    settings.update({k: True for k in ("skip_forward", "skip_compiled_forward", "skip_training", "skip_memory",
                                       "skip_serving_memory", "skip_generation", "skip_compiled_generation",
                                       "skip_postformer_compiled", "skip_llama_compiled", "skip_same_shape")
                     if getattr(args, k)})

    run_start = time.perf_counter()
    start_peaks = measure_peaks(args) if not args.skip_training else {}
    if start_peaks:
        print("matmul peaks: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in start_peaks.items()), flush=True)
    results = []
    for preset in args.presets:
        print(f"benchmarking {preset} ...", flush=True)
        results.append(bench_preset(preset, args))
    end_peaks = measure_peaks(args) if start_peaks else {}
    peaks = {k: {"flops": max(start_peaks[k], end_peaks[k]), "start": start_peaks[k], "end": end_peaks[k]}
             for k in start_peaks}
    for r in results:
        if "training" in r:
            add_mfu(r["training"], peaks)
    machine["load_average_end"] = load_average()
    report = {"command": command, "machine": machine, "settings": settings, "matmul_peaks": peaks,
              "design_claims": DESIGN_CLAIMS, "targets_config": {
                  "forward_min_speedup": FORWARD_MIN_SPEEDUP, "train_min_ratio": TRAIN_MIN_RATIO,
                  "train_target_presets": TRAIN_TARGET_PRESETS, "generation_min_ratio": GENERATION_MIN_RATIO},
              "results": results, "total_s": time.perf_counter() - run_start}
    report["targets"] = targets(results)

    text = markdown(report)
    print("\n" + text)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "speed.md").write_text(text)
    if cache is not None:
        cache.cleanup()
    print(f"total time {report['total_s']:.0f} s; wrote {args.output_dir / 'speed.json'} and "
          f"{args.output_dir / 'speed.md'}")


if __name__ == "__main__":
    main()
