"""The arguments of Postformer's training commands, parsed as transformers' example scripts parse theirs.

`PostformerTrainingArguments` is transformers' `TrainingArguments` (a dataclass subclass, as TRL's `SFTConfig`),
so every Trainer option reaches users as it is (`--optim`, `--report_to`, `--gradient_checkpointing`,
`--torch_compile`, ...), plus the few that `PostformerTrainer` adds. Each command pairs it with a small dataclass
of its own job's options (`PretrainArguments` for `train`, `FinetuneArguments` for `finetune`,
`ClassifierArguments` for `classify-train`), and `HfArgumentParser` turns both into flags with help strings and
choices; `--config FILE` (YAML or JSON) gives the same options from a file, flags winning.

Earlier flag names keep working as aliases (`--batch-size`, `--lr-scheduler`, `--epochs`,
`--disable-progress-bar`), and `--precision fp32|bf16|fp16` and `--tensorboard` are shorthands, so README
commands and saved YAML configs still run.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType


def _help(text: str, *aliases: str, **more) -> dict:
    return {"help": text, **({"aliases": list(aliases)} if aliases else {}), **more}


@dataclass
class PostformerTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for small posts models on a CPU, and PostformerTrainer's own options.

    Everything `TrainingArguments` takes is accepted; the fields redefined here only change a default or add an
    earlier flag name as an alias. Commands set their own defaults on top (`COMMAND_DEFAULTS`).
    """

    # PostformerTrainer's own options
    quiet: bool = field(default=False, metadata=_help(
        "no progress bars: transformers' (training, loading, saving), datasets' and the tokenizer trainer's",
        "--disable-progress-bar", "--disable_progress_bar"))
    precision: Literal["fp32", "bf16", "fp16"] | None = field(default=None, metadata=_help(
        "training precision: fp32, or mixed precision bf16 / fp16 (a shorthand for --bf16 / --fp16)"))
    tensorboard: bool = field(default=False, metadata=_help("log to TensorBoard (a shorthand for --report_to "
                                                             "tensorboard; needs the tensorboard package)"))
    optimizer: Literal["adamw", "muon"] = field(default="adamw", metadata=_help(
        "adamw: Trainer's optimizer (--optim) for every parameter; muon: torch.optim.Muon for the hidden weight "
        "matrices (the 2-D weights inside the blocks) and --optim for embeddings, heads, norms and biases"))
    muon_learning_rate: float = field(default=0.02, metadata=_help(
        "peak learning rate of Muon's matrices (--learning_rate stays that of the AdamW part)"))
    muon_momentum: float = field(default=0.95, metadata=_help("Muon's momentum (Nesterov)"))
    decay_fraction: float = field(default=0.2, metadata=_help(
        "with --lr_scheduler_type warmup_stable_decay: the share of the steps over which the learning rate decays "
        "(cosine) after the stable phase, unless --lr_scheduler_kwargs gives num_decay_steps"))
    layer_lr_decay: float = field(default=1.0, metadata=_help(
        "layer-wise learning-rate decay: the head (and final norm) trains at --learning_rate, each block below at "
        "this factor times the one above, the embeddings last; 1: one rate for all, 0: only the head trains"))
    # TrainingArguments fields with other defaults or an earlier flag name
    seed: int = field(default=0, metadata=_help(
        "random seed of the run: initial weights, data order, dropout (and --data_seed unless given)"))
    per_device_train_batch_size: int = field(default=8, metadata=_help(
        "sequences (blocks or posts) per step and process", "--batch-size", "--batch_size"))
    per_device_eval_batch_size: int | None = field(default=None, metadata=_help(
        "sequences per evaluation batch (default: the training batch size)"))
    num_train_epochs: float = field(default=3.0, metadata=_help(
        "passes over the train split, when --max_steps is not given", "--epochs"))
    lr_scheduler_type: SchedulerType | str = field(default="linear", metadata=_help(
        "learning-rate schedule after warm-up", "--lr-scheduler", "--lr_scheduler"))
    logging_steps: float = field(default=10, metadata=_help("log every N steps"))
    logging_nan_inf_filter: bool = field(default=False, metadata=_help(
        "drop non-finite losses from the logs (off: PostformerTrainer stops on a non-finite loss instead)"))
    include_num_input_tokens_seen: str = field(default="all", metadata=_help(
        "count the tokens seen: all, non_padding or no (tokens/s and MFU in the logs need it)"))
    ddp_find_unused_parameters: bool | None = field(default=False, metadata=_help(
        "every parameter takes part in every step, whatever the config"))
    use_cpu: bool = field(default=not torch.accelerator.is_available(), metadata=_help(
        "train on the CPU (the default without an accelerator: Accelerate then runs multi-CPU data parallelism "
        "under torchrun instead of one job per process)"))

    def __post_init__(self):
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon, got {self.optimizer!r}")
        if isinstance(self.decay_fraction, bool) or not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction!r}")
        if isinstance(self.layer_lr_decay, bool) or not 0 <= self.layer_lr_decay <= 1:
            raise ValueError(f"layer_lr_decay must be between 0 and 1, got {self.layer_lr_decay!r}")
        if self.layer_lr_decay != 1 and self.optimizer == "muon":
            raise ValueError("layer_lr_decay works with --optimizer adamw only")
        if self.precision not in (None, "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.precision is not None:
            self.bf16, self.fp16 = self.precision == "bf16", self.precision == "fp16"
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.quiet:
            self.disable_tqdm = True
        if self.tensorboard and self.report_to in (None, "none", [], ["none"]):
            self.report_to = ["tensorboard"]
        if self.data_seed is None:
            self.data_seed = self.seed
        super().__post_init__()


# ----------------------------------------------------------------------------------------------------------------
# The jobs' own options


@dataclass
class PretrainArguments:
    """`postformer train`: the data, the tokenizer and the model to build. Model fields left unset take the
    preset's value."""

    data: str | None = field(default=None, metadata=_help(
        "posts: a .jsonl/.json/.csv/.tsv/.txt file, a folder of train/validation/test files or a datasets folder "
        "(default: the bundled sample)"))
    text_field: str = field(default="text", metadata=_help("column holding the post text"))
    skip_bad_lines: bool = field(default=False, metadata=_help(
        "skip malformed JSON lines and CSV rows (and posts that are not text) with a warning giving their count, "
        "instead of stopping at the first with an error naming its line"))
    streaming: bool = field(default=False, metadata=_help(
        "read the train split as it is consumed, for corpora that do not fit in memory"))
    tokenizer: str | None = field(default=None, metadata=_help(
        "a tokenizer folder to reuse (default: train one on the train split, or reuse the run's own)"))
    vocab_size: int = field(default=8192, metadata=_help("vocabulary of the tokenizer trained for the run"))
    preset: Literal["small", "medium", "large", "base", "design"] = field(default="small", metadata=_help(
        "model size: small / medium / large are the design's table (1.2M / 4.5M / 12M parameters at vocab 8192); "
        "base is 12 x 768; design adds Shaw relative positions to base"))
    hidden_size: int | None = field(default=None, metadata=_help("width of the model (default: the preset's)"))
    intermediate_size: int | None = field(default=None, metadata=_help("feed-forward width (default: the preset's)"))
    num_hidden_layers: int | None = field(default=None, metadata=_help("layers (default: the preset's)"))
    num_attention_heads: int | None = field(default=None, metadata=_help("attention heads (default: the preset's)"))
    num_key_value_heads: int | None = field(default=None, metadata=_help(
        "key/value heads: fewer than the attention heads is grouped-query attention (default: as many)"))
    max_position_embeddings: int | None = field(default=None, metadata=_help(
        "context length in tokens (default: the preset's, 512)"))
    position_embedding_type: Literal["rope", "sinusoidal", "learned", "none"] | None = field(
        default=None, metadata=_help("absolute positions (default: rope)"))
    use_relative_position: bool | None = field(default=None, metadata=_help(
        "add Shaw relative positions (eager attention only; default: the preset's)"))
    max_relative_position: int | None = field(default=None, metadata=_help("clipping distance of relative positions"))
    sliding_window: int | None = field(default=None, metadata=_help(
        "sliding-window attention: each token attends to the last N tokens (itself included), and the generation "
        "cache keeps only those (default: off, every earlier token)"))
    layer_types: list[str] | None = field(default=None, metadata=_help(
        "one per layer, full_attention or sliding_attention, to mix them (default: every layer sliding with "
        "--sliding_window, else full)"))
    hidden_dropout: float | None = field(default=0.0, metadata=_help(
        "dropout on embeddings and residual branches (default 0: posts are seen a few times in a run, and dropout "
        "only slowed learning in benchmarks/bench_recipe.py)"))
    attention_dropout: float | None = field(default=0.0, metadata=_help("dropout on attention probabilities"))
    hidden_act: Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "relu2", "silu"] | None = field(
        default=None, metadata=_help("feed-forward activation (default: gelu; relu2 is ReLU squared)"))
    qk_norm: bool | None = field(default=None, metadata=_help(
        "RMS-normalise each head's queries and keys (default: off; not exportable to a stock architecture)"))
    zero_init_output_projections: bool | None = field(default=None, metadata=_help(
        "start each block's output projections at zero, so every block starts as the identity (default: off)"))
    tie_word_embeddings: bool | None = field(default=None, metadata=_help(
        "share the token embedding with the LM head (default: on)"))
    block_size: int = field(default=128, metadata=_help("tokens per packed training block"))
    max_eval_posts: int | None = field(default=300, metadata=_help(
        "evaluate on at most this many validation posts (default: 300)"))
    sample_prompts: list[str] = field(
        default_factory=lambda: ["Breaking news:", "Happy birthday to", "We are proud to announce", "Watch:"],
        metadata=_help("prompts continued greedily at each evaluation (written to samples.jsonl); none: no samples",
                       nargs="*"))
    resume: bool = field(default=False, metadata=_help(
        "continue the run in --output_dir from its newest complete checkpoint"))


# LoRA's default targets: every Linear layer inside the blocks (not the LM head, which is tied to the embeddings).
DEFAULT_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


@dataclass
class FinetuneArguments:
    """`postformer finetune`: the model to start from, the posts, and LoRA."""

    model: str = field(default=None, metadata=_help("folder (or Hub repo id) holding the model and its tokenizer",
                                                    required=True))
    data: str | None = field(default=None, metadata=_help(
        "posts: a .jsonl/.csv/.txt file, a folder of split files or a datasets folder (default: the bundled sample)"))
    text_field: str = field(default="text", metadata=_help("column holding the post text"))
    skip_bad_lines: bool = field(default=False, metadata=PretrainArguments.__dataclass_fields__["skip_bad_lines"].metadata)
    base_model: str | None = field(default=None, metadata=_help(
        "the base model's Hub repo id, for the model card's metadata and the adapter config (default: the --model "
        "folder, named in the card's text only)"))
    lora: bool = field(default=False, metadata=_help("train LoRA adapters instead of every weight"))
    quantize: Literal["int8", "nf4", "4bit"] | None = field(default=None, metadata=_help(
        "with --lora: load the frozen base model quantised and train the adapters on it (QLoRA); int8: torchao "
        "weight-only int8 of the blocks' Linear layers (CPU); nf4 / 4bit: bitsandbytes 4-bit NF4 (GPU-first, "
        "needs bitsandbytes; untested by postformer). The merged model is quantised the same way"))
    lora_r: int = field(default=8, metadata=_help("LoRA rank"))
    lora_alpha: int = field(default=16, metadata=_help("LoRA scale numerator: scale = alpha / r"))
    lora_dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA input"))
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES),
        metadata=_help("Linear modules to adapt (default: every Linear layer of the blocks)"))
    block_size: int = field(default=128, metadata=_help("tokens per packed block"))
    max_eval_posts: int | None = field(default=300, metadata=_help("evaluate on at most this many validation posts"))


@dataclass
class ClassifierArguments:
    """`postformer classify-train`: the language model to start from and the labelled posts."""

    model: str = field(default=None, metadata=_help(
        "language model folder (written by `postformer train`) or Hub repo id", required=True))
    data: str = field(default=None, metadata=_help(
        "labelled posts: a .jsonl/.csv/.tsv file, a folder of train/validation/test files or a datasets folder",
        required=True))
    text_field: str = field(default="text", metadata=_help("column holding the post"))
    label_field: str = field(default="label", metadata=_help("column holding the label"))
    skip_bad_lines: bool = field(default=False, metadata=PretrainArguments.__dataclass_fields__["skip_bad_lines"].metadata)
    validation_fraction: float = field(default=0.1, metadata=_help(
        "share of train held out (stratified by label) when the data has no validation split"))
    max_length: int | None = field(default=None, metadata=_help(
        "tokens kept of a post, longer ones cut at the end (default: the model's context)"))
    pooling: Literal["mean_last", "mean", "last", "weighted_mean"] = field(default="mean_last", metadata=_help(
        "what the head reads: the mean of the post's token states plus its last token's state, the mean alone, "
        "the last token alone, or the mean with the i-th token weighted by i"))
    class_weighting: bool = field(default=True, metadata=_help(
        "weight each label's loss by n_posts / (n_labels x its count in train), so rare labels count as much"))
    dropout: float | None = field(default=None, metadata=_help(
        "hidden and attention dropout while fine-tuning (default: the language model's, which `postformer train` "
        "sets to 0)"))


MODEL_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "max_position_embeddings", "position_embedding_type", "use_relative_position", "max_relative_position",
    "sliding_window", "layer_types",
    "hidden_dropout", "attention_dropout", "hidden_act", "qk_norm", "zero_init_output_projections",
    "tie_word_embeddings",
)


# Per command: TrainingArguments defaults that differ from PostformerTrainingArguments' own.
COMMAND_DEFAULTS = {
    "train": dict(
        # The recipe benchmarks/bench_recipe.py found best at the main job's 2-minute budget (results/recipe.md):
        # Muon for the hidden matrices, warm-up/stable/decay, no dropout (PretrainArguments); 700 steps.
        output_dir="runs/small", per_device_train_batch_size=16, learning_rate=2e-3, weight_decay=0.1,
        optimizer="muon", warmup_steps=30, lr_scheduler_type="warmup_stable_decay", max_steps=700,
        eval_strategy="steps", eval_steps=350, save_strategy="steps", save_steps=350, save_total_limit=2,
    ),
    # run_clm's defaults, except the learning rate: None is 2e-4 with LoRA, 5e-5 for a full fine-tune
    "finetune": dict(num_train_epochs=1.0, learning_rate=None, weight_decay=0.0, eval_strategy="no",
                     save_strategy="no"),
    # benchmarks/bench_classify.py's recipe (results/classify.md; with the job's mean pooling and class weighting):
    # batches of posts of similar length (posts run from a few tokens to the whole context: random batches are
    # mostly padding, 4x the time for the same scores), evaluated each epoch, warm-up over the first 10% of steps.
    "classify-train": dict(num_train_epochs=3.0, learning_rate=3e-4, per_device_train_batch_size=16,
                           weight_decay=0.01, warmup_steps=0.1, train_sampling_strategy="group_by_length",
                           eval_strategy="epoch", save_strategy="no", logging_strategy="epoch"),
}


# The trainer options recorded beside the job's in training_config.json (which the model card's hyper-parameter
# table shows); training_args.json holds all of them.
RECORDED_TRAINING_OPTIONS = (
    "output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay",
    "warmup_steps", "lr_scheduler_type", "max_steps", "num_train_epochs", "max_grad_norm", "optim", "bf16", "fp16",
    "seed",
)


def run_record(job, args: PostformerTrainingArguments) -> dict:
    """What training_config.json records: the job's options and the main trainer options."""
    record = dataclasses.asdict(job)
    for name in RECORDED_TRAINING_OPTIONS:
        value = getattr(args, name)
        record[name] = value.value if hasattr(value, "value") else value  # enums as their names
    return record


# Earlier option names (flags and config keys before 0.2), as Python keyword arguments.
EARLIER_NAMES = {"batch_size": "per_device_train_batch_size", "lr_scheduler": "lr_scheduler_type",
                 "epochs": "num_train_epochs", "disable_progress_bar": "quiet", "warmup_fraction": "warmup_steps"}


def training_arguments(command: str, **overrides) -> PostformerTrainingArguments:
    """`PostformerTrainingArguments` with `command`'s defaults (see COMMAND_DEFAULTS), then `overrides`: what the
    command line builds, for Python callers and tests."""
    return PostformerTrainingArguments(**{**COMMAND_DEFAULTS[command], **overrides})


def command_arguments(command: str, **options) -> tuple:
    """The job's arguments and the training arguments of `command` from one set of options (any field of either,
    earlier names included), as the command line splits them: `train(*command_arguments("train", ...))`."""
    options = {EARLIER_NAMES.get(name, name): value for name, value in options.items()}
    job_class = JOB_ARGUMENTS[command]
    job_names = {f.name for f in dataclasses.fields(job_class)}
    job = job_class(**{k: v for k, v in options.items() if k in job_names})
    return job, training_arguments(command, **{k: v for k, v in options.items() if k not in job_names})


# ----------------------------------------------------------------------------------------------------------------
# Parsing

JOB_ARGUMENTS = {"train": PretrainArguments, "finetune": FinetuneArguments, "classify-train": ClassifierArguments}


def add_config_flag(parser) -> None:
    """--config FILE (read by `config_file_arguments` before parsing) and the list flags that may be empty."""
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of options (the same names as the flags, "
                        "with underscores); flags given on the command line win")
    for action in parser._actions:
        if action.dest == "sample_prompts":
            action.nargs = "*"  # no prompts: no samples


def dataclasses_from_namespace(command: str, namespace) -> tuple:
    """The job's arguments and the training arguments from a parsed namespace."""
    values = vars(namespace)
    built = []
    for kind in (JOB_ARGUMENTS[command], PostformerTrainingArguments):
        names = {f.name for f in dataclasses.fields(kind) if f.init}
        built.append(kind(**{name: values[name] for name in names if name in values}))
    return tuple(built)


def config_file_arguments(path: str | Path, parser) -> list[str]:
    """The options of a YAML or JSON file as command-line tokens, to be parsed before the real flags (which
    then win); type errors are then reported by the parser, as for flags. Raises FileNotFoundError or
    ValueError (unreadable file, not a mapping, unknown option) in one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"--config {path} is not valid JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError: its message spans lines; keep the problem and the place
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"--config {path} is not valid YAML{where}: {problem}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of option names to values, "
                         f"got {type(values).__name__}")
    known = {option.lstrip("-") for option in parser._option_string_actions}
    unknown = sorted(str(key) for key in values if str(key) not in known or str(key) == "config")
    if unknown:
        raise ValueError(f"unknown option(s) in --config {path}: {unknown}; the options are those of --help")
    tokens = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            tokens += [f"--{key}", *map(str, value)]
        else:
            tokens += [f"--{key}", str(value)]
    return tokens


__all__ = ["PostformerTrainingArguments", "PretrainArguments", "FinetuneArguments", "ClassifierArguments", "MODEL_FIELDS", "COMMAND_DEFAULTS",
           "run_record", "training_arguments", "command_arguments", "add_config_flag", "dataclasses_from_namespace",
           "config_file_arguments"]
