"""One training run, end to end: posts -> tokenizer -> packed datasets -> PostformerTrainer -> a Hub-ready folder.

`train(PretrainArguments(...), training_arguments("train", output_dir=...))` is what `postformer train` calls. The same code runs in one process or under
`torchrun` / `accelerate launch` (DDP, FSDP through an Accelerate config): the Trainer takes the process group
from the environment, and only the main process writes shared files.
"""

import json
import re
from pathlib import Path

from transformers import AutoTokenizer, DataCollatorForLanguageModeling, set_seed

from ..data import load_posts
from ..hub_cards import write_model_card
from ..modeling import PostformerConfig, PostformerForCausalLM
from ..tokenization import config_token_ids, posts_generation_config, train_tokenizer
from .arguments import MODEL_FIELDS, PostformerTrainingArguments, PretrainArguments, run_record
from .data import pack_posts, tokens_per_character
from ..progress import progress_bars
from ..saving import check_output_folder, staged_save, write_text
from .trainer import (
    PostformerTrainer,
    SampleGenerationCallback,
    compute_dtype,
    flops_per_token,
    measure_matmul_peak,
)

class TrainingInterrupted(Exception):
    """Training was stopped with Ctrl-C (KeyboardInterrupt) at `step`; the checkpoints written so far are kept."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint. PostformerTrainer writes each one under a temporary name
    (`.tmp-checkpoint-N/`, never matched here) and renames it to checkpoint-N once complete; trainer_state.json,
    written last, is checked as well for checkpoints written by plain Trainer, which writes in place."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _check_output_dir(output_dir: Path, resume: bool) -> Path | None:
    """Refuse to overwrite another run; return the checkpoint to resume from."""
    if not resume:
        check_output_folder(output_dir, "pass --resume to continue that run, or choose another --output-dir")
        return None
    checkpoint = latest_checkpoint(output_dir) if output_dir.is_dir() else None
    if checkpoint is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint in {output_dir} to resume from")
    return checkpoint


def build_model_config(config: PretrainArguments, tokenizer) -> PostformerConfig:
    overrides = {name: getattr(config, name) for name in MODEL_FIELDS if getattr(config, name) is not None}
    model_config = PostformerConfig.from_preset(config.preset, **overrides, **config_token_ids(tokenizer))
    if config.block_size > model_config.max_position_embeddings:
        raise ValueError(
            f"block_size {config.block_size} is longer than the model's context "
            f"(max_position_embeddings={model_config.max_position_embeddings}); lower --block-size or raise "
            "--max-position-embeddings"
        )
    return model_config


def train(config: PretrainArguments, args: PostformerTrainingArguments, callbacks=()) -> dict:
    """Run training as configured (`config`: the data, tokenizer and model; `args`: the Trainer's options); return
    the final metrics (also written to metrics.json). `args.quiet`: no progress bars, the libraries' included.
    `callbacks`: more `TrainerCallback`s for the run (benchmarks time steps or stop at a budget this way)."""
    with progress_bars(not args.quiet):
        return _train(config, args, list(callbacks))


def _train(config: PretrainArguments, args: PostformerTrainingArguments, callbacks: list) -> dict:
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "eval_steps", "save_steps",
                 "logging_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    output_dir = Path(args.output_dir)
    checkpoint = _check_output_dir(output_dir, config.resume)

    posts = load_posts(config.data, text_field=config.text_field, seed=args.seed, streaming=config.streaming,
                       on_bad_lines="skip" if config.skip_bad_lines else "error")
    if config.max_eval_posts is not None and len(posts["validation"]) > config.max_eval_posts:
        posts["validation"] = posts["validation"].select(range(config.max_eval_posts))

    with args.main_process_first(desc="tokenizer"):
        tokenizer = _tokenizer_for_run(config, args, posts, output_dir)
        model_config = build_model_config(config, tokenizer)
        tokenizer.model_max_length = model_config.max_position_embeddings
        if args.should_save:
            with staged_save(output_dir) as staging:  # a killed save leaves no half tokenizer to reuse
                tokenizer.save_pretrained(staging)
    with args.main_process_first(desc="tokenising posts"):
        train_blocks = pack_posts(posts["train"], tokenizer, config.block_size)
        eval_blocks = pack_posts(posts["validation"], tokenizer, config.block_size)
    if not config.streaming:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        if len(train_blocks) < per_step:
            raise ValueError(
                f"batch size does not fit the data: one optimisation step takes {per_step} blocks (batch size "
                f"{args.per_device_train_batch_size} x accumulation {args.gradient_accumulation_steps} x {args.world_size} "
                f"processes) but the train split packs into {len(train_blocks)} blocks of {config.block_size} tokens"
            )
    if len(eval_blocks) == 0:
        raise ValueError(
            f"the validation split ({len(posts['validation'])} posts) is shorter than one block of "
            f"{config.block_size} tokens; lower --block-size or give more validation posts"
        )

    set_seed(args.seed)  # the initial weights depend on the seed alone, so runs are reproducible
    model = PostformerForCausalLM(model_config)
    model.generation_config = posts_generation_config(tokenizer)  # saved as the folder's generation_config.json
    peak = measure_matmul_peak(compute_dtype(args))
    if args.should_save:
        print(run_summary(config, args, posts, tokenizer, model, len(train_blocks), peak))
    trainer = PostformerTrainer(
        model=model,
        args=args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        tokens_per_character=tokens_per_character(posts["validation"], tokenizer),
        peak_flops=peak,
        callbacks=[SampleGenerationCallback(tokenizer, config.sample_prompts), *callbacks],
    )
    if args.should_save:
        write_text(output_dir / "training_config.json", json.dumps(run_record(config, args), indent=2) + "\n")
        write_text(output_dir / "training_args.json", args.to_json_string() + "\n")

    if checkpoint is not None and args.should_save:
        print(f"resuming from {checkpoint} (step {checkpoint.name.rsplit('-', 1)[-1]})")
    try:
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        raise TrainingInterrupted(trainer.state.global_step) from None
    metrics = {**train_output.metrics, **final_evaluation(trainer)}
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    if args.should_save:
        model.config.use_cache = True  # Trainer turned the cache off for training; generation wants it
        trainer.save_model(str(output_dir))  # safetensors, config with auto_map, source files, generation config
        trainer.save_state()
        write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        plot_loss_curve(trainer.state.log_history, output_dir / "loss_curve.png")
        write_model_card(output_dir)  # README.md with Hub metadata, from the files written above
    return metrics


ESTIMATE_MFU = 0.4  # the share of the matmul peak that small models reach in training here (benchmarks/results)


def run_summary(config: PretrainArguments, args: PostformerTrainingArguments, posts, tokenizer, model, train_blocks,
                peak_flops: float) -> str:
    """What the run is about to do, printed before it starts: data, tokenizer, model, steps, tokens, where it
    writes, and a time estimate from the machine's measured matmul peak."""
    steps = args.max_steps if args.max_steps > 0 else None
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * config.block_size
    parameters = sum(p.numel() for p in model.parameters())
    train_posts = "streamed" if config.streaming else f"{len(posts['train']):,}"
    lines = [
        f"data: {config.data or 'the bundled posts sample'} ({train_posts} train / {len(posts['validation']):,} "
        f"validation posts{'' if config.streaming else f', {train_blocks:,} blocks of {config.block_size} tokens'})",
        f"tokenizer: {config.tokenizer or 'trained for this run'} (vocabulary {len(tokenizer):,})",
        f"model: {config.preset} preset, {parameters:,} parameters, {model.config.num_hidden_layers} layers x "
        f"{model.config.hidden_size}",
    ]
    if steps is not None:
        tokens = steps * per_step
        seconds = tokens * flops_per_token(model, config.block_size) / (ESTIMATE_MFU * peak_flops)
        duration = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
        lines.append(f"training: {steps:,} steps x {per_step:,} tokens = {tokens:,} tokens; about {duration} of "
                     f"training here (at {ESTIMATE_MFU:.0%} of the measured {peak_flops / 1e9:.0f} GFLOP/s matmul "
                     "peak), plus evaluation")
    lines.append(f"output: {args.output_dir}")
    return "\n".join(lines)


def final_evaluation(trainer: PostformerTrainer) -> dict:
    """The evaluation at the last step: the one training just logged when the last step was an evaluation
    step, else a new one (never the same evaluation twice)."""
    last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last is None or last["step"] != trainer.state.global_step:
        return trainer.evaluate()
    return {k: v for k, v in last.items() if k.startswith("eval_")}


def _tokenizer_for_run(config: PretrainArguments, args: PostformerTrainingArguments, posts, output_dir: Path):
    """--tokenizer, else the run's own (resuming), else train one on the train split and save it in the run."""
    if (output_dir / "tokenizer.json").is_file() and config.tokenizer is None:
        return AutoTokenizer.from_pretrained(output_dir)
    if config.tokenizer is not None:
        return AutoTokenizer.from_pretrained(config.tokenizer)
    return train_tokenizer(
        posts["train"]["text"] if not config.streaming else (p["text"] for p in posts["train"]),
        vocab_size=config.vocab_size,
        show_progress=not args.quiet,
    )


def plot_loss_curve(log_history: list[dict], path: Path) -> Path | None:
    """Training and validation loss against steps, as a PNG (needs matplotlib, in the `extras`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss curve (pip install 'postformer[extras]')")
        return None
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Postformer training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
