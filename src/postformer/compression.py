"""Make a trained model folder smaller: half precision, int8 weights, magnitude pruning; measure what it costs.

`compress_model` loads a model folder, prunes, converts and saves the result as another model folder (model
and tokenizer, `save_pretrained`, safetensors only), with `compression_report.json`: weights on disk,
sparsity, validation perplexity and greedy generation speed, before and after. The steps are small functions
of their own, which the tests call directly.

Half precision (`to_dtype`): every floating tensor in fp16 or bf16, half the bytes. bf16 keeps fp32's range,
so it is the safe choice; fp16 is more precise but can overflow on large activations.

int8 (`quantize_int8`): torchao's weight-only int8 quantisation (`Int8WeightOnlyConfig`: one int8 per weight
and one scale per output row), applied through transformers' `TorchAoConfig` integration, because that path
saves to safetensors (torchao's flattened tensor-subclass format: `<layer>._weight_qdata` int8,
`_weight_scale`, `_weight_zero_point`) and loads back with

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

with no quantisation argument (the quantisation config is in config.json; torchao must be installed). The
folder is a custom-code folder like any Postformer folder: `trust_remote_code=True` can be left out only in a
process that has imported `postformer`, which registers the classes. Activations stay in floating
point. torch.ao.quantization's dynamic quantisation is deprecated in this torch and only pickles, so it is not
used. Tried and rejected: torchao's `Int8DynamicActivationInt8WeightConfig` saves and loads as well but
generated at half the speed of fp32 on the CPU (it quantises every activation), against about the speed of
fp32 for weight-only; and `TorchAoConfig(include_input_output_embeddings=True, untie_embedding_weights=True)`,
which would quantise the embedding too: with this model's tied head, transformers 5.24 then saves no LM head
at all, and the folder reloads with a random one.

Only the Linear layers of the decoder blocks (attention and feed-forward) are quantised or pruned. The LM
head is tied to the token embedding (one tensor serves both), and both stay in floating point: transformers
does not quantise embeddings by default, and an int8 LM head would put the rounding error straight onto the
logits. In small models the embedding holds most of the weights, so int8 alone shrinks them less than one
might expect; `--dtype bf16 --int8` also halves the embedding.

Pruning (`prune_model`): L1 (magnitude) unstructured pruning with `torch.nn.utils.prune`, over those same
Linear weights (not biases, norms, the embedding or the tied head: pruning the embedding would also zero
logits of the output layer), made permanent with `prune.remove`. "global" ranks all of them together (layers
that matter less lose more), "layer" prunes each weight by the same ratio. The zeros are stored as zeros:
unstructured sparsity makes the folder no smaller and the model no faster on its own; it compresses well and
combines with int8 (a zero stays an exact zero).
"""

import json
import math
import numbers
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ._dependencies import MissingDependencyError, require
from .hub_cards import write_model_card
from .model_files import check_model, load_model
from .saving import check_output_folder, saving, write_text

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PRUNE_SCOPES = ("global", "layer")
REPORT_FILE = "compression_report.json"
# Files of the source folder never copied beside the compressed model: its weights and (by name) training state.
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.index.json")
MB = 1_000_000


def _torchao():
    """transformers' TorchAoConfig and torchao's Int8WeightOnlyConfig, or a MissingDependencyError saying
    what to install."""
    Int8WeightOnlyConfig = require("torchao.quantization", "int8 quantisation", "torchao").Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig, Int8WeightOnlyConfig


# `quantization_config` kinds: torchao int8 (weight-only), bitsandbytes 4-bit NF4 ("4bit" is another name for it).
QUANTIZATIONS = ("int8", "nf4", "4bit")


def quantization_config(kind: str):
    """transformers' quantisation config for `kind`, which `from_pretrained(..., quantization_config=)` loads a
    model with: "int8", torchao weight-only int8 of the decoder's Linear layers (`TorchAoConfig`, see the module
    docstring; needs torchao); "nf4" / "4bit", bitsandbytes 4-bit NF4 with double quantisation, as in QLoRA
    (`BitsAndBytesConfig`; GPU-first, needs bitsandbytes, which postformer neither installs nor tests). A
    missing library is a MissingDependencyError (one line), an unknown kind a ValueError."""
    if kind == "int8":
        torchao_config, int8_weight_only = _torchao()
        return torchao_config(int8_weight_only())
    if kind in ("nf4", "4bit"):
        try:
            import bitsandbytes  # noqa: F401
        except Exception:  # not installed, or installed without a usable backend
            raise MissingDependencyError(
                f"quantize {kind} needs bitsandbytes, which does not import here: pip install bitsandbytes "
                "(GPU-first; postformer neither installs nor tests it; int8 works on the CPU)"
            ) from None
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    raise ValueError(f"quantize: unknown quantisation {kind!r}; choose one of {', '.join(QUANTIZATIONS)}")


def to_dtype(model, dtype: str):
    """Cast every floating tensor of `model` to "fp16" or "bf16", in place; return the model.
    save_pretrained then records the dtype in config.json, and from_pretrained loads it back in that dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return model.to(DTYPES[dtype])


def quantize_int8(model):
    """A new model whose decoder Linear weights are int8 (torchao weight-only, one scale per output row);
    embedding, tied LM head, biases and norms keep the model's dtype. See the module docstring for why this
    path. Its `save_pretrained` writes safetensors that `AutoModelForCausalLM.from_pretrained(folder,
    trust_remote_code=True)` loads back quantised.

    It goes through transformers' own loading path (save to a temporary folder, reload with a TorchAoConfig),
    so that the result carries the quantiser transformers needs to save it. Needs torchao.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError("the model is already quantised; quantise the original (floating-point) model")
    config = quantization_config("int8")
    with tempfile.TemporaryDirectory(prefix="postformer-int8-") as folder:
        model.save_pretrained(folder)
        quantized = type(model).from_pretrained(folder, dtype=model.dtype, quantization_config=config)
    return quantized.eval()


def prunable_layers(model) -> dict[str, nn.Linear]:
    """The Linear layers that pruning and int8 work on, by name: those of the decoder blocks, not the LM head
    (the output embedding, tied to the input embedding)."""
    head = model.get_output_embeddings()
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head}


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not math.isfinite(ratio) \
            or not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must be a number in [0, 1) (the fraction of weights set to zero), got {ratio!r}")
    return float(ratio)


def _check_scope(scope) -> str:
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"prune scope: unknown scope {scope!r}; choose one of {', '.join(PRUNE_SCOPES)}")
    return scope


def prune_model(model, ratio: float, scope: str = "global"):
    """Set the `ratio` of smallest-magnitude weights of the decoder's Linear layers to zero, in place, for
    good (`prune.remove`); return the model. Embedding, tied LM head, biases and norms are left alone.

    scope "global": the smallest weights over all those layers together, round(ratio * all weights) of them;
    "layer": round(ratio * its size) in each weight. Sparsity is then exactly `ratio` up to that rounding
    (weights already zero count among the smallest, so pruning a pruned model by a larger ratio also does).
    """
    ratio, scope = _check_ratio(ratio), _check_scope(scope)
    targets = [(module, "weight") for module in prunable_layers(model).values()]
    if scope == "global":
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    else:
        for module, name in targets:
            torch_prune.l1_unstructured(module, name, amount=ratio)
    for module, name in targets:  # fold the masks into the weights: plain parameters again, saved as usual
        torch_prune.remove(module, name)
    return model


def _plain(weight: torch.Tensor) -> torch.Tensor:
    """A floating-point view of a weight; int8 tensor subclasses (torchao) are dequantised."""
    if type(weight) not in (torch.Tensor, nn.Parameter):
        return weight.dequantize()
    return weight


def sparsity(model) -> dict:
    """Fraction of exact zeros in the Linear weights that pruning works on: "overall" and per layer
    ("layers", by name), with the counts ("zeros", "weights")."""
    layers, zeros, total = {}, 0, 0
    for name, module in prunable_layers(model).items():
        weight = _plain(module.weight.detach())
        layer_zeros = int((weight == 0).sum())
        layers[name] = layer_zeros / weight.numel()
        zeros, total = zeros + layer_zeros, total + weight.numel()
    return {"overall": zeros / total if total else 0.0, "zeros": zeros, "weights": total, "layers": layers}


def weights_size(folder) -> int:
    """Bytes of the model weights files in `folder` (safetensors or .bin, sharded or not)."""
    folder = Path(folder)
    files = {p for pattern in ("model*.safetensors", "pytorch_model*.bin") for p in folder.glob(pattern)}
    return sum(p.stat().st_size for p in files if p.is_file())


def generation_speed(model, tokenizer, new_tokens: int = 32, repeats: int = 3, prompt: str = "") -> float:
    """Greedy generation speed at batch 1, in new tokens per second: the median of `repeats` timed runs after
    one untimed warm-up. Every run generates exactly `new_tokens` tokens (end-of-post is ignored, so that
    all models do the same work), fewer when the model's context is shorter."""
    if not isinstance(new_tokens, int) or new_tokens < 1 or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"new_tokens and repeats must be integers >= 1, got {new_tokens!r} and {repeats!r}")
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    new_tokens = min(new_tokens, model.config.max_position_embeddings - inputs["input_ids"].shape[1])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    speeds = []
    with torch.inference_mode():
        for run in range(repeats + 1):
            start = time.perf_counter()
            output = model.generate(**inputs, **options)
            seconds = time.perf_counter() - start
            if run > 0:
                speeds.append((output.shape[1] - inputs["input_ids"].shape[1]) / seconds)
    return statistics.median(speeds)


def _check_positive_int(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _measure(model, tokenizer, texts, batch_size, new_tokens, repeats) -> dict:
    from .evaluation import evaluate_posts

    return {"eval": evaluate_posts(model, tokenizer, texts, batch_size=batch_size),
            "tokens_per_second": generation_speed(model, tokenizer, new_tokens, repeats)}


def _copy_other_files(source: Path, target: Path, keep: Path | None = None) -> list[str]:
    """Copy the files of `source` that saving did not write (training config and metrics, loss curve, model
    card, ...) beside the compressed model, for provenance; never weights, nor a file `keep` (the folder the
    files will be moved to) already holds. Their names."""
    copied = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or (target / path.name).exists() or path.name == REPORT_FILE:
            continue
        if keep is not None and (keep / path.name).exists():
            continue
        if any(path.match(pattern) for pattern in _WEIGHT_PATTERNS):
            continue
        shutil.copy2(path, target / path.name)
        copied.append(path.name)
    return copied


def compress_model(
    model_dir,
    output_dir,
    dtype: str | None = None,
    int8: bool = False,
    prune: float | None = None,
    prune_scope: str = "global",
    data=None,
    text_field: str = "text",
    max_posts: int | None = None,
    batch_size: int = 8,
    new_tokens: int = 32,
    speed_repeats: int = 3,
    on_bad_lines: str = "error",
) -> dict:
    """Compress the model folder `model_dir` into the new model folder `output_dir`; return the report, also
    written there as compression_report.json.

    Steps, in this order: `prune` (a ratio in [0, 1), with `prune_scope` "global" or "layer"), then `dtype`
    ("fp16" or "bf16"), then `int8` (weight-only, see `quantize_int8`; with a dtype, the parts left in floating
    point take that dtype). At least one is needed. The folder gets the model (safetensors), its tokenizer and
    copies of the source folder's other files (not its weights).

    Measured before and after, the "after" on the model loaded back from `output_dir`: weights on disk,
    sparsity of the pruned layers, perplexity on posts (`data`: a file, all its posts, or a folder's
    validation split; default the bundled sample's validation split; the first `max_posts` of them) with
    `evaluation.evaluate_posts`, and greedy new tokens per second at batch 1 (`generation_speed`: `new_tokens`
    per run, median of `speed_repeats` runs; before and after are timed one after the other, so on a busy
    machine the speeds are rough: benchmarks/bench_compression.py interleaves the variants).

    Raises ValueError for bad options, when no step is asked for or when the model is already quantised,
    FileNotFoundError (or ValueError) when `model_dir` is not a model folder, FileExistsError when `output_dir`
    already holds a model, PermissionError when it cannot be written, MissingDependencyError (an ImportError)
    for int8 without torchao. The model is saved all or nothing: when saving fails (a DiskFullError when the
    device is full), `output_dir` keeps what it held. `on_bad_lines`: as for `postformer.data.load_posts`.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype: unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if prune is not None:
        _check_ratio(prune)
    _check_scope(prune_scope)
    if dtype is None and not int8 and prune is None:
        raise ValueError("nothing to do: ask for at least one of dtype (fp16, bf16), int8 or prune (a ratio)")
    for name, value in (("max_posts", max_posts), ("batch_size", batch_size), ("new_tokens", new_tokens),
                        ("speed_repeats", speed_repeats)):
        _check_positive_int(name, value)
    source = check_model(model_dir, hub=False)  # its other files are copied beside the compressed model
    if "quantization_config" in json.loads((source / "config.json").read_text(encoding="utf-8")):
        raise ValueError(f"the model in {str(source)!r} is already quantised; compress the original "
                         "(floating-point) model")
    target = check_output_folder(output_dir)
    if int8:
        _torchao()  # fail now, not after the measurements

    from .data import load_posts_split

    texts = load_posts_split(data, text_field, "validation", on_bad_lines)[:max_posts]
    model, tokenizer = load_model(source)
    before = _measure(model, tokenizer, texts, batch_size, new_tokens, speed_repeats)
    before_sparsity = sparsity(model)

    if prune is not None:
        prune_model(model, prune, prune_scope)
    if dtype is not None:
        to_dtype(model, dtype)
    if int8:
        model = quantize_int8(model)
    with saving(target, "the compressed model") as staging:  # all or nothing: a failed save leaves no half model
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        copied = _copy_other_files(source, staging, keep=target)
    del model

    model, tokenizer = load_model(target)  # what users will get
    after = _measure(model, tokenizer, texts, batch_size, new_tokens, speed_repeats)
    after_sparsity = sparsity(model)
    size_before, size_after = weights_size(source), weights_size(target)

    report = {
        "model": str(source),
        "output_dir": str(target),
        "steps": {"prune": prune, "prune_scope": prune_scope if prune is not None else None, "dtype": dtype,
                  "int8": bool(int8)},
        "weights_bytes": {"before": size_before, "after": size_after},
        "weights_mb": {"before": size_before / MB, "after": size_after / MB},
        "size_ratio": size_after / size_before if size_before else None,
        "sparsity": {"before": before_sparsity["overall"], "after": after_sparsity["overall"],
                     "weights": after_sparsity["weights"], "layers": after_sparsity["layers"]},
        "perplexity": {"before": before["eval"]["perplexity"], "after": after["eval"]["perplexity"],
                       "relative_change": after["eval"]["perplexity"] / before["eval"]["perplexity"] - 1},
        "evaluation": {"data": str(data) if data is not None else "bundled sample (validation)",
                       "before": before["eval"], "after": after["eval"]},
        "generation": {"tokens_per_second": {"before": before["tokens_per_second"],
                                             "after": after["tokens_per_second"]},
                       "new_tokens": new_tokens, "repeats": speed_repeats, "batch_size": 1, "decoding": "greedy",
                       "threads": torch.get_num_threads()},
        "copied_files": copied,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "torchao": _version("torchao") if int8 else None},
    }
    write_text(target / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    write_model_card(target, base_model=str(source))  # replaces the source's card, copied above
    return report


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _describe_steps(steps: dict) -> str:
    parts = []
    if steps.get("prune") is not None:
        parts.append(f"pruned {steps['prune']:.0%} ({steps['prune_scope']})")
    if steps.get("dtype"):
        parts.append(steps["dtype"])
    if steps.get("int8"):
        parts.append("int8 weights")
    return ", ".join(parts)


def format_report(report: dict) -> str:
    """The report for the terminal: one line per measure, before -> after."""
    size, ppl, speed = report["weights_mb"], report["perplexity"], report["generation"]["tokens_per_second"]
    posts = report["evaluation"]["after"]["posts"]
    ratio = f"  ({report['size_ratio']:.2f}x)" if report.get("size_ratio") else ""
    return "\n".join([
        f"{report['model']} -> {report['output_dir']}: {_describe_steps(report['steps'])}",
        f"  weights on disk   {size['before']:.2f} MB -> {size['after']:.2f} MB{ratio}",
        f"  sparsity          {report['sparsity']['before']:.1%} -> {report['sparsity']['after']:.1%} "
        f"of {report['sparsity']['weights']:,} Linear weights",
        f"  perplexity        {ppl['before']:.3f} -> {ppl['after']:.3f}  ({ppl['relative_change']:+.2%}) "
        f"on {posts} posts",
        f"  greedy speed      {speed['before']:.1f} -> {speed['after']:.1f} new tokens/s (batch 1, "
        f"{report['generation']['new_tokens']} tokens)",
    ])


__all__ = [
    "DTYPES", "PRUNE_SCOPES", "QUANTIZATIONS", "MissingDependencyError", "quantization_config", "to_dtype",
    "quantize_int8", "prunable_layers", "prune_model", "sparsity", "weights_size", "generation_speed",
    "compress_model", "format_report",
]
