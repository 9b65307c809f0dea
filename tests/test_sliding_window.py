"""Sliding-window attention (`sliding_window`, `layer_types`), as Mistral, Qwen2 and Gemma have it: the same outputs
as full attention under the equivalent explicit mask, on every kernel, with a cache that keeps only the window, in
packed rows, mixed with full-attention layers, with Shaw relative positions, and through remote code."""

import copy
import importlib.util

import pytest
import torch
from conftest import run_without_postformer, tiny_config
from safetensors.torch import save_file
from transformers import DynamicCache, StaticCache

from postformer import PostformerConfig, PostformerForCausalLM
from postformer.modeling.generation_postformer import DECODING_PATHS

KERNELS = ["eager", "sdpa", "flex_attention"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
WINDOW = 4
OPTIONS = [
    pytest.param(dict(), id="rope"),
    pytest.param(dict(num_key_value_heads=2, qk_norm=True), id="gqa+qk-norm"),
    pytest.param(dict(position_embedding_type="learned"), id="learned"),
    pytest.param(dict(use_relative_position=True), id="rope+shaw"),
    pytest.param(dict(position_embedding_type="none", use_relative_position=True), id="shaw"),
    pytest.param(dict(layer_types=["sliding_attention", "full_attention"]), id="mixed"),
]


def on_kernels(options, kernels, quick_flex=("rope",)):
    """(overrides, kernel) pairs; Shaw relative positions run on the eager kernel only (others are refused). Flex
    attention runs uncompiled here (seconds a case): the options not in `quick_flex` run it in the slow tier."""
    return [pytest.param(option.values[0], kernel, id=f"{option.id}-{kernel}",
                         marks=[pytest.mark.slow] if kernel == "flex_attention" and option.id not in quick_flex else [])
            for option in options
            for kernel in kernels if kernel == "eager" or not option.values[0].get("use_relative_position")]


def random_ids(batch, length, seed=0):
    return torch.randint(4, 96, (batch, length), generator=torch.Generator().manual_seed(seed))


def window_mask(length, window, key_mask=None, sequence_ids=None):
    """The explicit additive (batch, 1, q, k) mask of a sliding window: key j is visible to query i when
    i - window < j <= i, the key is not padding and, in a packed row, both are in the same sequence."""
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    visible = ((j <= i) & (j > i - window))[None]
    if key_mask is not None:
        visible = visible & key_mask.bool()[:, None, :]
    if sequence_ids is not None:
        visible = visible & (sequence_ids[:, :, None] == sequence_ids[:, None, :])
    return torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)[:, None]


def full_attention_twin(model):
    """The same weights in a model without a window (eager kernel, which takes an explicit 4-D mask as given)."""
    config = model.config.to_dict()
    config.update(sliding_window=None, layer_types=None)
    twin = PostformerForCausalLM._from_config(PostformerConfig.from_dict(config), attn_implementation="eager")
    twin.load_state_dict(model.state_dict())
    return twin.eval()


# ----------------------------------------------------------------------------------------------------------------
# Config


def test_config_layer_types_default_from_the_window_and_round_trip(tmp_path):
    assert tiny_config().layer_types == ["full_attention"] * 2 and tiny_config().sliding_window is None
    assert tiny_config(sliding_window=8).layer_types == ["sliding_attention"] * 2
    mixed = tiny_config(sliding_window=8, layer_types=("full_attention", "sliding_attention"))
    assert mixed.layer_types == ["full_attention", "sliding_attention"]
    mixed.save_pretrained(tmp_path)
    loaded = PostformerConfig.from_pretrained(tmp_path)
    assert (loaded.sliding_window, loaded.layer_types) == (8, ["full_attention", "sliding_attention"])
    # a config.json written before sliding windows existed: every layer full
    assert PostformerConfig.from_dict({"num_hidden_layers": 3}).layer_types == ["full_attention"] * 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(sliding_window=0), r"sliding_window must be None or an integer >= 2, got 0"),
        (dict(sliding_window=1), r"sliding_window must be None or an integer >= 2, got 1"),
        (dict(sliding_window=-3), r"sliding_window must be None or an integer >= 2, got -3"),
        (dict(sliding_window=4.5), r"sliding_window must be None or an integer >= 2, got 4.5"),
        (dict(sliding_window=True), r"sliding_window must be None or an integer >= 2, got True"),
        (dict(sliding_window=4, layer_types=["sliding_attention"]), r"layer_types must list one of .* per layer "
                                                                     r"\(num_hidden_layers=2\)"),
        (dict(sliding_window=4, layer_types=["sliding_attention", "chunked_attention"]), r"layer_types must list"),
        (dict(layer_types="sliding_attention"), r"layer_types must list"),
        (dict(layer_types=["full_attention", "sliding_attention"]), r"'sliding_attention' layers but sliding_window "
                                                                    r"is None"),
    ],
)
def test_invalid_window_or_layer_types_raise_one_clear_value_error(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        tiny_config(**overrides)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------------------------------
# Outputs: the explicit mask, every kernel


@pytest.mark.parametrize("overrides,kernel", on_kernels([p for p in OPTIONS if p.id != "mixed"], KERNELS))
def test_window_equals_full_attention_with_the_explicit_mask_on_every_kernel(overrides, kernel):
    torch.manual_seed(0)
    model = PostformerForCausalLM._from_config(tiny_config(sliding_window=WINDOW, **overrides),
                                               attn_implementation=kernel).eval()
    twin = full_attention_twin(model)
    assert (model.config._attn_implementation, twin.config._attn_implementation) == (kernel, "eager")
    ids = random_ids(2, 20)
    key_mask = torch.ones_like(ids)
    key_mask[1, :5] = 0  # left padding
    position_ids = (key_mask.cumsum(-1) - 1).clamp(min=0)
    real = key_mask.bool()
    with torch.no_grad():
        got = model(ids, attention_mask=key_mask, position_ids=position_ids, use_cache=False).logits
        expected = twin(ids, attention_mask=window_mask(20, WINDOW, key_mask), position_ids=position_ids).logits
        unwindowed = twin(ids, attention_mask=key_mask, position_ids=position_ids).logits
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-4)
    # the window matters: tokens past it differ from full attention, tokens within it do not
    torch.testing.assert_close(got[0, :WINDOW], unwindowed[0, :WINDOW], atol=1e-5, rtol=1e-4)
    assert (got[0, WINDOW:] - unwindowed[0, WINDOW:]).abs().amax() > 1e-3


@pytest.mark.parametrize("kernel", [pytest.param(k, marks=pytest.mark.slow) if k == "flex_attention" else k
                                    for k in KERNELS])
def test_mixed_layer_types_use_each_layers_own_mask(kernel):
    torch.manual_seed(0)
    model = PostformerForCausalLM._from_config(
        tiny_config(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
        attn_implementation=kernel).eval()
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [WINDOW, None]
    ids = random_ids(2, 16)
    eager = PostformerForCausalLM._from_config(copy.deepcopy(model.config), attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    assert model.config._attn_implementation == kernel
    # the explicit masks by layer type (as generate prepares them): the window for layer 0, causal for layer 1
    masks = {"sliding_attention": window_mask(16, WINDOW), "full_attention": window_mask(16, 16)}
    with torch.no_grad():
        got = model(ids, use_cache=False).logits
        expected = eager(ids, attention_mask=masks, use_cache=False).logits
        all_sliding_logits = full_attention_twin(model)(ids, attention_mask=masks["sliding_attention"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got - all_sliding_logits).abs().amax() > 1e-3  # the full layer does see past the window


# ----------------------------------------------------------------------------------------------------------------
# Cache and generation past the window


@pytest.mark.parametrize("overrides", OPTIONS)
def test_cached_and_uncached_generation_agree_far_past_the_window(overrides):
    torch.manual_seed(0)
    model = PostformerForCausalLM(tiny_config(sliding_window=WINDOW, max_position_embeddings=64,
                                              initializer_range=0.1, **overrides)).eval()
    prompt = random_ids(2, 6)
    greedy = dict(max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
    # plain generate: the lean loop with its ring cache of the window (transformers' loop with Shaw positions)
    lean_runs = DECODING_PATHS["lean"]
    plain = model.generate(prompt, **greedy)
    assert DECODING_PATHS["lean"] - lean_runs == (0 if overrides.get("use_relative_position") else 1)
    assert plain.shape == (2, 46)
    # transformers' loop (output_logits): its windowed DynamicCache, no cache, and the static cache
    cached = model.generate(prompt, **greedy, return_dict_in_generate=True, output_logits=True)
    assert torch.equal(cached.sequences, plain)
    for other in (dict(use_cache=False), dict(cache_implementation="static")):
        run = model.generate(prompt, **greedy, **other, return_dict_in_generate=True, output_logits=True)
        assert torch.equal(run.sequences, plain), other
        torch.testing.assert_close(torch.stack(run.logits), torch.stack(cached.logits), atol=1e-4, rtol=1e-4)
    # and every step equals the full forward pass over the sequence so far
    with torch.no_grad():
        full = model(plain[:, :-1], use_cache=False).logits[:, 5:]
    torch.testing.assert_close(torch.stack(cached.logits, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides", [p for p in OPTIONS if p.id in ("rope", "rope+shaw", "mixed")])
def test_cache_keeps_only_the_window_and_steps_equal_the_full_forward(overrides):
    model = PostformerForCausalLM(tiny_config(sliding_window=WINDOW, **overrides)).eval()
    ids = random_ids(2, 30)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        for cache in (DynamicCache(config=model.config), StaticCache(config=model.config, max_cache_len=32)):
            steps = [model(ids[:, :9], cache=cache, use_cache=True).logits]
            steps += [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(9, 20)]
            steps.append(model(ids[:, 20:], cache=cache, use_cache=True).logits)  # several tokens at once
            torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
            assert cache.get_seq_length() == 30
            if isinstance(cache, DynamicCache):
                kept = [layer.keys.shape[-2] for layer in cache.layers]
                expected = [WINDOW - 1 if kind == "sliding_attention" else 30 for kind in model.config.layer_types]
                assert kept == expected


def test_left_padded_batch_generates_as_each_prompt_alone_past_the_window():
    model = PostformerForCausalLM(tiny_config(sliding_window=WINDOW, initializer_range=0.1)).eval()
    long_prompt, short_prompt = random_ids(1, 8, seed=1), random_ids(1, 3, seed=2)
    batch = torch.cat([long_prompt, torch.cat([torch.zeros(1, 5, dtype=torch.long), short_prompt], 1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    greedy = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    together = model.generate(batch, attention_mask=mask, **greedy)
    assert torch.equal(together[0:1], model.generate(long_prompt, **greedy))
    assert torch.equal(together[1:, 8:], model.generate(short_prompt, **greedy)[:, 3:])


# ----------------------------------------------------------------------------------------------------------------
# Packed rows: the window within each sequence


@pytest.mark.parametrize(
    "overrides,kernel", on_kernels([p for p in OPTIONS if p.id in ("rope", "learned", "rope+shaw", "mixed")], KERNELS,
                                 quick_flex=())
)
def test_packed_row_respects_each_sequence_and_the_window(overrides, kernel):
    lengths = [9, 14, 7]
    model = PostformerForCausalLM._from_config(tiny_config(sliding_window=WINDOW, max_position_embeddings=16,
                                                           **overrides), attn_implementation=kernel).eval()
    sequences = [random_ids(1, n, seed=n)[0] for n in lengths]
    row = torch.cat(sequences)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(row, position_ids=position_ids, use_cache=False).logits[0]
        alone = torch.cat([model(seq[None], use_cache=False).logits[0] for seq in sequences])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    if "layer_types" not in overrides:  # and the explicit mask: same sequence and within the window
        sequence_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
        with torch.no_grad():
            expected = full_attention_twin(model)(
                row, attention_mask=window_mask(30, WINDOW, sequence_ids=sequence_ids), position_ids=position_ids
            ).logits[0]
        torch.testing.assert_close(packed, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Saved folders and remote code


@pytest.mark.slow  # a fresh Python process without postformer
def test_saved_folder_loads_with_remote_code_and_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = PostformerForCausalLM(tiny_config(sliding_window=WINDOW, initializer_range=0.1, num_key_value_heads=2,
                                              layer_types=["sliding_attention", "full_attention"])).eval()
    model.save_pretrained(tmp_path / "model")
    ids = random_ids(2, 24)
    greedy = dict(max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        save_file({"ids": ids, "logits": model(ids).logits.contiguous(),
                   "generated": model.generate(ids[:, :4], **greedy)}, tmp_path / "expected.safetensors")
    out = run_without_postformer(
        """
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
model = AutoModelForCausalLM.from_pretrained("model", trust_remote_code=True).eval()
expected = load_file("expected.safetensors")
assert "transformers_modules" in type(model).__module__
assert model.config.sliding_window == 4 and model.config.layer_types == ["sliding_attention", "full_attention"]
with torch.no_grad():
    output = model(expected["ids"])
torch.testing.assert_close(output.logits, expected["logits"], atol=1e-6, rtol=0)
assert [type(layer) for layer in output.cache.layers] == [DynamicSlidingWindowLayer, DynamicLayer]
greedy = dict(max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
assert torch.equal(model.generate(expected["ids"][:, :4], **greedy), expected["generated"])
assert torch.equal(model.generate(expected["ids"][:, :4], use_cache=False, **greedy), expected["generated"])
print("OK")
""",
        cwd=tmp_path,
    )
    assert out.strip().endswith("OK")


# ----------------------------------------------------------------------------------------------------------------
# `postformer train` flags


def test_train_flags_set_the_window_and_layer_types():
    from conftest import TINY_POSTS

    from postformer.cli import _expand_config, _parse, build_parser
    from postformer.tokenization import train_tokenizer
    from postformer.training.arguments import dataclasses_from_namespace
    from postformer.training.run import build_model_config

    tokenizer = train_tokenizer(TINY_POSTS, vocab_size=300, show_progress=False)
    parser = build_parser()

    def model_config(*flags):
        job, _ = dataclasses_from_namespace("train", _parse(parser, _expand_config(parser, ["train", *flags])))
        return build_model_config(job, tokenizer)

    assert model_config().layer_types == ["full_attention"] * 2 and model_config().sliding_window is None
    config = model_config("--sliding-window", "64")
    assert (config.sliding_window, config.layer_types) == (64, ["sliding_attention"] * 2)
    config = model_config("--sliding_window", "64", "--layer_types", "full_attention", "sliding_attention")
    assert config.layer_types == ["full_attention", "sliding_attention"]
    with pytest.raises(ValueError, match="sliding_window must be None or an integer >= 2, got 0"):
        model_config("--sliding_window", "0")
    with pytest.raises(ValueError, match="layer_types must list one of"):
        model_config("--sliding_window", "64", "--layer_types", "sliding_attention")


def test_model_card_names_the_window():
    from postformer.hub_cards.sections import architecture_rows

    def attention_row(**overrides):
        return dict(architecture_rows(tiny_config(**overrides).to_dict(), None)).get("Attention")

    assert attention_row() is None
    assert attention_row(sliding_window=8) == "sliding window of 8 tokens"
    assert attention_row(sliding_window=8, layer_types=["full_attention", "sliding_attention"]) == \
        "sliding window of 8 tokens on 1 of 2 layers (`layer_types` in config.json)"
