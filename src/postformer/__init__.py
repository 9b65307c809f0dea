"""Postformer: a Hugging Face-compatible transformer language model for social-media posts.

Importing the package registers the model family with transformers' Auto classes.
"""

import logging

# transformers imports torchao (the `extras` int8 backend) whenever it is installed; on a CPU-only machine
# torchao then logs that its CUDA kernels cannot load, and torch warns about torchao's enum registrations:
# harmless, and noise in every command's output.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from .modeling import (  # noqa: E402
    PRESETS,
    PostformerConfig,
    PostformerForCausalLM,
    PostformerForQuestionAnswering,
    PostformerForSequenceClassification,
    PostformerForTokenClassification,
    PostformerModel,
    PostformerPreTrainedModel,
)

__version__ = "0.4.0"

__all__ = [
    "PRESETS",
    "PostformerConfig",
    "PostformerPreTrainedModel",
    "PostformerModel",
    "PostformerForCausalLM",
    "PostformerForSequenceClassification",
    "PostformerForTokenClassification",
    "PostformerForQuestionAnswering",
    "__version__",
]
