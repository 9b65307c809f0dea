"""The Postformer model family: configuration and models, registered with transformers' Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_postformer import PRESETS, PostformerConfig
from .modeling_postformer import (
    PostformerForCausalLM,
    PostformerForQuestionAnswering,
    PostformerForSequenceClassification,
    PostformerForTokenClassification,
    PostformerModel,
    PostformerPreTrainedModel,
)

AutoConfig.register("postformer", PostformerConfig, exist_ok=True)
AutoModel.register(PostformerConfig, PostformerModel, exist_ok=True)
AutoModelForCausalLM.register(PostformerConfig, PostformerForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(PostformerConfig, PostformerForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(PostformerConfig, PostformerForTokenClassification, exist_ok=True)
AutoModelForQuestionAnswering.register(PostformerConfig, PostformerForQuestionAnswering, exist_ok=True)

# save_pretrained copies configuration_postformer.py and modeling_postformer.py beside the weights, so
# that `trust_remote_code=True` loads the model in a process without this package.
PostformerConfig.register_for_auto_class()
PostformerModel.register_for_auto_class("AutoModel")
PostformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
PostformerForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
PostformerForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
PostformerForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")

__all__ = [
    "PRESETS",
    "PostformerConfig",
    "PostformerPreTrainedModel",
    "PostformerModel",
    "PostformerForCausalLM",
    "PostformerForSequenceClassification",
    "PostformerForTokenClassification",
    "PostformerForQuestionAnswering",
]
