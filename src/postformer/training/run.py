"""One training run, end to end: posts -> tokenizer -> packed datasets -> PostformerTrainer -> a Hub-ready folder.

`train(TrainingConfig(...))` is what `postformer train` calls. The same code runs in one process or under
`torchrun` / `accelerate launch` (DDP, FSDP through an Accelerate config): the Trainer takes the process group
from the environment, and only the main process writes shared files.
"""

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments, set_seed

from ..data import load_posts
from ..hub_cards import write_model_card
from ..modeling import PostformerConfig, PostformerForCausalLM
from ..tokenization import config_token_ids, posts_generation_config, train_tokenizer
from .data import pack_posts, tokens_per_character
from ..saving import staged_save, write_text
from .trainer import PostformerTrainer, SampleGenerationCallback

SAMPLE_PROMPTS = ["Breaking news:", "Happy birthday to", "We are proud to announce", "Watch:"]
MODEL_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "max_position_embeddings", "position_embedding_type", "use_relative_position", "max_relative_position",
    "hidden_dropout", "attention_dropout",
)


@dataclass
class TrainingConfig:
    """Every option of a run; `postformer train` has one flag per field, and `--config FILE` sets them from
    YAML or JSON. Model fields left at None take the preset's value."""

    output_dir: str = "runs/small"
    data: str | None = None  # None: the bundled posts sample
    text_field: str = "text"
    streaming: bool = False
    tokenizer: str | None = None  # a tokenizer folder to reuse; None: train one (or reuse the run's own)
    vocab_size: int = 8192
    # model
    preset: str = "small"
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    max_position_embeddings: int | None = None
    position_embedding_type: str | None = None
    use_relative_position: bool | None = None
    max_relative_position: int | None = None
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    # optimisation (AdamW with betas 0.9/0.999 and eps 1e-8, as the design)
    block_size: int = 128
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    lr_scheduler: str = "cosine"
    max_steps: int = 300
    max_grad_norm: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    # evaluation, checkpoints, logging
    eval_steps: int = 100
    save_steps: int = 100
    save_total_limit: int | None = 2
    logging_steps: int = 10
    max_eval_posts: int | None = 300
    sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))
    seed: int = 0
    resume: bool = False
    tensorboard: bool = False
    disable_progress_bar: bool = False

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainingConfig":
        """Options from a YAML or JSON file; `overrides` (e.g. command-line flags) win."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ValueError(f"training config file {path} must hold a mapping of option names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option(s) in {path}: {unknown}; known options are {sorted(known)}")
        return cls(**{**values, **overrides})


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


def _check_output_dir(config: TrainingConfig) -> Path | None:
    """Refuse to overwrite another run; return the checkpoint to resume from."""
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output folder {output_dir} is a file")
    checkpoint = latest_checkpoint(output_dir) if output_dir.is_dir() else None
    if config.resume:
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {output_dir} to resume from")
        return checkpoint
    if (output_dir / "config.json").exists() or checkpoint is not None:
        raise FileExistsError(
            f"output folder {output_dir} already holds a model or checkpoints; nothing was overwritten. "
            "Pass --resume to continue that run, or choose another --output-dir."
        )
    return None


def build_model_config(config: TrainingConfig, tokenizer) -> PostformerConfig:
    overrides = {name: getattr(config, name) for name in MODEL_FIELDS if getattr(config, name) is not None}
    model_config = PostformerConfig.from_preset(config.preset, **overrides, **config_token_ids(tokenizer))
    if config.block_size > model_config.max_position_embeddings:
        raise ValueError(
            f"block_size {config.block_size} is longer than the model's context "
            f"(max_position_embeddings={model_config.max_position_embeddings}); lower --block-size or raise "
            "--max-position-embeddings"
        )
    return model_config


def train(config: TrainingConfig) -> dict:
    """Run training as configured; return the final metrics (also written to metrics.json)."""
    if config.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {config.precision!r}")
    for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "eval_steps", "save_steps", "logging_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    checkpoint = _check_output_dir(config)
    output_dir = Path(config.output_dir)

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        max_steps=config.max_steps,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="all",
        report_to=["tensorboard"] if config.tensorboard else "none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=config.disable_progress_bar,
        # Without an accelerator, say so: Accelerate then runs multi-CPU (gloo) data parallelism under torchrun,
        # instead of opening a process group and training each process on its own.
        use_cpu=not torch.accelerator.is_available(),
        ddp_find_unused_parameters=False,  # every parameter takes part in every step, whatever the config
    )

    posts = load_posts(config.data, text_field=config.text_field, seed=config.seed, streaming=config.streaming)
    if config.max_eval_posts is not None and len(posts["validation"]) > config.max_eval_posts:
        posts["validation"] = posts["validation"].select(range(config.max_eval_posts))

    with args.main_process_first(desc="tokenizer"):
        tokenizer = _tokenizer_for_run(config, posts, output_dir)
        model_config = build_model_config(config, tokenizer)
        tokenizer.model_max_length = model_config.max_position_embeddings
        if args.should_save:
            with staged_save(output_dir) as staging:  # a killed save leaves no half tokenizer to reuse
                tokenizer.save_pretrained(staging)
    with args.main_process_first(desc="tokenising posts"):
        train_blocks = pack_posts(posts["train"], tokenizer, config.block_size)
        eval_blocks = pack_posts(posts["validation"], tokenizer, config.block_size)
    if not config.streaming:
        per_step = config.batch_size * config.gradient_accumulation_steps * args.world_size
        if len(train_blocks) < per_step:
            raise ValueError(
                f"batch size does not fit the data: one optimisation step takes {per_step} blocks (batch size "
                f"{config.batch_size} x accumulation {config.gradient_accumulation_steps} x {args.world_size} "
                f"processes) but the train split packs into {len(train_blocks)} blocks of {config.block_size} tokens"
            )
    if len(eval_blocks) == 0:
        raise ValueError(
            f"the validation split ({len(posts['validation'])} posts) is shorter than one block of "
            f"{config.block_size} tokens; lower --block-size or give more validation posts"
        )

    set_seed(config.seed)  # the initial weights depend on the seed alone, so runs are reproducible
    model = PostformerForCausalLM(model_config)
    model.generation_config = posts_generation_config(tokenizer)  # saved as the folder's generation_config.json
    trainer = PostformerTrainer(
        model=model,
        args=args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        tokens_per_character=tokens_per_character(posts["validation"], tokenizer),
        callbacks=[SampleGenerationCallback(tokenizer, config.sample_prompts)],
    )
    if args.should_save:
        write_text(output_dir / "training_config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
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


def final_evaluation(trainer: PostformerTrainer) -> dict:
    """The evaluation at the last step: the one training just logged when the last step was an evaluation
    step, else a new one (never the same evaluation twice)."""
    last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last is None or last["step"] != trainer.state.global_step:
        return trainer.evaluate()
    return {k: v for k, v in last.items() if k.startswith("eval_")}


def _tokenizer_for_run(config: TrainingConfig, posts, output_dir: Path):
    """--tokenizer, else the run's own (resuming), else train one on the train split and save it in the run."""
    if (output_dir / "tokenizer.json").is_file() and config.tokenizer is None:
        return AutoTokenizer.from_pretrained(output_dir)
    if config.tokenizer is not None:
        return AutoTokenizer.from_pretrained(config.tokenizer)
    return train_tokenizer(
        posts["train"]["text"] if not config.streaming else (p["text"] for p in posts["train"]),
        vocab_size=config.vocab_size,
        show_progress=not config.disable_progress_bar,
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
