"""Fine-tune a saved causal LM on posts, fully or with LoRA, in the style of transformers' `run_clm.py`.

`run_finetune(FinetuneArguments, PostformerTrainingArguments)` is what `postformer finetune` calls (`finetune(model_dir,
data, output_dir, **options)` builds the same arguments from keywords):

1. the model and tokenizer loaded with `postformer.model_files.load_model` (a folder, checked, or a Hub repo id);
2. posts read with `postformer.data.load_posts`, tokenised and packed into blocks with `pack_posts`;
3. optionally wrapped with PEFT LoRA adapters;
4. trained by `PostformerTrainer` (the trainer of `postformer train`), evaluated before and after on the
   validation split;
5. saved to `output_dir` as a complete model folder (a LoRA run saves the merged model there, and the adapter
   alone in `output_dir/adapter/`), with metrics.json, training_config.json, training_args.json, loss_curve.png
   and a model card.

LoRA targets, by default, every Linear layer inside the Postformer blocks (DEFAULT_LORA_TARGET_MODULES):

- `q_proj`, `k_proj`, `v_proj`: the query, key and value projections of each attention layer;
- `o_proj`: the attention output projection;
- `up_proj`, `down_proj`: the two layers of each feed-forward block.

The LM head (`lm_head`) is left out: it is tied to the token embeddings, and adapting it would untie them. Any
Linear module of the model may be named with `target_modules` (its last name component, e.g. "o_proj", or its full
dotted path); a name that matches no Linear module is a ValueError that lists the model's Linear module names.

LoRA on a quantised base (`--lora --quantize int8`, QLoRA on the CPU): the base model is loaded through
transformers' quantisation config (`compression.quantization_config`: torchao weight-only int8, the format of
`postformer compress --int8`; or bitsandbytes 4-bit NF4, GPU-first and untested here) and its Linear weights stay
quantised and frozen while the fp32 adapters train on top (PEFT's torchao LoRA layer), and the int8 layers keep
only their int8 weights for the backward pass (`keep_int8_for_backward`; torchao's linear alone would keep an fp32
copy of each). What is saved:

- `adapter/`: the adapter (safetensors), and `base_quantization.json` naming the base folder and the
  quantisation. The base folder is never rewritten: `load_adapter` loads it, quantises it again (to the same int8
  weights: quantisation is deterministic) and puts the adapter on it, giving the logits of the end of training
  exactly.
- the merged model: PEFT's merge dequantises each target, adds (alpha / r) B A and quantises the sum again, so
  the merged model is int8 like its base (about a quarter of the fp32 size for the blocks' weights), saved as
  `compress --int8` saves it (safetensors, torchao's flattened tensors) and loaded with `from_pretrained` (torchao
  installed). Its logits differ from the adapter's by that one more int8 rounding, about what quantising the base
  moved them by (tests/test_qlora.py). For an fp32 model instead, merge the adapter into the fp32 base yourself
  (`PeftModel.from_pretrained(fp32_base, adapter).merge_and_unload()`): it then differs from the trained model by
  the base's quantisation error.

`--quantize` without `--lora` is refused (int8 weights cannot be trained), as is a full fine-tune of a folder that
is already quantised (a LoRA run on one works, without `--quantize`).

Adapters trained on Postformer 0.1 target its fused `qkv_proj`, which models no longer have: `upgrade_adapter`
(`postformer upgrade-adapter OLD --output-dir NEW`) rewrites such an adapter for q_proj/k_proj/v_proj, exactly.
"""

import json
import math
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from ..progress import progress_bars
from .arguments import (
    DEFAULT_LORA_TARGET_MODULES,
    FinetuneArguments,
    PostformerTrainingArguments,
    command_arguments,
    run_record,
)



# Written beside a quantised run's adapter: the base model and its quantisation, for `load_adapter`.
BASE_QUANTIZATION_FILE = "base_quantization.json"


def _check_arguments(job: FinetuneArguments, args: PostformerTrainingArguments) -> None:
    for name, value in (("lora_r", job.lora_r), ("lora_alpha", job.lora_alpha), ("batch_size", args.per_device_train_batch_size),
                        ("gradient_accumulation_steps", args.gradient_accumulation_steps),
                        ("logging_steps", args.logging_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if args.max_steps in (None, 0) or args.max_steps < -1:
        raise ValueError(f"max_steps must be an integer >= 1 (or -1 to train for num_train_epochs), got {args.max_steps!r}")
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ValueError(f"epochs must be > 0, got {args.num_train_epochs!r}")
    if not 0 <= job.lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {job.lora_dropout!r}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {args.learning_rate!r}")
    if job.max_eval_posts is not None and job.max_eval_posts < 1:
        raise ValueError(f"max_eval_posts must be at least 1, got {job.max_eval_posts!r}")
    if job.lora and not job.target_modules:
        raise ValueError("target_modules is empty: name at least one Linear module for LoRA")
    if job.quantize is not None and not job.lora:
        raise ValueError(f"--quantize {job.quantize} needs --lora: quantised weights cannot be trained, only "
                         "LoRA adapters on a quantised base")


def _check_output_dir(model_dir: Path, output_dir: Path) -> None:
    """Refuse to overwrite a model (or the base model itself) or a folder that cannot be written."""
    from ..saving import check_output_folder

    if output_dir.resolve() == model_dir.resolve():
        raise ValueError(f"output folder {output_dir} is the base model's folder: choose another --output-dir")
    check_output_folder(output_dir)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the model's Linear modules (what LoRA `target_modules` names)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def check_target_modules(model: nn.Module, target_modules) -> list[str]:
    """`target_modules` as a list, after checking each one names a Linear module of `model` the way PEFT matches
    them (the full dotted name, or its last components); ValueError listing the model's Linear modules otherwise.

    PEFT itself only complains when no target matches at all; a typo next to a correct name would silently
    train fewer layers than asked, so every name is checked here."""
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    targets = list(target_modules)
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    unknown = [t for t in targets if not any(name == t or name.endswith("." + t) for name in linear)]
    if unknown:
        raise ValueError(
            f"unknown LoRA target module(s) {unknown}: the model's Linear modules are "
            f"{linear_module_names(model)} (default: {list(DEFAULT_LORA_TARGET_MODULES)})"
        )
    return targets


class _FrozenQuantizedLinear(torch.autograd.Function):
    """`F.linear(x, weight, bias)` for a frozen quantised (torchao) weight that keeps only the quantised weight for
    the backward pass, which dequantises it again for the input's gradient.

    torchao's weight-only int8 linear casts the int8 weight to the input's dtype for its matmul, and autograd keeps
    that fp32 copy until the backward pass: LoRA on the int8 base then held every adapted layer's weight in fp32 as
    well at the peak of a step, and needed no less memory than LoRA on the fp32 base (benchmarks/bench_qlora.py).
    The output is the same (`F.linear` runs as before); the backward costs one more dequantisation per layer."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = grad @ weight.dequantize().to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias


def _frozen_quantized_forward(self, x):
    return _FrozenQuantizedLinear.apply(x, self.weight, self.bias)


def keep_int8_for_backward(model) -> None:
    """Make every Linear layer of `model` with a torchao-quantised weight keep only its quantised weight for the
    backward pass (see _FrozenQuantizedLinear), in place: the layer's forward is replaced on the instance. Other
    layers are left as they are."""
    try:
        from torchao.utils import TorchAOBaseTensor
    except ImportError:  # then no weight is a torchao tensor
        return

    for module in model.modules():
        if isinstance(module, nn.Linear) and isinstance(module.weight, TorchAOBaseTensor):
            module.forward = types.MethodType(_frozen_quantized_forward, module)


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def finetune(model_dir, data=None, output_dir=None, **options) -> dict:
    """Fine-tune the causal LM saved in `model_dir` on the posts of `data`; write the result to `output_dir`.

    data: a posts file or folder, as `postformer.data.load_posts` reads (None: the bundled sample); its validation
    split (or 5% of train) is evaluated before and after training. `options`: any field of FinetuneArguments
    (lora, lora_r, lora_alpha, lora_dropout, target_modules, base_model, block_size, ...) or of
    PostformerTrainingArguments (max_steps, num_train_epochs / epochs, learning_rate, batch_size, seed, quiet, ...),
    as `postformer finetune` takes them. lora=True trains LoRA adapters (rank `lora_r`, scale `lora_alpha /
    lora_r`, `lora_dropout`) on `target_modules` and keeps every base weight frozen; otherwise all weights are
    trained. quantize ("int8", or "nf4" / "4bit" with bitsandbytes; needs lora=True): the frozen base is loaded
    quantised and the merged model is quantised the same way (see the module docstring). learning_rate None (the
    default): 2e-4 with LoRA, 5e-5 otherwise. base_model: the base model's Hub repo id, which the model card's
    metadata links to (and the adapter config names); None: the card names the local `model_dir` in its text
    only, since the Hub could not resolve it.

    Writes to output_dir (refused when it already holds a model): the fine-tuned (for LoRA: merged) model and
    tokenizer as a complete model folder that `from_pretrained` loads, `adapter/` (LoRA: the adapter alone, for
    `PeftModel.from_pretrained` or `load_adapter`), metrics.json, training_config.json, training_args.json,
    loss_curve.png and README.md (model card). Returns the metrics: eval_loss / eval_perplexity after,
    eval_loss_before / eval_perplexity_before, the Trainer's train metrics, parameters, trainable_parameters,
    lora and quantize.
    """
    if output_dir is None:
        raise ValueError("output_dir is required: the folder to write the fine-tuned model to")
    if isinstance(options.get("target_modules"), str):
        options["target_modules"] = [options["target_modules"]]
    job, args = command_arguments("finetune", model=str(model_dir), data=None if data is None else str(data),
                                  output_dir=str(output_dir), **options)
    return run_finetune(job, args)


def run_finetune(job: FinetuneArguments, args: PostformerTrainingArguments) -> dict:
    """`finetune` from its parsed arguments (what `postformer finetune` calls)."""
    with progress_bars(not args.quiet), warnings.catch_warnings():
        # PEFT asks transformers for `is_gradient_checkpointing`, which transformers 5 deprecates: not the user's
        # to act on.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return _run_finetune(job, args)


def _run_finetune(job: FinetuneArguments, args: PostformerTrainingArguments) -> dict:
    from transformers import DataCollatorForLanguageModeling, set_seed

    from ..data import load_posts
    from ..hub_cards import write_model_card
    from ..model_files import check_model, check_model_folder, load_model
    from ..saving import saving
    from .data import pack_posts, tokens_per_character
    from .run import plot_loss_curve
    from .trainer import PostformerTrainer

    _check_arguments(job, args)
    model_dir = check_model(job.model)
    output_dir = Path(args.output_dir)
    _check_output_dir(Path(model_dir), output_dir)
    if args.learning_rate is None:
        args.learning_rate = 2e-4 if job.lora else 5e-5

    quantization = {}
    if job.quantize is not None:
        from ..compression import quantization_config

        if isinstance(model_dir, Path) and "quantization_config" in check_model_folder(model_dir)[1]:
            raise ValueError(f"the model in {str(model_dir)!r} is already quantised: leave out --quantize")
        quantization["quantization_config"] = quantization_config(job.quantize)  # a missing library fails now

    set_seed(args.seed)  # LoRA's initial A matrices and dropout masks depend on the seed alone
    model, tokenizer = load_model(model_dir, **quantization)  # a damaged folder is named before any work
    quantized_base = getattr(model, "hf_quantizer", None) is not None  # --quantize, or a folder saved quantised
    if quantized_base and not job.lora:
        raise ValueError(f"the model in {str(model_dir)!r} is quantised: its weights cannot be trained; add --lora "
                         "to train adapters on it")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and job.block_size > context:
        raise ValueError(
            f"block_size {job.block_size} is longer than the model's context ({context}); lower --block-size"
        )
    if job.lora:
        # Checked before any data is read, so a typo fails in seconds.
        check_target_modules(model, job.target_modules)

    posts = load_posts(job.data, text_field=job.text_field, seed=args.seed,
                       on_bad_lines="skip" if job.skip_bad_lines else "error")
    if job.max_eval_posts is not None and len(posts["validation"]) > job.max_eval_posts:
        posts["validation"] = posts["validation"].select(range(job.max_eval_posts))
    train_blocks = pack_posts(posts["train"], tokenizer, job.block_size)
    eval_blocks = pack_posts(posts["validation"], tokenizer, job.block_size)
    if len(train_blocks) == 0 or len(eval_blocks) == 0:
        split = "train" if len(train_blocks) == 0 else "validation"
        raise ValueError(
            f"the {split} split ({len(posts[split])} posts) is shorter than one block of {job.block_size} tokens; "
            "lower --block-size or give more posts"
        )

    # The card links a Hub id in its metadata; a local folder is only named in its text (the Hub cannot resolve
    # it), so without --base-model the folder is passed as given.
    base_model = job.base_model or str(job.model)
    if job.lora:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            task_type="CAUSAL_LM", r=job.lora_r, lora_alpha=job.lora_alpha, lora_dropout=job.lora_dropout,
            target_modules=list(job.target_modules), bias="none",
        )
        model = get_peft_model(model, lora_config)
        if quantized_base:
            keep_int8_for_backward(model)
        if job.base_model:
            # adapter_config.json (and the card PEFT writes beside it) then name the Hub model, not a local path,
            # so `AutoPeftModelForCausalLM.from_pretrained` of the published adapter finds its base.
            model.peft_config["default"].base_model_name_or_path = job.base_model

    # Trainer sets config.use_cache to TrainingArguments.use_cache (False) for training; the saved model keeps
    # the base model's setting, or it would run without its KV cache when called directly.
    use_cache = getattr(model.config, "use_cache", None)
    trainer = PostformerTrainer(
        model=model,
        args=args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        tokens_per_character=tokens_per_character(posts["validation"], tokenizer),
    )

    before = trainer.evaluate()
    train_output = trainer.train()
    after = trainer.evaluate()

    lora_parameters = {id(p) for name, p in model.named_parameters() if "lora_" in name}
    metrics = {
        "eval_loss": after["eval_loss"],
        "eval_perplexity": _perplexity(after["eval_loss"]),
        "eval_loss_before": before["eval_loss"],
        "eval_perplexity_before": _perplexity(before["eval_loss"]),
        **train_output.metrics,
        "parameters": sum(p.numel() for p in model.parameters() if id(p) not in lora_parameters),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lora": job.lora,
        "quantize": job.quantize,
        "base_model": base_model,
    }

    if args.should_save:
        if use_cache is not None:
            model.config.use_cache = use_cache
        # All or nothing: the files are written to a temporary folder inside output_dir and moved into place once
        # all are written, so a failed save (disk full, ...) leaves output_dir as it was.
        with saving(output_dir, "the fine-tuned model") as staging:
            if job.lora:
                # adapter_config.json + adapter_model.safetensors. The vocabulary is never resized here, so the
                # full embeddings need not be saved; saying so spares PEFT from asking the Hub for the base
                # model's config.
                model.save_pretrained(staging / "adapter", save_embedding_layers=False)
                if job.quantize is not None:  # what `load_adapter` needs to quantise the base again
                    base = str(Path(model_dir).resolve()) if isinstance(model_dir, Path) else model_dir
                    (staging / "adapter" / BASE_QUANTIZATION_FILE).write_text(
                        json.dumps({"base_model": base, "quantize": job.quantize}, indent=2) + "\n")
                # W + (alpha / r) B A folded into each target: a plain model. On a quantised base, PEFT dequantises
                # each target, adds B A and quantises the sum again: the merged model is quantised like its base.
                merged = model.merge_and_unload()
                merged.save_pretrained(staging)
            else:
                trainer.save_model(str(staging))
            tokenizer.save_pretrained(staging)
            _drop_load_time_tokenizer_options(staging / "tokenizer_config.json")
            (staging / "training_config.json").write_text(json.dumps(run_record(job, args), indent=2) + "\n")
            (staging / "training_args.json").write_text(args.to_json_string() + "\n")
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            plot_loss_curve(trainer.state.log_history, staging / "loss_curve.png")
        write_model_card(output_dir, base_model=base_model)  # after: the card names the folder
    return metrics


def _drop_load_time_tokenizer_options(path: Path) -> None:
    """Remove `is_local` and `local_files_only` from a saved tokenizer_config.json: transformers records how the
    tokenizer was loaded here (offline, from a folder), which says nothing about the model and would travel to
    the Hub with it."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config, dict) and ("is_local" in config or "local_files_only" in config):
        config.pop("is_local", None)
        config.pop("local_files_only", None)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_adapter(adapter_dir, model=None):
    """The model of a LoRA run, unmerged: the base model with the adapter of `adapter_dir` on it (a PeftModel, in
    eval mode), and the base's tokenizer. The base is `model` (a folder or Hub repo id) or, by default, the one
    the run recorded: after `--quantize`, the folder named in base_quantization.json, loaded and quantised again
    as it was for training (the base folder is never rewritten), so the logits are those at the end of training;
    otherwise adapter_config.json's base_model_name_or_path."""
    from peft import PeftModel

    from ..compression import quantization_config
    from ..model_files import load_model

    adapter_dir = Path(adapter_dir)
    config_path, record_path = adapter_dir / "adapter_config.json", adapter_dir / BASE_QUANTIZATION_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"load_adapter: {config_path} is missing")
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    base = model or record.get("base_model") or json.loads(config_path.read_text(encoding="utf-8")).get(
        "base_model_name_or_path")
    if not base:
        raise ValueError(f"load_adapter: {adapter_dir} does not name its base model; pass model=")
    options = {"quantization_config": quantization_config(record["quantize"])} if record.get("quantize") else {}
    base_model, tokenizer = load_model(base, **options)
    return PeftModel.from_pretrained(base_model, str(adapter_dir)).eval(), tokenizer


def upgrade_adapter(adapter_dir, output_dir, model_dir=None) -> Path:
    """Rewrite a LoRA adapter of Postformer 0.1 (targeting the fused `qkv_proj`) for separate q_proj, k_proj and
    v_proj; return the output folder. The fused update B A splits exactly: each projection gets the shared A and
    its own rows of B (query rows, then key rows, then value rows, as 0.1 laid them out), so the upgraded adapter
    gives the same outputs. Other targets are copied unchanged. The q/k/v sizes come from the base model's
    config.json in `model_dir` (default: the folder above the adapter, where `finetune` puts the model). Raises
    ValueError when the adapter has no `qkv_proj` target."""
    from safetensors.torch import load_file, save_file

    from ..saving import saving

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    model_dir = adapter_dir.parent if model_dir is None else Path(model_dir)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    for path in (config_path, weights_path, model_dir / "config.json"):
        if not path.is_file():
            raise FileNotFoundError(f"upgrade_adapter: {path} is missing")
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if "qkv_proj" not in targets:
        raise ValueError(f"{adapter_dir}: the adapter does not target qkv_proj (targets: {targets}); nothing to upgrade")
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    heads = model_config["num_attention_heads"]
    head_dim = model_config["hidden_size"] // heads
    kv_heads = model_config.get("num_key_value_heads") or heads
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]

    upgraded = {}
    for key, tensor in load_file(str(weights_path)).items():
        if ".qkv_proj." not in key:
            upgraded[key] = tensor
        elif ".lora_A." in key:  # the shared down-projection, one copy per projection
            for name in "qkv":
                upgraded[key.replace(".qkv_proj.", f".{name}_proj.")] = tensor.clone()
        elif ".lora_B." in key and tensor.shape[0] == sum(sizes):
            for name, part in zip("qkv", torch.split(tensor, sizes, dim=0)):
                upgraded[key.replace(".qkv_proj.", f".{name}_proj.")] = part.contiguous()
        else:
            raise ValueError(f"{adapter_dir}: cannot upgrade {key} {tuple(tensor.shape)} for the model in {model_dir}")
    adapter_config["target_modules"] = sorted(set(targets) - {"qkv_proj"} | {"q_proj", "k_proj", "v_proj"})
    with saving(output_dir, "the upgraded adapter") as staging:
        save_file(upgraded, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    return output_dir


__all__ = ["DEFAULT_LORA_TARGET_MODULES", "finetune", "run_finetune", "check_target_modules",
           "linear_module_names", "keep_int8_for_backward", "load_adapter", "upgrade_adapter"]
