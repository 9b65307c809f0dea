"""The Postformer model family: configuration and models, registered with transformers' Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_postformer import PRESETS, PostformerConfig
from .modeling_postformer import (
    PostformerForCausalLM,
    PostformerForSequenceClassification,
    PostformerModel,
    PostformerPreTrainedModel,
)

AutoConfig.register("postformer", PostformerConfig, exist_ok=True)
AutoModel.register(PostformerConfig, PostformerModel, exist_ok=True)
AutoModelForCausalLM.register(PostformerConfig, PostformerForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(PostformerConfig, PostformerForSequenceClassification, exist_ok=True)

# save_pretrained copies configuration_postformer.py and modeling_postformer.py beside the weights, so
# that `trust_remote_code=True` loads the model in a process without this package.
PostformerConfig.register_for_auto_class()
PostformerModel.register_for_auto_class("AutoModel")
PostformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
PostformerForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "PRESETS",
    "PostformerConfig",
    "PostformerPreTrainedModel",
    "PostformerModel",
    "PostformerForCausalLM",
    "PostformerForSequenceClassification",
]
