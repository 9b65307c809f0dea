"""Speed harness: Postformer presets against transformers' LlamaForCausalLM of the same shape, on the CPU.

For each preset both models get the same vocab, hidden and feed-forward sizes, layers, heads, key-value heads,
positions and tied embeddings, and no dropout. Llama's feed-forward is gated (three matrices against
Postformer's two) and has no biases, so it has somewhat more parameters: both counts are reported. Both models
get the same generation config (end at "</s>" or "<sep>", pad 0, "<pad>" and "<s>" suppressed), so greedy
decoding runs the same logits processors on both.

Measured in one run, per preset; within each measurement the models are interleaved (A B A B ...) and the
numbers are medians of the timed repetitions that follow untimed warm-up repetitions:

  forward      batch 1 x 128 and batch 8 x 128 tokens: eval mode, torch.inference_mode, use_cache=False, ms
               (each repetition: the mean of --calls calls at batch 1, of one call at batch 8). Extra row:
               Postformer under torch.compile(model, dynamic=False), whose first call per shape (the
               compilation) is timed separately.
  training     batch 8 x 256 tokens: forward with labels + backward + AdamW step + zero_grad, in fp32 and under
               torch.autocast("cpu", dtype=torch.bfloat16); tokens/s, and MFU = tokens/s * flops_per_token /
               the matmul peak of the same dtype (postformer.training.measure_matmul_peak, measured at the start
               and at the end of the run; the higher of the two is the yardstick).
  memory       peak training memory, fp32 and bf16 (see below).
  generation   greedy decoding of exactly 128 new tokens (min_new_tokens = max_new_tokens = 128, do_sample=False)
               after a 16-token prompt, batch 1 and batch 8, tokens/s (= batch * 128 / seconds). Postformer: plain
               `generate` and `generate(**compiled_generation_options())` (static cache + compiled decoding step);
               Llama: plain `generate` and, for transparency, the same static-cache + compile options. The first
               compiled call per batch size compiles: it is timed and reported apart, then warm-up calls follow,
               and only later calls enter the medians. Dynamo recompilations during the timed calls are counted
               (they should be 0). Compile times are those of a first compilation: the run gives Inductor a
               fresh, empty cache folder (--warm-compile-cache: its usual on-disk cache, which makes them shorter).

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

Ratios: speed-up = llama ms / postformer ms and tokens/s ratio = postformer / llama (> 1: Postformer faster);
memory ratio = postformer / llama (< 1: Postformer smaller). Results go to speed.json and speed.md in
--output-dir, with the design's claims and the issue's targets (pass / short) beside the measurements.

    python benchmarks/bench_speed.py                        # small, medium, large: meant to take <= 10 minutes
                                                            # on 2 quiet cores (the report states its total)
    python benchmarks/bench_speed.py --presets large --skip-generation
    python benchmarks/bench_speed.py --quick                # smoke run: every code path, numbers mean nothing

Timings need a quiet machine: the load average at the start and at the end is recorded next to the results.
"""

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch._dynamo
import transformers
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

from postformer.generation import compiled_generation_options
from postformer.modeling import PostformerConfig, PostformerForCausalLM
from postformer.training import flops_per_token, measure_matmul_peak

PRESETS = ("small", "medium", "large")
SHARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "max_position_embeddings")
FORWARD_SEQ, FORWARD_BATCHES = 128, (1, 8)
TRAIN_SEQ, TRAIN_BATCH = 256, 8
PROMPT_LEN, NEW_TOKENS, GENERATION_BATCHES = 16, 128, (1, 8)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # None: no autocast

# The design's table; its memory figures are not known to us.
DESIGN_CLAIMS = {
    "small": {"params": 1.2e6, "forward_ms": 2.5},
    "medium": {"params": 4.8e6, "forward_ms": 8.1},
    "large": {"params": 12.3e6, "forward_ms": 18.7},
}
# The issue's targets.
FORWARD_MIN_SPEEDUP = 1.3
TRAIN_MIN_RATIO = {"fp32": 1.2, "bf16": 1.5}
TRAIN_TARGET_PRESETS = ("medium", "large")
GENERATION_MIN_RATIO = 2.0


def build_models(preset: str) -> dict:
    config = PostformerConfig.from_preset(preset, hidden_dropout=0.0, attention_dropout=0.0)
    llama_config = LlamaConfig(**{k: getattr(config, k) for k in SHARED}, tie_word_embeddings=True,
                               attention_dropout=0.0)
    torch.manual_seed(0)
    postformer = PostformerForCausalLM(config)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(llama_config)
    # Both get the generation config that training writes for posts (postformer.tokenization.posts_generation_config).
    for model in (postformer, llama):
        model.generation_config.update(
            eos_token_id=[config.eos_token_id, config.sep_token_id], pad_token_id=config.pad_token_id,
            bos_token_id=config.bos_token_id, suppress_tokens=[config.pad_token_id, config.bos_token_id],
        )
    return {"postformer": postformer, "llama": llama}


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
            active = dict(runners)
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
            entry["median_ms"] = {name: median(values) for name, values in samples.items()}
            medians = entry["median_ms"]
            entry["speedup_llama_over_postformer"] = ratio(medians["llama"], medians["postformer"])
            if "postformer_compiled" in entry["median_ms"]:
                entry["speedup_llama_over_postformer_compiled"] = ratio(
                    entry["median_ms"]["llama"], entry["median_ms"]["postformer_compiled"])
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
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_training_memory(model, ids, autocast_dtype, steps: int = 2) -> dict:
    """Peak tensor bytes of `steps` training steps with a new AdamW, from torch.profiler's memory events."""
    model.train()
    model.zero_grad(set_to_none=True)
    gc.collect()
    model_bytes = tensor_bytes(model)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        gc.disable()  # a collection inside the window would free (and record) older objects
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                for _ in range(steps):
                    train_step(model, optimizer, ids, autocast_dtype)
                del optimizer
        finally:
            gc.enable()
        prof.export_chrome_trace(str(trace))
        del prof
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0),
                    key=lambda e: float(e["ts"]))
    if not memory:
        raise RuntimeError("torch.profiler recorded no memory events: peak training memory cannot be measured")
    running = peak = 0
    for event in memory:
        running += event["args"]["Bytes"]
        peak = max(peak, running)
    model.zero_grad(set_to_none=True)
    gc.collect()
    return {"peak_bytes": model_bytes + peak, "model_bytes": model_bytes, "peak_above_model_bytes": peak,
            "end_above_model_bytes": running, "memory_events": len(memory)}


def bench_memory(models: dict, ids) -> dict:
    results = {}
    for dtype_name, autocast_dtype in DTYPES.items():
        entry = {name: peak_training_memory(model, ids, autocast_dtype) for name, model in models.items()}
        entry["peak_ratio_postformer_over_llama"] = ratio(entry["postformer"]["peak_bytes"],
                                                          entry["llama"]["peak_bytes"])
        results[dtype_name] = entry
    return results


# -------------------------------------------------------------------------------------------- generation

def bench_generation(models: dict, vocab: int, args) -> dict:
    generator = torch.Generator().manual_seed(1)
    for model in models.values():
        model.eval()
    variants = {"postformer": (models["postformer"], {}), "llama": (models["llama"], {})}
    if not args.skip_compiled_generation:
        variants["postformer_compiled"] = (models["postformer"], compiled_generation_options())
        if not args.skip_llama_compiled:
            variants["llama_compiled"] = (models["llama"], compiled_generation_options())
    common = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    results = {}
    for batch in GENERATION_BATCHES:
        ids = torch.randint(4, vocab, (batch, PROMPT_LEN), generator=generator)
        mask = torch.ones_like(ids)
        entry = {"first_call_s": {}, "graphs_compiled_first_call": {}, "errors": {}, "samples_s": {},
                 "outputs_equal_plain": {}}
        active, outputs = {}, {}

        def call(name):
            model, options = variants[name]
            start = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, **common, **options)
            seconds = time.perf_counter() - start
            if out.shape != (batch, PROMPT_LEN + NEW_TOKENS):
                raise RuntimeError(f"{name}: generated shape {tuple(out.shape)}, expected "
                                   f"{(batch, PROMPT_LEN + NEW_TOKENS)}")
            return seconds, out

        for name in variants:  # first calls: the compiled variants compile here
            graphs = unique_graphs()
            try:
                entry["first_call_s"][name], outputs[name] = call(name)
                entry["graphs_compiled_first_call"][name] = unique_graphs() - graphs
                active[name] = variants[name]
            except Exception as error:  # reported, not fatal (Llama's compiled path may not work)
                traceback.print_exc()
                entry["errors"][name] = short_error(error)
        for name in active:
            if name.endswith("_compiled"):
                plain = outputs.get(name.removesuffix("_compiled"))
                entry["outputs_equal_plain"][name] = None if plain is None else bool(torch.equal(outputs[name], plain))
        samples = {name: [] for name in active}
        for rep in range(args.warmup):
            for name in active:
                call(name)
        graphs_before = unique_graphs()
        for rep in range(args.gen_repeats):
            for name in active:  # interleaved
                samples[name].append(call(name)[0])
        entry["recompiles_during_timing"] = unique_graphs() - graphs_before
        seconds = {name: median(values) for name, values in samples.items()}
        tps = {name: batch * NEW_TOKENS / s for name, s in seconds.items()}
        entry.update(samples_s=samples, median_s=seconds, tokens_per_second=tps)
        entry["compile_overhead_s"] = {name: entry["first_call_s"][name] - seconds[name]
                                       for name in seconds if name.endswith("_compiled")}
        entry["ratios"] = {
            "postformer_compiled_over_llama": ratio(tps.get("postformer_compiled"), tps.get("llama")),
            "postformer_over_llama": ratio(tps.get("postformer"), tps.get("llama")),
            "postformer_compiled_over_llama_compiled": ratio(tps.get("postformer_compiled"), tps.get("llama_compiled")),
        }
        results[f"b{batch}"] = entry
    return results


# -------------------------------------------------------------------------------------------- the run

def bench_preset(preset: str, args) -> dict:
    torch._dynamo.reset()  # compiled code of the previous preset's models goes; limits start afresh
    models = build_models(preset)
    config = models["postformer"].config
    result = {"preset": preset, "config": {k: getattr(config, k) for k in SHARED},
              "params": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()},
              "elapsed_s": {}}
    train_ids = torch.randint(4, config.vocab_size, (TRAIN_BATCH, TRAIN_SEQ),
                              generator=torch.Generator().manual_seed(2))
    parts = [("forward", not args.skip_forward, lambda: bench_forward(models, config.vocab_size, args)),
             ("training", not args.skip_training, lambda: bench_training(models, train_ids, args)),
             ("memory", not args.skip_memory, lambda: bench_memory(models, train_ids)),
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


def get(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def design_table(results) -> list[str]:
    lines = ["| preset | params (design) | params Postformer | params Llama | forward b1x128 ms (design) "
             "| Postformer ms | Llama ms | speed-up | peak train memory (design) | Postformer fp32 / bf16 MiB "
             "| Llama fp32 / bf16 MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        claim = DESIGN_CLAIMS[r["preset"]]
        forward = get(r, "forward", f"b1x{FORWARD_SEQ}")
        memory = {m: "{} / {}".format(fmt(mib(get(r, "memory", "fp32", m, "peak_bytes")), ".1f"),
                                      fmt(mib(get(r, "memory", "bf16", m, "peak_bytes")), ".1f"))
                  for m in ("postformer", "llama")}
        lines.append(
            f"| {r['preset']} | {claim['params'] / 1e6:.1f}M | {r['params']['postformer'] / 1e6:.2f}M "
            f"| {r['params']['llama'] / 1e6:.2f}M | {claim['forward_ms']} "
            f"| {fmt(get(forward, 'median_ms', 'postformer'))} | {fmt(get(forward, 'median_ms', 'llama'))} "
            f"| {fmt(get(forward, 'speedup_llama_over_postformer'), '.2f', 'x')} | — "
            f"| {memory['postformer']} | {memory['llama']} |")
    return lines


def forward_table(results) -> list[str]:
    lines = ["| preset | batch x tokens | Postformer ms | Llama ms | speed-up | Postformer compiled ms "
             "| compiled speed-up | compile (first call) s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for shape, e in (r.get("forward") or {}).items():
            compiled = fmt(e["median_ms"].get("postformer_compiled"))
            if "postformer_compiled_error" in e:
                compiled = "failed"
            lines.append(
                f"| {r['preset']} | {shape.lstrip('b')} | {fmt(e['median_ms']['postformer'])} "
                f"| {fmt(e['median_ms']['llama'])} | {fmt(e['speedup_llama_over_postformer'], '.2f', 'x')} "
                f"| {compiled} | {fmt(e.get('speedup_llama_over_postformer_compiled'), '.2f', 'x')} "
                f"| {fmt(e.get('postformer_compiled_first_call_s'), '.1f')} |")
    return lines


def training_table(results) -> list[str]:
    lines = [f"| preset | dtype | Postformer tokens/s | Llama tokens/s | ratio | MFU Postformer | MFU Llama "
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


def generation_table(results) -> list[str]:
    lines = ["| preset | batch | Postformer tokens/s | Postformer compiled tokens/s | Llama tokens/s "
             "| Llama compiled tokens/s | compiled / Llama | plain / Llama | compiled / Llama compiled "
             "| first call s Postformer compiled | first call s Llama compiled | recompiles while timed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for batch, e in (r.get("generation") or {}).items():
            tps, ratios, first = e["tokens_per_second"], e["ratios"], e["first_call_s"]

            def cell(name):
                return "failed" if name in e["errors"] else fmt(tps.get(name), ",.0f")

            lines.append(
                f"| {r['preset']} | {batch.lstrip('b')} | {cell('postformer')} | {cell('postformer_compiled')} "
                f"| {cell('llama')} | {cell('llama_compiled')} "
                f"| {fmt(ratios['postformer_compiled_over_llama'], '.2f', 'x')} "
                f"| {fmt(ratios['postformer_over_llama'], '.2f', 'x')} "
                f"| {fmt(ratios['postformer_compiled_over_llama_compiled'], '.2f', 'x')} "
                f"| {fmt(first.get('postformer_compiled'), '.1f')} | {fmt(first.get('llama_compiled'), '.1f')} "
                f"| {e['recompiles_during_timing']} |")
    return lines


def targets(results) -> list[dict]:
    rows = []
    for r in results:
        preset = r["preset"]
        forward = get(r, "forward", f"b1x{FORWARD_SEQ}")
        if forward:
            ms, speedup = forward["median_ms"]["postformer"], forward["speedup_llama_over_postformer"]
            claim = DESIGN_CLAIMS[preset]["forward_ms"]
            rows.append({"target": f"forward b1x128 <= {claim} ms (design) and >= {FORWARD_MIN_SPEEDUP}x Llama",
                         "preset": preset, "measured": f"{ms:.2f} ms ({mark(ms <= claim)}), {speedup:.2f}x "
                                                       f"({mark(speedup >= FORWARD_MIN_SPEEDUP)})",
                         "ok": ms <= claim and speedup >= FORWARD_MIN_SPEEDUP})
        for dtype_name, minimum in TRAIN_MIN_RATIO.items():
            value = get(r, "training", dtype_name, "tokens_per_second_ratio_postformer_over_llama")
            if value is not None and preset in TRAIN_TARGET_PRESETS:
                rows.append({"target": f"training tokens/s {dtype_name} >= {minimum}x Llama", "preset": preset,
                             "measured": f"{value:.2f}x", "ok": value >= minimum})
        gen = get(r, "generation", "b1")
        if gen:
            ratios = gen["ratios"]
            primary = ratios["postformer_compiled_over_llama"]
            label = "Postformer compiled / Llama plain"
            if primary is None:  # compiled generation skipped or failed
                primary, label = ratios["postformer_over_llama"], "Postformer plain / Llama plain"
            extra = ""
            if label.startswith("Postformer compiled"):
                extra = (f"; plain / plain {fmt(ratios['postformer_over_llama'], '.2f', 'x')}; compiled / compiled "
                         f"{fmt(ratios['postformer_compiled_over_llama_compiled'], '.2f', 'x')}")
            rows.append({"target": f"greedy generation batch 1 >= {GENERATION_MIN_RATIO}x Llama", "preset": preset,
                         "measured": f"{fmt(primary, '.2f', 'x')} ({label}{extra})",
                         "ok": None if primary is None else primary >= GENERATION_MIN_RATIO})
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
    out = ["# Postformer vs LlamaForCausalLM: speed (same shape, CPU)", "",
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
    out += ["Medians. Speed-up = Llama ms / Postformer ms; ratios of tokens/s = Postformer / Llama (> 1: Postformer "
            "faster); memory ratio = Postformer / Llama (< 1: Postformer smaller). Llama's gated feed-forward gives "
            "it more parameters at the same sizes. Peak training memory: tensor memory from PyTorch's CPU allocator "
            "(torch.profiler memory events) over two AdamW steps of batch 8 x 256, weights included; see the "
            "docstring of benchmarks/bench_speed.py.", ""]
    out += ["## Design's table and measurements", "", *design_table(results), ""]
    out += ["## Issue's targets", "", *targets_table(report["targets"]), ""]
    if any(r.get("generation") for r in results):
        out += ["Generation target: the primary ratio is Postformer's fast path (static cache + compiled step) "
                "against Llama's plain `generate`; the like-for-like ratios follow it.", ""]
    if any(r.get("forward") for r in results):
        out += ["## Forward latency (eval, inference_mode, use_cache=False)", "", *forward_table(results), ""]
    if any(r.get("training") or r.get("memory") for r in results):
        out += [f"## Training (batch {TRAIN_BATCH} x {TRAIN_SEQ}: forward with labels, backward, AdamW step, "
                "zero_grad)",
                "", *training_table(results), ""]
    if any(r.get("generation") for r in results):
        out += [f"## Greedy generation ({PROMPT_LEN}-token prompt, exactly {NEW_TOKENS} new tokens)", "",
                *generation_table(results), "",
                "First call: the first compiled call per batch size, compilation included (excluded from the "
                f"medians; compile cache: {settings['compile_cache']}). "
                "Recompiles while timed: new Dynamo graphs during the timed calls (should be 0)."]
        errors = [f"- {r['preset']} batch {b.lstrip('b')} {name}: {msg}" for r in results
                  for b, e in (r.get("generation") or {}).items() for name, msg in e["errors"].items()]
        if errors:
            out += ["", "Failures:", *errors]
        out += [""]
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
    parser.add_argument("--skip-memory", action="store_true", help="no peak training memory")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-compiled-generation", action="store_true",
                        help="plain generate only (no static cache + compile, for either model)")
    parser.add_argument("--skip-llama-compiled", action="store_true", help="no compiled generation for Llama")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="let torch.compile use its on-disk cache (default: a fresh, empty cache for the run, so "
                             "compile times are those of a first compilation)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 warm-up, 2 repeats, 1 call, small matmul peak (shapes unchanged)")
    args = parser.parse_args(argv)
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
                    generation=f"prompt {PROMPT_LEN}, new {NEW_TOKENS}, batch {'/'.join(map(str, GENERATION_BATCHES))}")
    settings.update({k: True for k in ("skip_forward", "skip_compiled_forward", "skip_training", "skip_memory",
                                       "skip_generation", "skip_compiled_generation", "skip_llama_compiled")
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
              "design_claims": DESIGN_CLAIMS, "results": results,
              "total_s": time.perf_counter() - run_start}
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
