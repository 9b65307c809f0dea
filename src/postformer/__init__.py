"""Postformer: a Hugging Face-compatible transformer language model for social-media posts.

Importing the package registers the model family with transformers' Auto classes.
"""

from .modeling import (
    PRESETS,
    PostformerConfig,
    PostformerForCausalLM,
    PostformerForSequenceClassification,
    PostformerModel,
    PostformerPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "PostformerConfig",
    "PostformerPreTrainedModel",
    "PostformerModel",
    "PostformerForCausalLM",
    "PostformerForSequenceClassification",
    "__version__",
]
