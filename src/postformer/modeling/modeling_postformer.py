"""Postformer: a decoder-only transformer language model for social-media posts.

Read top to bottom: positions (rotary, sinusoidal, learned, Shaw relative), attention, feed-forward,
the pre-norm block, the models and heads, and last the loading of Postformer 0.1 checkpoints. It follows
transformers' Llama implementation (naming, cache, attention-kernel interface, output capture, parallelism
plans) so that every tool of the Hugging Face stack works on it.

This file is copied beside every saved model, so that `AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` works without the `postformer` package: it imports from `torch`,
`transformers` and its siblings `configuration_postformer` and `generation_postformer` (the lean decoding loop
behind `PostformerForCausalLM.generate`) only.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Split, WeightConverter
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import (
    GenericForQuestionAnswering,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_postformer import PostformerConfig
from .generation_postformer import DECODING_PATHS, lean_decoding_loop

# ----------------------------------------------------------------------------------------------------------------
# Positions


class PostformerRotaryEmbedding(nn.Module):
    """RoPE (Su et al.): cos/sin of angles proportional to position, which rotate query and key pairs.

    The frequencies come from transformers' rope utilities, so `config.rope_parameters` selects the standard
    scalings (linear, dynamic, yarn, longrope, llama3) that stretch a trained model's context, exactly as in Llama.
    Angles are computed from `position_ids`, so there is no length limit and packed rows (positions restarting
    per sequence) rotate each sequence from 0.
    """

    def __init__(self, config: PostformerConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: PostformerConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Unscaled RoPE: inverse frequencies theta^(-2i/d); the attention scaling factor is 1."""
        dim = config.head_dim
        base = config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update  # dynamic and longrope scaling recompute inv_freq for long inputs
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def apply_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, seq, head_dim) states by their positions' angles (cos/sin: (batch, seq, head_dim))."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return states * cos + rotate_half(states) * sin


class PostformerSinusoidalEmbedding(nn.Module):
    """The fixed sin/cos position table of Vaswani et al., added to the token embeddings."""

    def __init__(self, config: PostformerConfig):
        super().__init__()
        self.config = config
        self.table = nn.Buffer(self.compute_table(config), persistent=False)

    @staticmethod
    def compute_table(config: PostformerConfig) -> torch.Tensor:
        position = torch.arange(config.max_position_embeddings, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, config.hidden_size, 2).float() * (-math.log(10000.0) / config.hidden_size))
        table = torch.zeros(config.max_position_embeddings, config.hidden_size)
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)[:, : config.hidden_size // 2]
        return table

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]


class PostformerRelativePositions(nn.Module):
    """Shaw et al. (2018): learned embeddings of the clipped distance j - i, on the key and the value side.

    Rather than materialising a (query, key, head_dim) tensor, scores are taken against the 2R+1 distance
    embeddings and gathered per (i, j); on the value side the probabilities are summed per distance bucket
    and multiplied by the value embeddings. Shared by the heads of a layer, as in the paper.
    """

    def __init__(self, config: PostformerConfig):
        super().__init__()
        self.max_distance = config.max_relative_position
        self.key_embeddings = nn.Embedding(2 * self.max_distance + 1, config.head_dim)
        self.value_embeddings = nn.Embedding(2 * self.max_distance + 1, config.head_dim)

    def buckets(self, query_positions: torch.Tensor, key_length: int, key_offset: int = 0) -> torch.Tensor:
        """(q, k) indices of the clipped distance j - i, from 0 (j - i <= -R) to 2R (j - i >= R). Key j sits at
        index key_offset + j (a sliding-window cache has dropped the keys before key_offset)."""
        key_positions = torch.arange(key_length, device=query_positions.device) + key_offset
        distance = key_positions[None, :] - query_positions[:, None]
        return distance.clamp(-self.max_distance, self.max_distance) + self.max_distance

    def key_scores(self, query: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """q_i . a^K_{ij} for every (i, j): (batch, heads, q, k)."""
        per_bucket = torch.matmul(query, self.key_embeddings.weight.to(query.dtype).t())  # (b, h, q, 2R+1)
        return per_bucket.gather(-1, buckets.expand(*query.shape[:2], *buckets.shape))

    def value_output(self, probs: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """sum_j p_ij a^V_{ij}: (batch, heads, q, head_dim)."""
        per_bucket = probs.new_zeros(*probs.shape[:-1], self.value_embeddings.num_embeddings)
        per_bucket.scatter_add_(-1, buckets.expand_as(probs), probs)
        return torch.matmul(per_bucket, self.value_embeddings.weight.to(probs.dtype))


# ----------------------------------------------------------------------------------------------------------------
# Attention


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    query_positions: torch.Tensor | None = None,
    key_offset: int = 0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, with Shaw relative positions when the layer has them (other kernels cannot). A sliding
    window is in `attention_mask`."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    relative = module.relative_positions

    scores = torch.matmul(query, key.transpose(2, 3))
    if relative is not None:
        buckets = relative.buckets(query_positions, key.shape[-2], key_offset)
        scores = scores + relative.key_scores(query, buckets)
    scores = scores * scaling
    if attention_mask is not None:
        scores = scores + attention_mask

    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value)
    if relative is not None:
        output = output + relative.value_output(probs, buckets)
    return output.transpose(1, 2).contiguous(), probs


class PostformerAttention(nn.Module):
    """Multi-head (or grouped-query, when num_key_value_heads < num_attention_heads) causal self-attention, over
    every earlier token or, in a "sliding_attention" layer, over the last `config.sliding_window` tokens.

    Queries, keys and values have a projection each, as in Llama: tensor parallelism shards each by heads, and
    serving engines recognise and fuse them. (Postformer 0.1 saved one fused `qkv_proj`; such folders are split
    into the three at load time, see the conversion mapping at the end of this file.)
    """

    def __init__(self, config: PostformerConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.layer_type = config.layer_types[layer_idx]
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else None

        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size)
        self.o_proj.is_residual_output = True  # scaled at init, see _init_weights
        # QK-norm: each head's queries and keys RMS-normalised (with a learned scale) before rotary positions,
        # which bounds the attention logits and tolerates higher learning rates.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_eps) if config.qk_norm else None
        self.relative_positions = PostformerRelativePositions(config) if config.use_relative_position else None

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)  # -1: the heads on this rank under tensor parallelism
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.q_norm is not None:
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        if position_embeddings is not None:  # rotary positions
            query_states = apply_rotary(query_states, *position_embeddings)
            key_states = apply_rotary(key_states, *position_embeddings)

        if cache is not None:
            if self.relative_positions is not None:  # where the cached keys start: a windowed cache drops the oldest
                kwargs["key_offset"] = cache.get_mask_sizes(input_shape[1], self.layer_idx)[1]
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,  # the mask applies it; flash attention's kernels take it as well
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights


# ----------------------------------------------------------------------------------------------------------------
# Block


class PostformerMLP(nn.Module):
    """The design's feed-forward: up-projection, GELU, down-projection."""

    def __init__(self, config: PostformerConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.down_proj.is_residual_output = True  # scaled at init, see _init_weights
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))


class PostformerDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + Dropout(Attention(LayerNorm(x))), then x + Dropout(MLP(LayerNorm(x)))."""

    def __init__(self, config: PostformerConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = PostformerAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = PostformerMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))


# ----------------------------------------------------------------------------------------------------------------
# Models


class PostformerLMHead(nn.Linear):
    """The output projection to the vocabulary (bias-free, tied to the token embedding).

    Without gradients it computes the same product as nn.Linear as (W x^T)^T: CPU BLAS runs the tall (vocab x
    hidden) by (hidden x tokens) product about 1.5x faster than (tokens x hidden) by (hidden x vocab) at these
    sizes, and in small models this matrix multiply is most of a forward pass (the logits come out as a
    transposed view). With gradients nn.Linear's own layout is kept: its backward is the faster one.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(hidden_states)
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        return torch.matmul(self.weight, flat.t()).t().reshape(*hidden_states.shape[:-1], -1)


class LinearCrossEntropy(torch.autograd.Function):
    """Training loss of the LM head without materialising the logits: cross-entropy of (hidden @ weight^T)
    against labels, a chunk of rows at a time, with the gradients computed in the same pass.

    The plain path writes a (tokens x vocab) logits tensor, upcasts it to fp32, takes its log-softmax, and in the
    backward pass reads and writes tensors of that size again; for a small model with an 8k vocabulary that
    traffic costs as much as the layers. Here each chunk's logits (a few MB, in cache) give the loss and, since
    the loss is a scalar, its gradient at once (softmax - one-hot); hidden and weight gradients are accumulated
    chunk by chunk and scaled by the incoming gradient in backward. Matrix multiplies run in the autocast dtype
    when autocast is on (as nn.Linear would), softmax and sums in fp32. Equal to the plain path within float
    tolerance (tested).
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index: int, divisor):
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        needs_hidden_grad, needs_weight_grad = ctx.needs_input_grad[:2]
        needs_grad = needs_hidden_grad or needs_weight_grad
        ctx.weight_dtype = weight.dtype
        with torch.autocast(device_type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if needs_hidden_grad else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight_grad else None
            rows = max(16, 2**21 // weight.shape[0])  # ~8 MB of fp32 logits per chunk
            for start in range(0, h.shape[0], rows):
                h_chunk, target = h[start : start + rows], labels[start : start + rows]
                logits = (h_chunk @ w.t()).float()
                valid = target != ignore_index
                safe_target = target.masked_fill(~valid, 0).unsqueeze(1)
                log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
                total += ((log_norm - logits.gather(1, safe_target)).squeeze(1) * valid).sum()
                if needs_grad:  # d loss_sum / d logits = softmax - one_hot, zero on ignored rows
                    grad_logits = logits.sub_(log_norm).exp_()
                    grad_logits.scatter_add_(1, safe_target, torch.full_like(safe_target, -1, dtype=grad_logits.dtype))
                    grad_logits.mul_(valid.unsqueeze(1))
                    grad_logits = grad_logits.to(dtype)
                    if needs_hidden_grad:
                        grad_hidden[start : start + rows] = grad_logits @ w
                    if needs_weight_grad:
                        grad_weight += (grad_logits.t() @ h_chunk).float()
        ctx.save_for_backward(grad_hidden, grad_weight, divisor)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, divisor = ctx.saved_tensors
        scale = grad_output / divisor
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * scale).to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(hidden, weight, labels, num_items_in_batch=None, ignore_index: int = -100, shift_labels=None):
    """transformers' causal-LM loss (labels shifted left by one, mean over non-ignored tokens, or sum over
    `num_items_in_batch` under gradient accumulation) of the logits hidden @ weight^T, without computing them."""
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        divisor = (shift_labels != ignore_index).sum()
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device)
    divisor = divisor.to(torch.float32)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    return LinearCrossEntropy.apply(hidden, weight, shift_labels, ignore_index, divisor)


class PostformerPreTrainedModel(PreTrainedModel):
    config_class = PostformerConfig
    config: PostformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PostformerDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": PostformerDecoderLayer,
        "attentions": PostformerAttention,
    }

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        # Shaw relative positions add a value-side term that needs the attention probabilities, which fused
        # kernels (sdpa, flash, flex) never return: such models run on the eager kernel, and asking for
        # another one is an error rather than a silent change of the model.
        if self.config.use_relative_position:
            if requested_attention not in (None, "eager"):
                raise ValueError(
                    f"attn_implementation={requested_attention!r} cannot run use_relative_position=True: Shaw "
                    "relative positions need the attention probabilities on the value side, which only the "
                    "'eager' kernel computes. Use attn_implementation='eager', or use_relative_position=False."
                )
            return "eager"
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        # transformers reverses registered checkpoint conversions on save unless told not to; the conversion below
        # only reads 0.1 folders, so new saves keep the current layout (separate q/k/v projections).
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if getattr(module, "is_residual_output", False):
            # GPT-2's scaled init: each residual branch's output projection gets std / sqrt(2 * layers), so
            # the residual stream's variance does not grow with depth; or zero, so that each block starts as the
            # identity (zero_init_output_projections).
            if self.config.zero_init_output_projections:
                init.zeros_(module.weight)
            else:
                std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
                init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if isinstance(module, PostformerSinusoidalEmbedding):
            init.copy_(module.table, module.compute_table(module.config))


class PostformerModel(PostformerPreTrainedModel):
    """The decoder stack: embeddings (plus absolute positions), pre-norm layers, a final LayerNorm."""

    def __init__(self, config: PostformerConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        position_type = config.position_embedding_type
        self.rotary_emb = PostformerRotaryEmbedding(config) if position_type == "rope" else None
        if position_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        elif position_type == "sinusoidal":
            self.embed_positions = PostformerSinusoidalEmbedding(config)
        else:
            self.embed_positions = None
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(
            [PostformerDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def check_positions(self, position_ids: torch.Tensor, row_length) -> None:
        """Sinusoidal and learned positions are a table that ends at max_position_embeddings: refuse positions past
        it with a clear error instead of an index error. Judged by positions, not row length, so a packed row of
        short sequences passes. (Rotary positions have no such end.) Skipped while compiling: the check reads
        a tensor value."""
        limit = self.config.max_position_embeddings
        if torch.compiler.is_compiling() or (isinstance(row_length, int) and row_length <= limit):
            return
        last = int(position_ids.max())
        if last >= limit:
            raise ValueError(
                f"sequence too long: position {last} is past the end of the {self.config.position_embedding_type} "
                f"position table (max_position_embeddings={limit}); truncate the input or use a sliding window"
            )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        seq_length = inputs_embeds.shape[1]
        past_seen_tokens = cache.get_seq_length() if cache is not None else 0
        # Raw indices of the new tokens; positions seen by the model come from position_ids, which generate()
        # shifts past left padding and which restart at 0 for each sequence of a packed row. Relative distances
        # j - i use raw indices: padding sits to the left of every real token, and the causal mask keeps the
        # sequences of a packed row apart, so distances between tokens that attend to each other are the same.
        query_positions = torch.arange(seq_length, device=inputs_embeds.device) + past_seen_tokens
        if position_ids is None:
            position_ids = query_positions.unsqueeze(0)
        if self.embed_positions is not None:
            self.check_positions(position_ids, past_seen_tokens + seq_length)

        # One mask per kind of layer, unless generate prepared them (a dict keyed by layer type).
        masks = attention_mask
        if not isinstance(masks, dict):
            mask_kwargs = dict(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               cache=cache, position_ids=position_ids)
            builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
            masks = {kind: builders[kind](**mask_kwargs) for kind in set(self.config.layer_types)}

        hidden_states = inputs_embeds
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(position_ids)
        hidden_states = self.dropout(hidden_states)
        position_embeddings = self.rotary_emb(hidden_states, position_ids) if self.rotary_emb is not None else None

        for decoder_layer, layer_type in zip(self.layers, self.config.layer_types):
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=masks[layer_type],
                cache=cache,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                query_positions=query_positions,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class PostformerForCausalLM(PostformerPreTrainedModel, GenerationMixin):
    """Postformer with a language-model head tied to the token embedding; `labels` give the shifted loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # vocabulary rows split across ranks, logits gathered
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: PostformerConfig):
        super().__init__(config)
        self.model = PostformerModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = PostformerLMHead(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        if labels is not None and self.training and torch.is_grad_enabled() and type(self.lm_head) is PostformerLMHead:
            # Training: the loss without materialising the logits (see LinearCrossEntropy); logits are None, as
            # in fused-loss kernels for transformers models. In eval mode the logits are computed as usual.
            loss_kwargs = {k: kwargs[k] for k in ("num_items_in_batch", "ignore_index", "shift_labels") if k in kwargs}
            loss = linear_cross_entropy(hidden_states, self.lm_head.weight, labels, **loss_kwargs)
            return CausalLMOutputWithPast(loss=loss, logits=None, cache=outputs.cache,
                                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config=None,
        logits_processor=None,
        stopping_criteria=None,
        prefix_allowed_tokens_fn=None,
        synced_gpus: bool | None = None,
        assistant_model=None,
        streamer=None,
        negative_prompt_ids: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        custom_generate=None,
        **kwargs,
    ):
        """transformers' `generate`, with a lean decoding loop (generation_postformer.py) where the call allows it.

        For a small model most of a token's time in transformers' loop goes to Python and module overhead rather
        than arithmetic; the lean loop computes each token directly from the weights into a preallocated cache.
        It runs greedy and sampling decoding with the usual length, end-token, suppression, repetition and
        sampling options, padded batches and streamers (`generation_postformer` lists what it supports); any other
        option, or a model it does not implement (e.g. Shaw relative positions), takes transformers' own loop.
        Outputs are the same either way. `GenerationMixin.generate(model, ...)` always runs transformers' loop.
        """
        loop = None
        if custom_generate is None:
            loop = lean_decoding_loop(
                self, inputs, generation_config, kwargs, streamer=streamer, logits_processor=logits_processor,
                stopping_criteria=stopping_criteria, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                synced_gpus=synced_gpus, assistant_model=assistant_model, negative_prompt_ids=negative_prompt_ids,
                negative_prompt_attention_mask=negative_prompt_attention_mask,
            )
        if loop is None:
            DECODING_PATHS["fallback"] += 1
        return super().generate(
            inputs,
            generation_config,
            logits_processor,
            stopping_criteria,
            prefix_allowed_tokens_fn,
            synced_gpus,
            assistant_model,
            streamer,
            negative_prompt_ids,
            negative_prompt_attention_mask,
            custom_generate=custom_generate if loop is None else loop,
            **kwargs,
        )


class PostformerForSequenceClassification(PostformerPreTrainedModel):
    """Postformer with a linear head on the last non-padding token (or, with `config.classifier_pooling` "mean",
    "weighted_mean" or "mean_last", on the mean or the position-weighted mean over the real tokens, or on the sum
    of the mean and the last token's state), for posts analysis.

    `config.problem_type` picks the loss as transformers' heads do: regression (MSE), single-label (cross-entropy)
    or multi-label (BCE with logits); it is inferred from `num_labels` and the labels' dtype when unset.
    """

    def __init__(self, config: PostformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = PostformerModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size = logits.shape[0]

        # Each row's real tokens: from the attention mask when given (left or right padding), else from the pad
        # id, else all of them.
        if attention_mask is not None and attention_mask.dim() == 2:
            real = attention_mask.to(logits.device, torch.long)
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(logits.device, torch.long)
        else:
            real = torch.ones(logits.shape[:2], dtype=torch.long, device=logits.device)
        pooling = self.config.classifier_pooling
        pooled_logits = 0
        if pooling in ("mean", "weighted_mean", "mean_last"):
            # The score head has no bias, so the mean of the tokens' logits is the logits of their mean state.
            # "weighted_mean": the i-th real token counts i times (causal attention: it has read i tokens of the post).
            weights = real.cumsum(-1) * real if pooling == "weighted_mean" else real
            weights = weights.unsqueeze(-1).to(logits.dtype)
            pooled_logits = (logits * weights).sum(1) / weights.sum(1).clamp(min=1)
        if pooling in ("last", "mean_last"):  # "mean_last": the logits of the mean state + the last token's state
            last_token = (torch.arange(real.shape[-1], device=logits.device) * real).argmax(-1)
            pooled_logits = pooled_logits + logits[torch.arange(batch_size, device=logits.device), last_token]

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class PostformerForTokenClassification(GenericForTokenClassification, PostformerPreTrainedModel):
    """Postformer with a linear head on every token (tagging hashtags, entities, spans in posts); transformers'
    generic head (dropout, linear, token-level cross-entropy) on the Postformer decoder."""

    def __init__(self, config: PostformerConfig):
        # The generic head builds its body with AutoModel.from_config, which a process that loaded the model as
        # remote code cannot resolve; the body is built directly instead.
        PostformerPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = PostformerModel(config)
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout if dropout is None else dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


class PostformerForQuestionAnswering(GenericForQuestionAnswering, PostformerPreTrainedModel):
    """Postformer with span start/end logits per token (extractive question answering over posts); transformers'
    generic head on the Postformer decoder."""

    def __init__(self, config: PostformerConfig):
        PostformerPreTrainedModel.__init__(self, config)
        self.model = PostformerModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()


# Postformer 0.1 saved queries, keys and values as one fused `qkv_proj` (all query rows, then key rows, then value
# rows). Loading such a folder splits it into q_proj, k_proj and v_proj, sized from the model. Registered under
# the model type, which also covers this file when it runs as remote code.
register_checkpoint_conversion_mapping(
    "postformer",
    [
        WeightConverter(f"self_attn.qkv_proj.{kind}", [f"self_attn.{name}_proj.{kind}" for name in "qkv"], [Split(dim=0)])
        for kind in ("weight", "bias")
    ],
    overwrite=True,
)


__all__ = [
    "PostformerPreTrainedModel",
    "PostformerModel",
    "PostformerForCausalLM",
    "PostformerForSequenceClassification",
    "PostformerForTokenClassification",
    "PostformerForQuestionAnswering",
]
