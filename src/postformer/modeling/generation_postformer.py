"""Lean decoding for `PostformerForCausalLM.generate`.

Why: for small models on a CPU, transformers' `generate` spends most of each token outside the model's
arithmetic. Per token it runs the whole module tree (a Python call per module, the attention-kernel and mask
machinery, cache bookkeeping) and the logits processors as written for generality (`torch.isin` over the
vocabulary per processor, a growing `input_ids` concatenated every step). For the small preset that is ~0.9 ms a
token against ~12 µs of matrix products. This module keeps transformers' `generate` for everything around the
decoding loop and replaces only the loop, where the options allow it:

- `PostformerForCausalLM.generate` asks `lean_decoding_loop` whether the call qualifies (`supports_lean_decoding`
  for the model, the resolved generation config and arguments for the call). If so it passes the loop to
  transformers' `generate` as its `custom_generate` callable: transformers still resolves the generation config,
  special tokens, lengths, attention mask, positions, the expansion for `num_return_sequences`, and builds its
  logits processors and stopping criteria; `lean_decode` then runs the loop. Otherwise the call is transformers'
  own `generate`, unchanged.
- `lean_decode` reads the parameters of the processors and criteria that transformers built (so it applies exactly
  the values `generate` resolved), checks each is one it implements, runs the prompt through the model's own
  forward (the prefill), copies its keys and values into a preallocated cache, and then computes each new token
  with `LeanDecoder.step`: a direct function over the weights (embedding, layer norm, one fused query/key/value
  product, rotary positions, `scaled_dot_product_attention` on the cache slice, feed-forward, LM head; larger
  matrices as split matrix-vector products for one row and through prepacked oneDNN copies for several, see
  PACK_MIN_BYTES), inside `torch.inference_mode`. Logits go through `LogitsPlan` (precomputed masks for the
  suppressed and end tokens, an incremental "seen" mask for the repetition penalty, top-p from the top of the
  distribution rather than a sort of the vocabulary) and greedy or multinomial selection as in transformers'
  `_sample` (the same calls to the random generator, so a seed draws the same tokens either way).

Supported (anything else is transformers' own `generate`, decided per call):
  - decoding: greedy and multinomial sampling, one beam; num_return_sequences (sampling), eos tokens (one, a list,
    or none), pad token, min_length / min_new_tokens, max_length / max_new_tokens, a streamer;
  - logits processors: repetition_penalty, no_repeat_ngram_size, suppress_tokens, begin_suppress_tokens, and the
    sampling warpers temperature, top_k, top_p (applied in transformers' order: the processors, then the warpers);
  - inputs: input_ids with an optional 2-D attention_mask (left padding; any 0/1 mask is handled as generate
    handles it), or none (generation starts from bos);
  - model: positions "rope" (rope_type default, linear, yarn, llama3: fixed frequencies), "learned",
    "sinusoidal" (when the generation fits the position table) and "none"; multi-head and grouped-query
    attention; QK-norm; sliding-window layers, all or some (a ring cache of the window, as transformers'
    windowed cache keeps); every activation; tied or untied LM head; attention implementations eager, sdpa and
    flex_attention (their decode-step arithmetic is the same); any float dtype; on the CPU.
Falls back for: Shaw relative positions (use_relative_position), dynamic and longrope rotary scaling (their
frequencies change with the length), beams, output_scores / output_logits / return_dict_in_generate / output
attentions or hidden states, use_cache=False, static or other cache implementations and compile options, a cache
or inputs_embeds passed in, custom logits_processor / stopping_criteria lists, prefix_allowed_tokens_fn,
assistant models and prompt lookup, stop_strings, max_time, any other processor (min_p, typical_p, bad_words_ids,
sequence_bias, forced tokens, guidance, watermarking, ...), active dropout (a model in training mode with
dropout), forward hooks, quantized or otherwise replaced modules and weights (tensor subclasses, device maps),
models on accelerators, distributed runs.

Outputs equal transformers' own `generate` up to float rounding of the logits (tested token for token on greedy
decoding, and the sampling distributions processor by processor). `DECODING_PATHS` counts which loop ran.

This file is copied beside every saved model with modeling_postformer.py (which imports it), so it may import
from `torch`, `transformers` and its siblings only.
"""

from collections import Counter
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.generation import GenerationMixin
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.logits_process import (
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria
from transformers.utils import logging

# MaxLengthCriteria's logger: its reminder, written by this loop, reads (and is shown once) as transformers' own
_LENGTH_LOGGER = logging.get_logger("transformers.generation.stopping_criteria")

# How many `generate` calls took each decoding loop in this process: "lean" (this module's) or "fallback"
# (transformers' own). For tests and for users who want to know.
DECODING_PATHS: Counter = Counter()

# Rotary scalings whose frequencies do not depend on the sequence length (dynamic and longrope recompute them as
# the sequence grows, and keep state in the rotary module: those run through the model's own forward).
STATIC_ROPE_TYPES = ("default", "linear", "yarn", "llama3")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")

# Generation-config fields whose value the lean loop implements (checked below where needed).
HANDLED_FIELDS = {
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "num_beams", "use_cache",
    "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size", "suppress_tokens",
    "begin_suppress_tokens", "num_return_sequences", "pad_token_id", "bos_token_id", "eos_token_id",
    "cache_implementation", "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate",
}
# Fields that greedy and sampling decoding never read (beam search's, an assistant's, an encoder-decoder's, and
# bookkeeping): any value is fine.
IGNORED_FIELDS = {
    "early_stopping", "length_penalty", "decoder_start_token_id", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind",
    "max_matching_ngram_size", "disable_compile", "low_memory", "_from_model_config", "transformers_version",
}
# The processors `generate` builds from the handled fields. Processors first, then warpers, as `generate` orders
# them: the processors only ever set logits to -inf or scale them (so their order among themselves does not
# matter), the warpers are applied in the list's order.
PROCESSORS = (
    RepetitionPenaltyLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    SuppressTokensLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
)
WARPERS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)


# ----------------------------------------------------------------------------------------------------------------
# Which calls qualify


def supports_lean_decoding(model) -> bool:
    """Whether `model`'s forward can be replaced by `LeanDecoder.step`: the stock Postformer modules (exact types,
    so a subclass or an adapter that replaced a module is not bypassed), plain weights (no quantized or distributed
    tensor subclasses), no hooks, no active dropout, one device, and an architecture the step implements."""
    from .modeling_postformer import (
        PostformerAttention,
        PostformerDecoderLayer,
        PostformerLMHead,
        PostformerMLP,
        PostformerModel,
        PostformerRotaryEmbedding,
        PostformerSinusoidalEmbedding,
    )

    config = model.config
    if config.use_relative_position or config.is_encoder_decoder:
        return False
    if config._attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        return False
    if config.position_embedding_type == "rope" and config.rope_parameters["rope_type"] not in STATIC_ROPE_TYPES:
        return False
    if getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1:
        return False
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        return False

    inner = model.model
    if type(inner) is not PostformerModel or type(model.lm_head) not in (PostformerLMHead, nn.Linear):
        return False
    if type(inner.embed_tokens) is not nn.Embedding or type(inner.norm) is not nn.LayerNorm:
        return False
    expected_positions = {"rope": type(None), "none": type(None), "learned": nn.Embedding,
                          "sinusoidal": PostformerSinusoidalEmbedding}
    if type(inner.embed_positions) is not expected_positions[config.position_embedding_type]:
        return False
    if (inner.rotary_emb is not None) != (config.position_embedding_type == "rope"):
        return False
    if inner.rotary_emb is not None and type(inner.rotary_emb) is not PostformerRotaryEmbedding:
        return False
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if (type(layer), type(attn), type(mlp)) != (PostformerDecoderLayer, PostformerAttention, PostformerMLP):
            return False
        if attn.relative_positions is not None:
            return False
        if attn.training and attn.attention_dropout > 0:
            return False
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.up_proj, mlp.down_proj)
        if any(type(linear) is not nn.Linear for linear in linears):
            return False
        if len({attn.q_proj.bias is None, attn.k_proj.bias is None, attn.v_proj.bias is None}) > 1:
            return False  # the fused projection needs all three biases or none
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(type(norm) is not nn.LayerNorm for norm in norms):
            return False
        if attn.q_norm is not None:
            if type(attn.q_norm) is not nn.RMSNorm or type(attn.k_norm) is not nn.RMSNorm:
                return False
            if attn.q_norm.eps != attn.k_norm.eps or attn.q_norm.weight is None or attn.k_norm.weight is None:
                return False

    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return False
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            return False
    devices = set()
    for parameter in model.parameters():
        if type(parameter) is not nn.Parameter or type(parameter.data) is not torch.Tensor:
            return False
        if not parameter.is_floating_point() or parameter.device.type == "meta":
            return False
        devices.add(parameter.device)
    # CPU only: that is where the per-token overhead dominates and where this loop is measured and tested; on
    # accelerators transformers' static cache with compilation (postformer.generation.compiled_generation_options)
    # is the tool.
    return devices == {torch.device("cpu")}


def _resolved_call_qualifies(model, generation_config, model_kwargs) -> bool:
    """Whether a generation config (as `generate` resolves it) and the leftover model inputs ask for nothing but
    what the lean loop implements."""
    if generation_config.get_generation_mode() not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        return False
    if generation_config.num_beams not in (None, 1) or generation_config.use_cache is False:
        return False
    if generation_config.cache_implementation not in (None, "dynamic"):
        return False
    for name in ("output_attentions", "output_hidden_states", "output_scores", "output_logits",
                 "return_dict_in_generate"):
        if getattr(generation_config, name, None):
            return False
    defaults = generation_config._get_default_generation_params()
    for name, value in generation_config.__dict__.items():
        if name in HANDLED_FIELDS or name in IGNORED_FIELDS or name not in _STANDARD_FIELDS:
            continue
        if value is not None and value != defaults.get(name, None) and value is not False:
            return False
    for name, value in model_kwargs.items():
        if value is None:
            continue
        if name not in ("input_ids", "attention_mask") or not isinstance(value, torch.Tensor) or value.dim() != 2:
            return False
    return True


def _standard_fields() -> frozenset:
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().__dict__)


_STANDARD_FIELDS = _standard_fields()


def lean_decoding_loop(model, inputs, generation_config, kwargs: dict, streamer=None, **others):
    """The `custom_generate` callable for a `generate` call that the lean loop can run, else None.

    `others` are the remaining `generate` arguments (logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
    synced_gpus, assistant_model, negative_prompt_ids, negative_prompt_attention_mask, custom_generate): any of them
    given (beyond empty lists) means transformers' own loop. The generation config is resolved as `generate`
    resolves it, and every field must be one the loop implements or at its default.
    """
    for name, value in others.items():
        if name in ("logits_processor", "stopping_criteria"):
            if value is not None and len(value) > 0:
                return None
        elif value is not None and value is not False:
            return None
    if inputs is not None and (not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.is_floating_point()):
        return None
    if not supports_lean_decoding(model):
        return None
    kwargs = {name: value for name, value in kwargs.items() if name != "trust_remote_code"}
    try:
        resolved, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    except Exception:  # transformers' own generate raises it, with its own message
        return None
    if not _resolved_call_qualifies(model, resolved, model_kwargs):
        return None
    input_ids = model_kwargs.get("input_ids")
    if input_ids is not None and input_ids.is_floating_point():
        return None
    return partial(lean_decode, streamer=streamer)


# ----------------------------------------------------------------------------------------------------------------
# Logits processing


class LogitsPlan:
    """transformers' logits processors and warpers for greedy and sampling decoding, as a few tensor operations.

    Built from the processor objects `generate` made (so every value is the one it resolved); `None` from
    `from_processors` when one is not implemented here. Per step (`__call__`): the repetition penalty on the
    tokens seen so far (an incremental mask instead of a scatter over the whole history), no-repeat n-grams, one
    precomputed -inf mask for the suppressed tokens and, while the minimum length is not reached, the end tokens;
    then temperature, top-k and top-p as transformers computes them. Scores are modified in place: the caller
    passes a fresh float32 tensor.
    """

    def __init__(self):
        self.penalty = None
        self.prompt_ignore_length = None
        self.ngram_size = None
        self.suppress = None
        self.begin_suppress = None
        self.begin_index = None
        self.eos = None
        self.min_length = 0  # the end tokens are masked while the sequence is shorter than this
        self.warpers = []
        self.vocab_size = None
        self.seen = None
        self._masks = {}

    @classmethod
    def from_processors(cls, processors, vocab_size: int, device) -> "LogitsPlan | None":
        plan = cls()
        plan.vocab_size = vocab_size
        warping = False
        for processor in processors:
            kind = type(processor)
            if kind in WARPERS:
                warping = True
                if kind is TemperatureLogitsWarper:
                    plan.warpers.append(partial(_temperature, temperature=processor.temperature))
                elif processor.filter_value != -float("inf"):
                    return None
                elif kind is TopKLogitsWarper:
                    plan.warpers.append(partial(_top_k, top_k=processor.top_k))
                else:
                    plan.warpers.append(
                        partial(_top_p, top_p=processor.top_p, min_tokens_to_keep=processor.min_tokens_to_keep)
                    )
            elif kind not in PROCESSORS or warping:
                return None  # not implemented here, or a processor after a warper (not the order generate builds)
            elif kind is RepetitionPenaltyLogitsProcessor:
                packed_rows = processor.logits_indices is not None or processor.cu_seq_lens_q is not None
                if plan.penalty is not None or packed_rows:
                    return None  # twice, or set up for continuous batching's packed rows
                plan.penalty = float(processor.penalty)
                plan.prompt_ignore_length = processor.prompt_ignore_length
            elif kind is NoRepeatNGramLogitsProcessor:
                if plan.ngram_size is not None:
                    return None
                plan.ngram_size = processor.ngram_size
            elif kind in (MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor):
                eos = _token_mask(processor.eos_token_id, vocab_size, device)
                if plan.eos is not None and not torch.equal(plan.eos, eos):
                    return None
                plan.eos = eos
                if kind is MinLengthLogitsProcessor:
                    plan.min_length = max(plan.min_length, processor.min_length)
                else:
                    plan.min_length = max(plan.min_length, processor.prompt_length_to_skip + processor.min_new_tokens)
            elif kind is SuppressTokensLogitsProcessor:
                mask = _token_mask(processor.suppress_tokens, vocab_size, device)
                plan.suppress = mask if plan.suppress is None else plan.suppress | mask
            else:  # SuppressTokensAtBeginLogitsProcessor
                if plan.begin_suppress is not None:
                    return None
                plan.begin_suppress = _token_mask(processor.begin_suppress_tokens, vocab_size, device)
                plan.begin_index = processor.begin_index
        return plan

    def start(self, input_ids: torch.Tensor) -> None:
        """Record the prompt (batch, length) for the repetition penalty: the tokens it penalises are those of
        `input_ids` past each row's `prompt_ignore_length` (generate sets it to the row's left padding)."""
        if self.penalty is None:
            return
        batch, length = input_ids.shape
        vocab_size = self.vocab_size
        ids = input_ids.clamp(max=vocab_size)
        ignore = self.prompt_ignore_length
        if isinstance(ignore, int):
            ids = ids[:, ignore:]
        elif isinstance(ignore, torch.Tensor):
            positions = torch.arange(length, device=ids.device)
            ids = ids.masked_fill(positions[None, :] < ignore.to(ids.device)[:, None], vocab_size)
        # one spare column past the vocabulary absorbs ignored positions and ids outside the LM head's vocabulary
        self.seen = torch.zeros(batch, vocab_size + 1, dtype=torch.bool, device=ids.device)
        self.seen.scatter_(1, ids, True)
        self._rows = torch.arange(batch, device=ids.device)

    def record(self, tokens: torch.Tensor) -> None:
        """Add the tokens just appended (batch,) to the penalised set."""
        if self.seen is not None:
            self.seen[self._rows, tokens.clamp(max=self.vocab_size)] = True

    def _mask(self, eos_active: bool, begin_active: bool):
        key = (eos_active, begin_active)
        if key not in self._masks:
            parts = [self.suppress, self.eos if eos_active else None, self.begin_suppress if begin_active else None]
            parts = [part for part in parts if part is not None]
            mask = None
            for part in parts:
                mask = part if mask is None else mask | part
            self._masks[key] = mask
        return self._masks[key]

    def __call__(self, scores: torch.Tensor, sequences: torch.Tensor, length: int) -> torch.Tensor:
        """Process `scores` (batch, vocab; float32, modified in place) for the token that follows
        `sequences[:, :length]` (the sequences so far, which only the n-gram rule reads)."""
        if self.penalty is not None:
            seen = self.seen[:, : scores.shape[-1]]
            penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
            scores = torch.where(seen, penalised, scores)
        if self.ngram_size is not None:
            scores = _no_repeat_ngram(sequences[:, :length], scores, self.ngram_size)
        mask = self._mask(length < self.min_length, length == self.begin_index)
        if mask is not None:
            scores = scores.masked_fill_(mask, -float("inf"))
        for warper in self.warpers:
            scores = warper(scores)
        return scores


def _token_mask(token_ids, vocab_size: int, device) -> torch.Tensor:
    """A (vocab,) mask of `token_ids`, as the processors' `torch.isin(arange(vocab), ids)` computes it."""
    if not isinstance(token_ids, torch.Tensor):
        token_ids = torch.tensor(list(token_ids), dtype=torch.long)
    return torch.isin(torch.arange(vocab_size, device=device), token_ids.to(device))


def _no_repeat_ngram(input_ids: torch.Tensor, scores: torch.Tensor, ngram_size: int) -> torch.Tensor:
    """transformers' NoRepeatNGramLogitsProcessor: ban each token that would complete an n-gram already present."""
    length = input_ids.shape[-1]
    if length < ngram_size:
        return scores
    prefix = input_ids[:, length + 1 - ngram_size :]
    windows = input_ids.unfold(dimension=1, size=ngram_size, step=1)
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
    vocab_size = scores.shape[-1]
    banned = scores.new_zeros((scores.shape[0], vocab_size + 1), dtype=torch.bool)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab_size), vocab_size), True)
    return scores.masked_fill_(banned[:, :vocab_size], -float("inf"))


def _temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return scores / temperature


def _top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, scores.shape[-1])
    return scores.masked_fill_(scores < torch.topk(scores, top_k)[0][..., -1, None], -float("inf"))


def _top_p(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int) -> torch.Tensor:
    """transformers' TopPLogitsWarper, without sorting the whole vocabulary where the nucleus is small.

    The warper sorts the scores ascending and removes every token whose cumulative probability (its own and all
    smaller ones') is <= 1 - top_p, keeping at least the `min_tokens_to_keep` largest. Only the largest tokens
    survive, so each row is first decided from its top 64, then its top 512: a token's ascending cumulative
    probability is the total minus the probability above it, and once a row's k-th token is removed, so is
    everything below it. On a CPU, sorting 8192 scores took ~0.4 ms per row, more than a small model's whole
    decoding step; the top 64 take ~20 µs, the top 512 ~30 µs. Rows with a flatter distribution (a nucleus past 512
    tokens) are sorted whole, exactly as the warper does. Same kept tokens up to float rounding of the cumulative
    sums at the boundary (tested against the warper). Rows past the first tier go one at a time: topk and sort of
    several rows at once ran slower than one row after another.
    """
    probs = scores.softmax(dim=-1)
    total = probs.sum(dim=-1, keepdim=True)
    if scores.shape[-1] > 64:
        row_remove, top_indices = _top_p_from_top_k(probs, total, top_p, min_tokens_to_keep, 64)
        if row_remove is not None:  # every row decided (the usual case)
            remove = torch.ones_like(scores, dtype=torch.bool).scatter_(1, top_indices, row_remove)
            return scores.masked_fill_(remove, -float("inf"))
    for row in range(scores.shape[0]):
        one = slice(row, row + 1)
        row_remove = None
        if scores.shape[-1] > 512:
            row_remove, top_indices = _top_p_from_top_k(probs[one], total[one], top_p, min_tokens_to_keep, 512)
        if row_remove is not None:
            remove = torch.ones_like(scores[one], dtype=torch.bool).scatter_(1, top_indices, row_remove)
        else:
            sorted_logits, sorted_indices = torch.sort(scores[one], descending=False)
            cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            sorted_indices_to_remove = cumulative_probs <= (1 - top_p)
            sorted_indices_to_remove[..., -min_tokens_to_keep:] = 0
            remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        scores[one].masked_fill_(remove, -float("inf"))
    return scores


def _top_p_from_top_k(probs, total, top_p: float, min_tokens_to_keep: int, k: int):
    """(which of each row's top k to remove, their indices), or (None, None) when the top k of some row does not
    reach the nucleus' boundary (its k-th token is kept)."""
    top_probs, top_indices = probs.topk(k, dim=-1)
    above = top_probs.cumsum(dim=-1) - top_probs
    remove = (total - above) <= (1 - top_p)  # ascending cumulative probability: the total minus the mass above
    if not bool(remove[:, -1].all()):
        return None, None
    remove[..., :min_tokens_to_keep] = False
    return remove, top_indices


# ----------------------------------------------------------------------------------------------------------------
# The decoding step

# Matrix products with few rows (one per sequence): on CPUs, fp32 products with few rows run well below the memory
# bandwidth in the default kernels (F.linear over the large preset's decoding weights, 48 MB, ran at ~10 GB/s on the
# 2-core AMD EPYC this was measured on, where one pass over the same weights reads at ~40 GB/s; see
# benchmarks/results/speed.md, "How fast a decoding step can be").
# - One row: the weight's rows split into blocks, one per thread (at least 2), multiplied by the vector in one
#   `torch.bmm` (views of the weight, nothing copied), which runs near the memory's bandwidth there: the medium and
#   large presets' decoding steps 1.6x and 2.2x faster than through MKL's packed GEMM, which this replaced.
# - Several rows: a copy reordered once into oneDNN's blocked layout (what Inductor's CPU weight prepacking uses),
#   1.3-1.7x faster steps than F.linear there. The reorder costs about as much as 2-3 decoding steps and a second
#   copy of the weights for the length of the call, so it is done only for generations of at least
#   PACK_MIN_NEW_TOKENS and up to PACK_MAX_BYTES of copies.
# Matrices under PACK_MIN_BYTES (the small preset's layers) gained nothing either way: they stay in cache, where the
# default kernel is as fast. Each packed product is checked against F.linear on one input when it is made (these
# are internal operators of PyTorch); any failure means F.linear.
PACK_MIN_BYTES = 256 * 2**10
PACK_MAX_BYTES = 256 * 2**20
PACK_MIN_NEW_TOKENS = 16
# Room for new tokens in the key-value cache at the start of a call (it doubles as needed).
INITIAL_CAPACITY = 256


def _plain_linear(weight, bias):
    return partial(F.linear, weight=weight, bias=bias)


def _split_linear(weight: torch.Tensor, bias: torch.Tensor | None):
    """x (1, in) -> F.linear(x, weight, bias): the weight's rows in one block per thread (at least 2; fewer when
    they do not divide the rows), each multiplied by x, in one batched product over views of the weight."""
    parts = max(2, torch.get_num_threads())
    while weight.shape[0] % parts:
        parts -= 1
    if parts < 2 or not weight.is_contiguous():
        return _plain_linear(weight, bias)
    blocks = weight.view(parts, weight.shape[0] // parts, weight.shape[1])

    def linear(x):
        y = torch.bmm(blocks, x.t().expand(parts, -1, -1)).view(1, -1)  # (parts, out / parts, 1) -> (1, out)
        return y if bias is None else y + bias

    return linear


def _packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, rows: int):
    """x (rows, in) -> F.linear(x, weight, bias), through a copy of `weight` prepacked for oneDNN when that works."""
    if not torch.backends.mkldnn.is_available():
        return _plain_linear(weight, bias)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)

        def linear(x):
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

        # a probe from its own generator: the global one belongs to sampling
        generator = torch.Generator(weight.device).manual_seed(0)
        probe = torch.randn(rows, weight.shape[1], generator=generator, dtype=weight.dtype, device=weight.device)
        if not torch.allclose(linear(probe), F.linear(probe, weight, bias), rtol=1e-4, atol=1e-4):
            return _plain_linear(weight, bias)
        return linear
    except Exception:  # an operator missing or refusing these shapes in this build of PyTorch
        return _plain_linear(weight, bias)


class LeanDecoder:
    """One token per row through the model, as plain functions over its weights.

    Holds references to the model's parameters and one fused copy of each layer's query, key and value weights
    (one matrix product instead of three), plus split or prepacked products where they pay (see PACK_MIN_BYTES):
    made per `generate` call, never cached across calls, so that weights changed in any way between calls are never
    stale.
    The key and value cache is one preallocated (batch, kv_heads, length, head_dim) tensor per layer and kind,
    filled from the prefill's cache; each step writes its column and attends over the columns so far (in a
    sliding-window layer: a ring of `sliding_window` slots, each step overwriting the oldest).

    Every row's new token sits in the same column (generate left-pads batches), so a step is one write and one
    attention over a slice for the whole batch; padding is a boolean key mask, and each row's position (for
    rotary or absolute positions) is its last prompt position plus the steps taken, as generate counts them.
    """

    def __init__(self, model, batch: int, max_length: int, prefill_cache, attention_mask, last_positions):
        config = model.config
        inner = model.model
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        self.batch = batch
        prompt_length = prefill_cache.get_seq_length()
        self.prompt_length = prompt_length

        embed = inner.embed_tokens.weight
        head = model.lm_head
        decode_bytes = head.weight.numel() * head.weight.element_size() + sum(
            p.numel() * p.element_size() for layer in inner.layers for p in layer.parameters()
        )
        cpu_fp32 = embed.device.type == "cpu" and embed.dtype == torch.float32
        # one row: views of the weights, nothing to copy; several: prepacked copies, worth it for long enough calls
        pack = cpu_fp32 and decode_bytes <= PACK_MAX_BYTES and max_length - prompt_length >= PACK_MIN_NEW_TOKENS

        def linear(weight, bias):
            if weight.numel() * weight.element_size() >= PACK_MIN_BYTES:
                if cpu_fp32 and batch == 1:
                    return _split_linear(weight, bias)
                if pack:
                    return _packed_linear(weight, bias, batch)
            return _plain_linear(weight, bias)

        self.embed = embed
        self.head = linear(head.weight, head.bias)
        self.final_norm = (inner.norm.weight, inner.norm.bias, inner.norm.eps)
        self.position_table = None
        if config.position_embedding_type == "learned":
            self.position_table = inner.embed_positions.weight
        elif config.position_embedding_type == "sinusoidal":
            self.position_table = inner.embed_positions.table

        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            qkv_bias = None
            if attn.q_proj.bias is not None:
                qkv_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            qk_norm = None
            if attn.q_norm is not None:
                # one RMS normalisation over the query and key heads together (same eps, checked in
                # supports_lean_decoding), then each head's own scale
                qk_norm = (
                    torch.cat([attn.q_norm.weight.expand(self.num_heads, -1),
                               attn.k_norm.weight.expand(self.num_kv_heads, -1)]),
                    attn.q_norm.eps,
                )
            norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
            self.layers.append((
                (norm1.weight, norm1.bias, norm1.eps),
                linear(qkv_weight, qkv_bias),
                qk_norm,
                linear(attn.o_proj.weight, attn.o_proj.bias),
                (norm2.weight, norm2.bias, norm2.eps),
                linear(mlp.up_proj.weight, mlp.up_proj.bias),
                mlp.act_fn.forward,  # no hooks (checked), so forward is what calling the module runs
                linear(mlp.down_proj.weight, mlp.down_proj.bias),
            ))

        # The cache: the prefill's keys and values, then room for new tokens, up to max_length. Room for
        # INITIAL_CAPACITY new tokens first, doubled as needed: a generous max_new_tokens that an end token cuts
        # short does not reserve memory for tokens never generated. A sliding-window layer's cache is a ring of
        # `sliding_window` slots instead (column c in slot c % window): it holds the window and nothing older, as
        # transformers' windowed cache layers do. The order of keys does not matter to attention (their positions
        # are already rotated in), so a step attends over the filled slots, whatever their order.
        self.max_length = max_length
        self.capacity = min(max_length, prompt_length + INITIAL_CAPACITY)
        self.sliding = [kind == "sliding_attention" for kind in config.layer_types]
        self.window = config.sliding_window
        self.ring = min(self.window, max_length) if any(self.sliding) else None
        device = embed.device
        # the prompt columns a windowed prefill cache kept (its last window - 1), and their slots in the ring
        kept_columns = None
        self.keys, self.values = [], []
        for cached, sliding in zip(prefill_cache.layers, self.sliding):
            shape = (batch, self.num_kv_heads, self.ring if sliding else self.capacity, self.head_dim)
            keys, values = cached.keys.new_empty(shape), cached.values.new_empty(shape)
            if sliding:
                kept_columns = torch.arange(prompt_length - cached.keys.shape[2], prompt_length, device=device)
                keys[:, :, kept_columns % self.window] = cached.keys
                values[:, :, kept_columns % self.window] = cached.values
            else:
                keys[:, :, :prompt_length] = cached.keys
                values[:, :, :prompt_length] = cached.values
            self.keys.append(keys)
            self.values.append(values)

        # Key mask: the prompt's attention mask, then every new column visible; one per column for full layers, one
        # per slot for the ring. None without padding.
        self.key_mask = self.ring_mask = None
        if attention_mask is not None:
            visible = attention_mask.to(device) != 0
            key_mask = torch.ones(batch, 1, 1, self.capacity, dtype=torch.bool, device=device)
            key_mask[:, 0, 0, :prompt_length] = visible
            self.key_mask = key_mask
            if self.ring is not None:
                self.ring_mask = torch.ones(batch, 1, 1, self.ring, dtype=torch.bool, device=device)
                self.ring_mask[:, 0, 0, kept_columns % self.window] = visible[:, kept_columns]

        # Positions: each row continues from its last prompt position, as generate's position_ids do. Without
        # padding all rows share one position, an integer.
        last_positions = last_positions.to(device)
        self.first_position = int(last_positions[0])
        self.last_positions = None if bool((last_positions == self.first_position).all()) else last_positions
        self.rotary_emb = inner.rotary_emb
        self.cos = self.sin = None
        self._rotary_tables(int(last_positions.max()))

    def _rotary_tables(self, last_position: int) -> None:
        """cos and sin of every position up to the cache's capacity, as the model's rotary module computes them."""
        if self.rotary_emb is None:
            return
        count = last_position + self.capacity - self.prompt_length + 1
        positions = torch.arange(count, device=self.embed.device)[None]
        cos, sin = self.rotary_emb(self.embed[:1], positions)  # (1, count, head_dim)
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * signed_sin, where signed_sin negates sin's first half
        self.cos = cos[0]
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        self.last_position = last_position

    def _grow(self) -> None:
        """Double the room for new tokens (up to max_length), keeping what the cache holds."""
        old = self.capacity
        self.capacity = min(self.max_length, self.prompt_length + 2 * (old - self.prompt_length))
        for buffers in (self.keys, self.values):
            for index, buffer in enumerate(buffers):
                if self.sliding[index]:
                    continue  # a ring: its size is the window's
                grown = buffer.new_empty(*buffer.shape[:2], self.capacity, buffer.shape[3])
                grown[:, :, :old] = buffer
                buffers[index] = grown
        if self.key_mask is not None:
            grown = self.key_mask.new_ones(*self.key_mask.shape[:3], self.capacity)
            grown[..., :old] = self.key_mask
            self.key_mask = grown
        if self.rotary_emb is not None:
            self._rotary_tables(self.last_position)

    def step(self, tokens: torch.Tensor, column: int) -> torch.Tensor:
        """Logits (batch, vocab) for `tokens` (batch,) placed at cache column `column` (prompt length + steps)."""
        batch, hidden_size = self.batch, self.hidden_size
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        qk_width = (heads + kv_heads) * head_dim
        v_width = kv_heads * head_dim

        if column >= self.capacity:
            self._grow()
        offset = column - self.prompt_length + 1
        if self.last_positions is None:
            positions = self.first_position + offset
        else:
            positions = self.last_positions + offset

        hidden = F.embedding(tokens, self.embed)
        if self.position_table is not None:
            hidden = hidden + self.position_table[positions]
        if self.cos is not None:
            cos, sin = self.cos[positions], self.sin[positions]
            if self.last_positions is not None:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        length = column + 1
        mask = None if self.key_mask is None else self.key_mask.narrow(3, 0, length)
        if self.ring is not None:  # sliding layers: the new column's slot, and the slots filled so far
            slot, filled = column % self.window, min(length, self.ring)
            if self.ring_mask is not None:
                self.ring_mask[..., slot] = True
            ring_mask = None if self.ring_mask is None else self.ring_mask.narrow(3, 0, filled)

        for (norm1, qkv_proj, qk_norm, o_proj, norm2, up_proj, act, down_proj), keys, values, sliding in zip(
            self.layers, self.keys, self.values, self.sliding
        ):
            at, seen, layer_mask = (slot, filled, ring_mask) if sliding else (column, length, mask)
            x = F.layer_norm(hidden, (hidden_size,), *norm1)
            qk, value = qkv_proj(x).split((qk_width, v_width), dim=1)
            qk = qk.view(batch, heads + kv_heads, head_dim)
            if qk_norm is not None:
                scale, eps = qk_norm
                qk = F.rms_norm(qk, (head_dim,), None, eps) * scale
            if self.cos is not None:
                qk = qk * cos + qk.roll(head_dim // 2, -1) * sin
            keys.select(2, at).copy_(qk[:, heads:])
            values.select(2, at).copy_(value.view(batch, kv_heads, head_dim))
            # the query heads of a key-value group act as that group's queries: grouped-query attention without
            # repeating keys and values
            query = qk[:, :heads].view(batch, kv_heads, self.groups, head_dim)
            attention = F.scaled_dot_product_attention(
                query, keys.narrow(2, 0, seen), values.narrow(2, 0, seen), attn_mask=layer_mask, scale=self.scaling
            )
            hidden = hidden + o_proj(attention.reshape(batch, heads * head_dim))
            x = F.layer_norm(hidden, (hidden_size,), *norm2)
            hidden = hidden + down_proj(act(up_proj(x)))

        hidden = F.layer_norm(hidden, (hidden_size,), *self.final_norm)
        return self.head(hidden)


# ----------------------------------------------------------------------------------------------------------------
# The loop


def _fallback(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, model_kwargs):
    DECODING_PATHS["fallback"] += 1
    return GenerationMixin._sample(model, input_ids, logits_processor=logits_processor,
                                   stopping_criteria=stopping_criteria, generation_config=generation_config,
                                   synced_gpus=False, streamer=streamer, **model_kwargs)


def lean_decode(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer=None,
                **model_kwargs):
    """transformers' `_sample` (greedy or multinomial decoding) for a model that `supports_lean_decoding`, with
    `LeanDecoder.step` for every token after the prompt and `LogitsPlan` for the processors. Called by `generate`
    as its `custom_generate` after its usual preparation; falls back to `_sample` itself when what generate
    prepared holds anything the lean loop does not implement."""
    vocab_size = model.lm_head.out_features
    device = input_ids.device
    plan = LogitsPlan.from_processors(logits_processor, vocab_size, device)
    max_length, eos_criteria = None, False
    supported = plan is not None
    for criteria in stopping_criteria:
        if type(criteria) is MaxLengthCriteria:
            max_length = criteria.max_length if max_length is None else min(max_length, criteria.max_length)
        elif type(criteria) is EosTokenCriteria:
            eos_criteria = True
        else:
            supported = False
    cache = model_kwargs.get("cache")
    supported = (
        supported
        and max_length is not None
        and set(model_kwargs) <= {"attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep"}
        and model_kwargs.get("use_cache", True)
        and type(cache) is DynamicCache
        and cache.get_seq_length() == 0
        and model_kwargs.get("position_ids") is not None
        and (model_kwargs.get("attention_mask") is None or model_kwargs["attention_mask"].shape == input_ids.shape)
        and device == model.device
    )
    config = model.config
    # Absolute position tables end at max_position_embeddings: where generation could run past the end, the
    # model's forward decides (it raises a clear error if it does), in transformers' loop.
    if supported and config.position_embedding_type in ("learned", "sinusoidal"):
        supported = max_length - 1 <= config.max_position_embeddings
    if not supported:
        return _fallback(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer,
                         model_kwargs)
    DECODING_PATHS["lean"] += 1

    batch, prompt_length = input_ids.shape
    attention_mask = model_kwargs.get("attention_mask")
    pad_token = generation_config._pad_token_tensor
    eos_tokens = generation_config._eos_token_tensor if eos_criteria else None
    if eos_tokens is not None and eos_tokens.numel() == 0:
        eos_tokens = None
    do_sample = generation_config.do_sample
    # MaxLengthCriteria's reminder once a sequence is longer than max_position_embeddings (and not done)
    reminder_length = config.max_position_embeddings + 1

    # Prefill: the prompt through the model's own forward, exactly as generate runs it.
    model_inputs = model.prepare_inputs_for_generation(input_ids, is_first_iteration=True, **model_kwargs)
    outputs = model(**model_inputs, return_dict=True)
    logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=device)
    decoder = LeanDecoder(model, batch, max_length, outputs.cache, attention_mask,
                          model_kwargs["position_ids"][:, -1])
    del outputs, model_inputs  # the prefill's cache is copied into the decoder's: let it go
    model_kwargs.pop("cache")

    sequences = input_ids.new_empty(batch, max_length)
    sequences[:, :prompt_length] = input_ids
    plan.start(input_ids)
    if pad_token is not None:
        pad_token = pad_token.to(device)
    # End tokens: with one row, a Python set read once per token (the row's end is the end of the loop); with
    # several, a mask of the unfinished rows, whose later tokens are padding, as in transformers.
    eos_ids = None if eos_tokens is None else set(eos_tokens.flatten().tolist())
    unfinished = None
    if eos_tokens is not None and batch > 1:
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        eos_tokens = eos_tokens.to(device)

    length = prompt_length
    with torch.inference_mode():
        while True:
            scores = plan(logits, sequences, length)
            if do_sample:
                tokens = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                tokens = torch.argmax(scores, dim=-1)
            if unfinished is not None:
                tokens = torch.where(unfinished, tokens, pad_token)
            sequences.select(1, length).copy_(tokens)
            length += 1
            if reminder_length is not None and reminder_length <= length < max_length:
                reminder_length = None
                _LENGTH_LOGGER.warning_once(
                    "This is a friendly reminder - the current text generation call has exceeded the model's "
                    f"predefined maximum length ({config.max_position_embeddings}). Depending on the model, you may "
                    "observe exceptions, performance degradation, or nothing at all."
                )
            plan.record(tokens)
            if streamer is not None:
                streamer.put(tokens.cpu())
            if unfinished is not None:
                unfinished &= ~torch.isin(tokens, eos_tokens)
                if not bool(unfinished.any()):
                    break
            elif eos_ids is not None and int(tokens) in eos_ids:
                break
            if length >= max_length:
                break
            logits = decoder.step(tokens, length - 1)
            if logits.dtype != torch.float32:
                logits = logits.float()

    if streamer is not None:
        streamer.end()
    if length == max_length:
        return sequences
    return sequences[:, :length].clone()


__all__ = ["DECODING_PATHS", "LeanDecoder", "LogitsPlan", "lean_decode", "lean_decoding_loop", "supports_lean_decoding"]
