"""Training: `datasets` pipelines, `PostformerTrainer` (a transformers Trainer) and the end-to-end run."""

from .arguments import PostformerTrainingArguments, PretrainArguments, training_arguments
from .data import pack_posts, tokens_per_character
from .run import latest_checkpoint, plot_loss_curve, train
from .trainer import NonFiniteLossError, PostformerTrainer, SampleGenerationCallback, flops_per_token, measure_matmul_peak

__all__ = [
    "PostformerTrainingArguments", "PretrainArguments", "training_arguments",
    "pack_posts", "tokens_per_character", "train", "latest_checkpoint", "plot_loss_curve",
    "PostformerTrainer", "SampleGenerationCallback", "NonFiniteLossError", "flops_per_token", "measure_matmul_peak",
]
