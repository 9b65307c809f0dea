"""Postformer configuration.

This file is copied beside every saved model so that
`AutoConfig.from_pretrained(folder, trust_remote_code=True)` works without the `postformer` package:
it may import from `transformers` and the standard library only.
"""

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

POSITION_EMBEDDING_TYPES = ("rope", "sinusoidal", "learned", "none")
# relu2 is ReLU squared (x -> max(x, 0)^2), from the small-model speed-run literature
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "relu2", "silu")
# what PostformerForSequenceClassification's head reads
CLASSIFIER_POOLINGS = ("last", "mean", "weighted_mean", "mean_last")
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' names, as in Qwen2 and Gemma configs

# The original design's `TransformerConfig` names, and the standard names they map to.
DESIGN_NAMES = {
    "d_model": "hidden_size",
    "d_ff": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "max_seq_length": "max_position_embeddings",
    "dropout": "hidden_dropout",
}

# Small / medium / large reproduce the design's table (1.2M / 4.8M / 12.3M parameters at vocab 8192). The
# class defaults are the design's 12 x 768 model with rotary positions alone, which every attention kernel runs;
# "design" is the design's complete default, which adds Shaw relative positions (clipped at 64) and so runs on the
# eager kernel only. "base" is the class defaults.
PRESETS = {
    "small": dict(vocab_size=8192, hidden_size=112, intermediate_size=448, num_hidden_layers=2,
                  num_attention_heads=4),
    "medium": dict(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=3,
                   num_attention_heads=4),
    "large": dict(vocab_size=8192, hidden_size=384, intermediate_size=1536, num_hidden_layers=5,
                  num_attention_heads=6),
    "base": dict(),
    "design": dict(use_relative_position=True, max_relative_position=64),
}

AUTO_MAP = {
    "AutoConfig": "configuration_postformer.PostformerConfig",
    "AutoModel": "modeling_postformer.PostformerModel",
    "AutoModelForCausalLM": "modeling_postformer.PostformerForCausalLM",
    "AutoModelForSequenceClassification": "modeling_postformer.PostformerForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_postformer.PostformerForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_postformer.PostformerForQuestionAnswering",
}


class PostformerConfig(PretrainedConfig):
    r"""Configuration of a Postformer decoder-only language model.

    Defaults are the original design's size (vocab 50000, 512 positions, hidden 768, feed-forward 3072, 12 layers
    of 12 heads, dropout 0.1) with rotary positions alone: such a model runs on every attention kernel (eager,
    sdpa, flex, flash where installed). The design's complete default also adds Shaw relative positions clipped
    at 64: `PostformerConfig.from_preset("design")`. Presets "small", "medium" and "large" are the design's
    table at vocab 8192 (`from_preset`).

    Positions: `position_embedding_type` picks the absolute scheme ("rope" rotates queries and keys,
    "sinusoidal" and "learned" are added to the token embeddings, "none" uses no absolute position).
    Rotary positions take transformers' standard `rope_parameters` (`{"rope_type": "default", "rope_theta":
    10000.0}`; "linear", "dynamic", "yarn", "longrope" or "llama3" scaling extend a trained model's context) and
    have no length limit of their own; sinusoidal and learned tables end at `max_position_embeddings`.
    `use_relative_position` adds Shaw et al. (2018) relative embeddings of the clipped distance j - i on the key
    and the value side, alone or with any absolute scheme. Relative positions need the attention probabilities,
    so they run on the "eager" kernel only.

    Options from the small-model speed-run literature, all off by default (benchmarks/bench_recipe.py measures
    them): `qk_norm` (RMSNorm of each head's queries and keys before rotary positions, as Qwen3 and OLMo-2),
    `hidden_act="relu2"` (ReLU squared in the feed-forward), `zero_init_output_projections` (each residual
    branch's output projection starts at zero, so every block starts as the identity), and
    `tie_word_embeddings=False` (an LM head of its own). No stock architecture has QK-norm with this block, so a
    model with it cannot be exported to one.

    Sliding-window attention, as Mistral, Qwen2 and Gemma: `sliding_window=W` lets each token attend to itself and
    the W - 1 tokens before it, and the cache of such a layer keeps only that window. `layer_types` (one entry per
    layer, "full_attention" or "sliding_attention") mixes the two; with `sliding_window` set and no `layer_types`,
    every layer slides. Masks come from transformers' masking utilities, so every kernel (eager, sdpa, flex, flash)
    and packed rows (positions restarting per sequence) apply the window within each sequence.

    `classifier_pooling` is what the sequence-classification head reads: "last" (the last real token's hidden
    state, as Llama's head), "mean" (the mean over the post's real tokens, as ModernBERT's "mean"), "weighted_mean"
    (the mean with the i-th real token weighted by i: later tokens have read more of the post, SGPT's
    position-weighted mean for decoders) or "mean_last" (the mean plus the last real token's state: the one token
    that has read the whole post, beside every token's view).

    The design's names are accepted as keyword arguments and readable as attributes (`attribute_map`):
    `d_model` (hidden_size), `d_ff` (intermediate_size), `num_layers` (num_hidden_layers), `num_heads`
    (num_attention_heads), `max_seq_length` (max_position_embeddings), `dropout` (hidden_dropout). Arguments
    only: `use_rope` (True: "rope", False: "sinusoidal"), `use_flash_attention` (True: attn_implementation
    "sdpa", False: "eager") and `use_group_query_attention` (True: num_key_value_heads = num_attention_heads //
    4 unless given).
    """

    model_type = "postformer"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = dict(DESIGN_NAMES)
    # Tensor parallelism (`from_pretrained(..., tp_plan="auto")`): queries, keys, values and the MLP's
    # up-projection are split by output rows (whole heads per rank), their output projections by input columns,
    # so each layer needs one all-reduce per residual branch, as in Llama.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 50000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    position_embedding_type: str = "rope"
    rope_parameters: dict | None = None
    use_relative_position: bool = False
    max_relative_position: int = 64
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    tie_word_embeddings: bool = True
    qk_norm: bool = False
    zero_init_output_projections: bool = False
    classifier_pooling: str = "last"
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    sep_token_id: int | None = 3

    def __post_init__(self, **kwargs):
        for design_name, name in DESIGN_NAMES.items():
            if design_name in kwargs:
                setattr(self, name, kwargs.pop(design_name))
        if "use_rope" in kwargs:
            self.position_embedding_type = "rope" if kwargs.pop("use_rope") else "sinusoidal"
        if "use_flash_attention" in kwargs:
            kwargs.setdefault("attn_implementation", "sdpa" if kwargs.pop("use_flash_attention") else "eager")
        if kwargs.pop("use_group_query_attention", False) and self.num_key_value_heads is None:
            self.num_key_value_heads = max(1, self.num_attention_heads // 4)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.layer_types is None and isinstance(self.num_hidden_layers, int):
            kind = "full_attention" if self.sliding_window is None else "sliding_attention"
            self.layer_types = [kind] * self.num_hidden_layers
        elif isinstance(self.layer_types, tuple):
            self.layer_types = list(self.layer_types)
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__post_init__(**kwargs)
        self._check_values()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PostformerConfig":
        """A config from the design's table ("small", "medium", "large"), the class defaults ("base") or the
        design's complete default with Shaw relative positions ("design")."""
        if name not in PRESETS:
            raise ValueError(f"preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def _check_values(self):
        """Raise ValueError naming the field and the rule it breaks."""
        ints = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "max_relative_position")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}"
            )
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(
                f"head dimension hidden_size / num_attention_heads = {self.head_dim} must be even with "
                "position_embedding_type='rope' (rotary embeddings rotate pairs of dimensions)"
            )
        if self.position_embedding_type == "rope":
            rope_type = self.rope_parameters.get("rope_type")
            if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
                raise ValueError(
                    f"rope_parameters['rope_type'] must be 'default' or one of {sorted(ROPE_INIT_FUNCTIONS)}, "
                    f"got {rope_type!r}"
                )
            theta = self.rope_parameters.get("rope_theta")
            if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
                raise ValueError(f"rope_parameters['rope_theta'] must be a positive number, got {theta!r}")
            self.validate_rope()
        if not isinstance(self.use_relative_position, bool):
            raise ValueError(f"use_relative_position must be True or False, got {self.use_relative_position!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {', '.join(ACTIVATIONS)}; got {self.hidden_act!r}")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {', '.join(CLASSIFIER_POOLINGS)}, "
                             f"got {self.classifier_pooling!r}")
        for name in ("qk_norm", "zero_init_output_projections"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        window = self.sliding_window
        # A window of 1 (each token attends to itself only) is refused too: transformers' windowed cache layers
        # keep every token then (they slice the last window - 1 = 0 tokens as [-0:]), so cached decoding would differ.
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 2):
            raise ValueError(f"sliding_window must be None or an integer >= 2, got {window!r}")
        kinds = self.layer_types
        if (not isinstance(kinds, list) or len(kinds) != self.num_hidden_layers
                or any(kind not in LAYER_TYPES for kind in kinds)):
            raise ValueError(
                f"layer_types must list one of {LAYER_TYPES} per layer (num_hidden_layers={self.num_hidden_layers}), "
                f"got {kinds!r}"
            )
        if window is None and "sliding_attention" in kinds:
            raise ValueError("layer_types has 'sliding_attention' layers but sliding_window is None; set sliding_window")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ValueError(f"{name} must be None or an id in [0, vocab_size={self.vocab_size}), got {value!r}")


__all__ = ["PostformerConfig"]
