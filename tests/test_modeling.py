"""The model family: presets, every position option, kernels, cache, padding, heads, save/load."""

import pytest
import torch
from conftest import tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DynamicCache,
    StaticCache,
)

from postformer import (
    PostformerConfig,
    PostformerForCausalLM,
    PostformerForQuestionAnswering,
    PostformerForSequenceClassification,
    PostformerForTokenClassification,
    PostformerModel,
)
from postformer.modeling.modeling_postformer import PostformerAttention, eager_attention_forward

POSITION_OPTIONS = [
    pytest.param(dict(position_embedding_type="rope"), id="rope"),
    pytest.param(dict(position_embedding_type="sinusoidal"), id="sinusoidal"),
    pytest.param(dict(position_embedding_type="learned"), id="learned"),
    pytest.param(dict(position_embedding_type="none"), id="none"),
    pytest.param(dict(position_embedding_type="none", use_relative_position=True), id="relative"),
    pytest.param(dict(position_embedding_type="rope", use_relative_position=True), id="rope+relative"),
    pytest.param(dict(num_key_value_heads=1), id="gqa-1kv"),
    pytest.param(dict(num_key_value_heads=2, use_relative_position=True), id="gqa-2kv+relative"),
    pytest.param(dict(qk_norm=True, hidden_act="relu2", tie_word_embeddings=False, num_key_value_heads=2),
                 id="qk-norm+relu2+untied"),
]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def random_ids(batch, length, vocab=96):
    return torch.randint(4, vocab, (batch, length))  # ids 0-3 are pad/bos/eos/sep


# ----------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("preset,target", [("small", 1.2e6), ("medium", 4.8e6), ("large", 12.3e6)])
def test_preset_parameter_counts_match_the_design_table(preset, target):
    config = PostformerConfig.from_preset(preset)
    assert config.vocab_size == 8192
    count = n_params(PostformerForCausalLM(config))
    assert abs(count - target) / target <= 0.10, f"{preset}: {count} parameters"


def test_class_defaults_are_the_design_size_with_rotary_positions_and_design_preset_adds_shaw():
    for config in (PostformerConfig(), PostformerConfig.from_preset("base"), PostformerConfig.from_preset("design")):
        assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (50000, 768, 3072)
        assert (config.num_hidden_layers, config.num_attention_heads, config.max_position_embeddings) == (12, 12, 512)
        assert (config.hidden_dropout, config.attention_dropout) == (0.1, 0.1)
        assert config.position_embedding_type == "rope" and config.num_key_value_heads == 12
        assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert not PostformerConfig().use_relative_position and not PostformerConfig.from_preset("base").use_relative_position
    design = PostformerConfig.from_preset("design")
    assert design.use_relative_position and design.max_relative_position == 64
    # A config.json without the fields (as another tool might write) gets the defaults: no Shaw term.
    assert not PostformerConfig.from_dict({"hidden_size": 32, "num_attention_heads": 4}).use_relative_position


def test_preset_overrides_and_unknown_preset():
    assert PostformerConfig.from_preset("small", num_hidden_layers=3).num_hidden_layers == 3
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        PostformerConfig.from_preset("huge")


def test_design_names_map_to_standard_names():
    config = PostformerConfig(
        vocab_size=100, d_model=64, d_ff=128, num_layers=3, num_heads=8, max_seq_length=128, dropout=0.2,
        use_rope=False, use_flash_attention=True, use_group_query_attention=True, use_relative_position=False,
    )
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 128, 3)
    assert (config.num_attention_heads, config.max_position_embeddings, config.hidden_dropout) == (8, 128, 0.2)
    assert config.position_embedding_type == "sinusoidal"
    assert config._attn_implementation == "sdpa"
    assert config.num_key_value_heads == 2
    assert PostformerConfig(vocab_size=100, use_rope=True).position_embedding_type == "rope"
    assert PostformerConfig(vocab_size=100, use_flash_attention=False)._attn_implementation == "eager"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(hidden_size=30, num_attention_heads=4), r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"),
        (dict(num_attention_heads=4, num_key_value_heads=3), r"num_attention_heads \(4\) must be divisible by num_key_value_heads \(3\)"),
        (dict(hidden_size=36, num_attention_heads=4), r"head dimension .* = 9 must be even with position_embedding_type='rope'"),
        (dict(position_embedding_type="alibi"), r"position_embedding_type must be one of"),
        (dict(hidden_size=0), r"hidden_size must be positive, got 0"),
        (dict(num_hidden_layers=-1), r"num_hidden_layers must be positive"),
        (dict(vocab_size=0), r"vocab_size must be positive"),
        (dict(max_position_embeddings=0), r"max_position_embeddings must be positive"),
        (dict(max_relative_position=0), r"max_relative_position must be positive"),
        (dict(intermediate_size=64.5), r"intermediate_size must be an integer, got 64.5"),
        (dict(num_attention_heads="4"), r"num_attention_heads must be an integer"),
        (dict(hidden_dropout=1.0), r"hidden_dropout must be a number in \[0, 1\), got 1.0"),
        (dict(attention_dropout=-0.1), r"attention_dropout must be a number in \[0, 1\)"),
        (dict(layer_norm_eps=0), r"layer_norm_eps must be a positive number"),
        (dict(hidden_act="swish2"), r"hidden_act must be one of"),
        (dict(use_relative_position="yes"), r"use_relative_position must be True or False"),
        (dict(pad_token_id=96), r"pad_token_id must be None or an id in \[0, vocab_size=96\)"),
    ],
)
def test_invalid_config_raises_value_error_naming_field_and_rule(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(position_embedding_type="learned", num_key_value_heads=2, use_relative_position=True)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PostformerConfig)
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}
    assert drop(loaded.to_dict()) == drop(config.to_dict())


# ----------------------------------------------------------------------------------------------------------------
# Every position option and grouped-query attention learn


@pytest.mark.parametrize("overrides", POSITION_OPTIONS)
def test_every_position_option_overfits_a_tiny_batch(overrides):
    model = PostformerForCausalLM(tiny_config(**overrides)).train()
    ids = random_ids(4, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(200):
        loss = model(ids, labels=ids).loss
        first = first if first is not None else loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.1 * first, f"loss {first:.3f} -> {loss.item():.3f}"


def test_loss_is_shifted_cross_entropy():
    model = PostformerForCausalLM(tiny_config()).eval()
    ids = random_ids(2, 12)
    out = model(ids, labels=ids)
    by_hand = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 96), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, by_hand)
    labels = ids.clone()
    labels[:, :6] = -100  # ignored positions do not count
    by_hand = torch.nn.functional.cross_entropy(out.logits[:, 5:-1].reshape(-1, 96), ids[:, 6:].reshape(-1))
    torch.testing.assert_close(model(ids, labels=labels).loss, by_hand)


def test_rotary_and_relative_positions_are_shift_invariant_absolute_ones_are_not():
    ids = random_ids(1, 10)
    shifted = torch.arange(10).unsqueeze(0) + 7
    for overrides, invariant in [
        (dict(position_embedding_type="rope"), True),
        (dict(position_embedding_type="none", use_relative_position=True), True),
        (dict(position_embedding_type="learned"), False),
        (dict(position_embedding_type="sinusoidal"), False),
    ]:
        model = PostformerForCausalLM(tiny_config(**overrides)).eval()
        same = torch.allclose(model(ids).logits, model(ids, position_ids=shifted).logits, atol=1e-5)
        assert same == invariant, overrides


def test_rotary_tables_and_the_joint_query_key_rotation_equal_llamas_rope():
    """The precomputed cos/sin tables and the one-pass rotation of queries and keys (a speed-up) give what
    transformers' Llama rotary embedding and apply_rotary_pos_emb give."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from postformer.modeling.modeling_postformer import PostformerRotaryEmbedding, apply_rotary

    config = tiny_config(position_embedding_type="rope", rope_theta=500.0)
    llama = LlamaRotaryEmbedding(LlamaConfig(hidden_size=32, num_attention_heads=4, rope_theta=500.0,
                                             max_position_embeddings=64))
    ours = PostformerRotaryEmbedding(config)
    position_ids = torch.tensor([[0, 1, 5, 63], [3, 3, 10, 40]])
    x = torch.zeros(1)
    cos, sin = ours(x, position_ids)
    llama_cos, llama_sin = llama(x, position_ids)
    torch.testing.assert_close(cos, llama_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, llama_sin, rtol=0, atol=1e-6)
    q, k = torch.randn(2, 4, 4, 8), torch.randn(2, 2, 4, 8)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    rotated = apply_rotary(torch.cat([q, k], dim=1), cos, sin)
    torch.testing.assert_close(rotated, torch.cat([expected_q, expected_k], dim=1), rtol=0, atol=0)


def test_relative_attention_matches_shaw_formula_written_out():
    config = tiny_config(use_relative_position=True, position_embedding_type="none", max_relative_position=3)
    attention = PostformerAttention(config, layer_idx=0).eval()
    torch.nn.init.normal_(attention.relative_positions.key_embeddings.weight)
    torch.nn.init.normal_(attention.relative_positions.value_embeddings.weight)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    mask = torch.triu(torch.full((7, 7), float("-inf")), diagonal=1)[None, None]
    out, probs = eager_attention_forward(attention, q, k, v, mask, scaling=8**-0.5, query_positions=torch.arange(7))

    # Shaw et al. (2018), eq. 3-5, with a_ij = w_clip(j - i, R), element by element
    a_k = attention.relative_positions.key_embeddings.weight
    a_v = attention.relative_positions.value_embeddings.weight
    index = (torch.arange(7)[None, :] - torch.arange(7)[:, None]).clamp(-3, 3) + 3
    scores = (torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("bhid,ijd->bhij", q, a_k[index])) * 8**-0.5
    expected_probs = torch.softmax(scores + mask, dim=-1)
    expected = torch.einsum("bhij,bhjd->bhid", expected_probs, v) + torch.einsum("bhij,ijd->bhid", expected_probs, a_v[index])
    torch.testing.assert_close(probs, expected_probs)
    torch.testing.assert_close(out, expected.transpose(1, 2))


# ----------------------------------------------------------------------------------------------------------------
# Attention kernels and masks


@pytest.mark.parametrize("overrides", [p for p in POSITION_OPTIONS if "relative" not in p.id])
def test_eager_and_sdpa_agree(overrides):
    # a config each: _from_config sets the kernel on the config object it is given
    eager = PostformerForCausalLM._from_config(tiny_config(**overrides), attn_implementation="eager").eval()
    sdpa = PostformerForCausalLM._from_config(tiny_config(**overrides), attn_implementation="sdpa").eval()
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    ids = random_ids(3, 12)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    for kwargs in (dict(), dict(attention_mask=mask)):
        expected = eager(ids, **kwargs).logits
        got = sdpa(ids, **kwargs).logits
        keep = kwargs.get("attention_mask", mask.new_ones(mask.shape)).bool()
        torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-4)


def test_relative_positions_refuse_fused_kernels_and_default_to_eager():
    config = tiny_config(use_relative_position=True)
    assert PostformerForCausalLM(config).config._attn_implementation == "eager"
    for kernel in ("sdpa", "flex_attention"):
        with pytest.raises(ValueError, match=f"attn_implementation='{kernel}' cannot run use_relative_position=True"):
            PostformerForCausalLM._from_config(config, attn_implementation=kernel)


def test_default_kernel_is_sdpa_without_relative_positions():
    assert PostformerForCausalLM(tiny_config()).config._attn_implementation == "sdpa"


@pytest.mark.parametrize("overrides", POSITION_OPTIONS)
def test_padding_does_not_change_real_tokens_outputs(overrides):
    model = PostformerForCausalLM(tiny_config(**overrides)).eval()
    ids = random_ids(1, 9)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    torch.testing.assert_close(
        model(padded, attention_mask=mask, position_ids=position_ids).logits[:, 3:], model(ids).logits, atol=1e-5, rtol=1e-4
    )


def test_causality_future_tokens_do_not_change_past_outputs():
    model = PostformerForCausalLM(tiny_config(use_relative_position=True)).eval()
    ids = random_ids(1, 12)
    changed = ids.clone()
    changed[0, 8:] = 5
    torch.testing.assert_close(model(ids).logits[:, :8], model(changed).logits[:, :8])


def test_output_attentions_and_hidden_states():
    model = PostformerForCausalLM._from_config(tiny_config(), attn_implementation="eager").eval()
    out = model(random_ids(2, 10), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 10, 10)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 10))
    assert torch.all(out.attentions[1].triu(diagonal=1) == 0)  # causal
    assert len(out.hidden_states) == 3  # embeddings + one per layer (the last after the final norm)


def test_dict_and_tuple_outputs_agree():
    model = PostformerForCausalLM(tiny_config()).eval()
    ids = random_ids(2, 8)
    as_dict = model(ids, labels=ids)
    as_tuple = model(ids, labels=ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_logits_to_keep():
    model = PostformerForCausalLM(tiny_config()).eval()
    ids = random_ids(2, 8)
    full = model(ids).logits
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, full[:, -1:])
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, full[:, -3:])


@pytest.mark.parametrize("position_type", ["sinusoidal", "learned"])
def test_positions_past_a_position_table_are_a_clear_error(position_type):
    model = PostformerForCausalLM(tiny_config(max_position_embeddings=16, position_embedding_type=position_type)).eval()
    with pytest.raises(ValueError, match=rf"sequence too long: position 16 is past the end of the {position_type} "
                                         r"position table \(max_position_embeddings=16\)"):
        model(random_ids(1, 17))
    # Judged by positions, not by the row: two packed sequences of 12 fit a 16-position table.
    model(random_ids(1, 24), position_ids=torch.cat([torch.arange(12), torch.arange(12)])[None])


@pytest.mark.parametrize("position_type", ["rope", "none"])
def test_rotary_and_no_positions_have_no_length_limit(position_type):
    """As in Llama, a rotary model runs past max_position_embeddings (its angles have no end); the CLI still
    refuses prompts longer than the trained context."""
    model = PostformerForCausalLM(tiny_config(max_position_embeddings=16, position_embedding_type=position_type)).eval()
    assert model(random_ids(1, 24)).logits.shape == (1, 24, 96)


def test_input_ids_and_inputs_embeds_are_exclusive_and_equivalent():
    model = PostformerForCausalLM(tiny_config()).eval()
    ids = random_ids(1, 6)
    torch.testing.assert_close(model(inputs_embeds=model.get_input_embeddings()(ids)).logits, model(ids).logits)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(ids, inputs_embeds=model.get_input_embeddings()(ids))


# ----------------------------------------------------------------------------------------------------------------
# Cache and generation


@pytest.mark.parametrize("overrides", POSITION_OPTIONS)
def test_cached_and_uncached_generation_are_identical(overrides):
    model = PostformerForCausalLM(tiny_config(**overrides)).eval()
    prompt = random_ids(2, 5)
    greedy = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    cached = model.generate(prompt, **greedy)
    assert cached.shape == (2, 15)
    torch.testing.assert_close(model.generate(prompt, use_cache=False, **greedy), cached)
    torch.testing.assert_close(model.generate(prompt, cache_implementation="static", **greedy), cached)


@pytest.mark.parametrize("overrides", POSITION_OPTIONS)
def test_left_padded_batch_generates_as_each_prompt_alone(overrides):
    model = PostformerForCausalLM(tiny_config(**overrides)).eval()
    long_prompt, short_prompt = random_ids(1, 8), random_ids(1, 4)
    batch = torch.cat([long_prompt, torch.cat([torch.zeros(1, 4, dtype=torch.long), short_prompt], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    greedy = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    together = model.generate(batch, attention_mask=mask, **greedy)
    torch.testing.assert_close(together[0:1], model.generate(long_prompt, **greedy))
    torch.testing.assert_close(together[1:, 8:], model.generate(short_prompt, **greedy)[:, 4:])


def test_cache_step_equals_full_forward():
    model = PostformerForCausalLM(tiny_config(use_relative_position=True)).eval()
    ids = random_ids(2, 10)
    full = model(ids).logits
    for cache in (DynamicCache(config=model.config), StaticCache(config=model.config, max_cache_len=16)):
        first = model(ids[:, :6], cache=cache, use_cache=True)
        second = model(ids[:, 6:], cache=first.cache, use_cache=True)
        assert second.cache is cache and cache.get_seq_length() == 10
        torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, atol=1e-5, rtol=1e-4)


def test_bare_model_generates_plainly_and_posts_defaults_stop_at_end_of_post_or_separator():
    config = tiny_config()
    model = PostformerForCausalLM(config).eval()
    # A bare model: greedy decoding is the argmax, padding and <s> included; it stops at eos only.
    assert model.generation_config.eos_token_id == config.eos_token_id and not model.generation_config.suppress_tokens
    with torch.no_grad():  # make <s> (then the separator) the only likely next token
        model.model.norm.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[config.bos_token_id] = 1.0
    prompt = random_ids(1, 4)
    out = model.generate(prompt, max_new_tokens=3, do_sample=False)
    assert out[0, 4:].tolist() == [config.bos_token_id] * 3
    with torch.no_grad():
        model.lm_head.weight[config.sep_token_id] = 0.5  # second most likely
    # The posts defaults (what training writes to generation_config.json) suppress <s> and stop at <sep>.
    from postformer.tokenization import posts_generation_config, train_tokenizer

    tokenizer = train_tokenizer(["a post", "another post"], vocab_size=260, show_progress=False)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id) == (0, 1, 2, 3)
    model.generation_config = posts_generation_config(tokenizer)
    assert model.generation_config.eos_token_id == [2, 3] and model.generation_config.suppress_tokens == [0, 1]
    out = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert out.shape == (1, 5) and out[0, -1] == config.sep_token_id


def test_sampling_top_k_top_p_and_beam_search_follow_the_seed():
    model = PostformerForCausalLM(tiny_config()).eval()
    prompt = random_ids(2, 4)
    sample = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=8, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(1)
    first = model.generate(prompt, **sample)
    torch.manual_seed(1)
    torch.testing.assert_close(model.generate(prompt, **sample), first)
    beams = model.generate(prompt, num_beams=3, num_return_sequences=2, max_new_tokens=5, eos_token_id=None, pad_token_id=0)
    assert beams.shape == (4, 9)
    torch.testing.assert_close(beams[::2, :4], prompt)


# ----------------------------------------------------------------------------------------------------------------
# Heads, tying, training utilities


def test_lm_head_is_tied_and_stays_tied_after_resize():
    model = PostformerForCausalLM(tiny_config())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.resize_token_embeddings(120)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == 120 and model(random_ids(1, 5)).logits.shape[-1] == 120


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = random_ids(2, 10)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = PostformerForCausalLM(tiny_config(use_relative_position=True)).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.slow
def test_torch_compile_forward_matches_eager():
    model = PostformerForCausalLM(tiny_config()).eval()
    ids = random_ids(2, 10)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-4)


def test_initialisation_scales_residual_projections():
    model = PostformerForCausalLM(tiny_config(hidden_size=64, intermediate_size=256, num_hidden_layers=8))
    std = model.config.initializer_range
    layer = model.model.layers[0]
    assert abs(layer.mlp.up_proj.weight.std().item() - std) < 0.002
    assert abs(layer.mlp.down_proj.weight.std().item() - std / 4) < 0.001  # std / sqrt(2 * 8)
    assert torch.all(layer.self_attn.q_proj.bias == 0) and torch.all(layer.input_layernorm.weight == 1)


@pytest.mark.parametrize(
    "problem_type,labels",
    [
        ("single_label_classification", torch.tensor([0, 2, 1])),
        ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]])),
        ("regression", torch.tensor([[0.5, 1.0, -1.0], [0.0, 0.1, 0.2], [1.0, 1.0, 1.0]])),
    ],
)
def test_sequence_classification_pools_last_real_token(problem_type, labels):
    model = PostformerForSequenceClassification(tiny_config(num_labels=3, problem_type=problem_type)).eval()
    ids = random_ids(3, 8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 3)
    hidden = model.model(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out.logits, model.score(hidden[torch.arange(3), torch.tensor([7, 4, 7])]))
    expected = {
        "single_label_classification": lambda: torch.nn.functional.cross_entropy(out.logits, labels),
        "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels),
        "regression": lambda: torch.nn.functional.mse_loss(out.logits, labels),
    }[problem_type]()
    torch.testing.assert_close(out.loss, expected)


def test_classifier_loads_from_a_language_model_checkpoint(tmp_path):
    lm = PostformerForCausalLM(tiny_config())
    lm.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    assert isinstance(classifier, PostformerForSequenceClassification)
    torch.testing.assert_close(classifier.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    torch.testing.assert_close(classifier.model.layers[1].mlp.up_proj.weight, lm.model.layers[1].mlp.up_proj.weight)


# ----------------------------------------------------------------------------------------------------------------
# Save and load


@pytest.mark.parametrize("overrides", [POSITION_OPTIONS[1], POSITION_OPTIONS[5], POSITION_OPTIONS[7]])
def test_save_and_load_give_identical_logits(tmp_path, overrides):
    model = PostformerForCausalLM(tiny_config(**overrides)).eval()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_postformer.py", "modeling_postformer.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PostformerForCausalLM)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = random_ids(2, 10)
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_auto_classes_are_registered(tmp_path):
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("postformer", hidden_size=32, num_attention_heads=4), PostformerConfig)
    assert isinstance(AutoModel.from_config(config), PostformerModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), PostformerForCausalLM)
    assert isinstance(AutoModelForSequenceClassification.from_config(config), PostformerForSequenceClassification)
    assert isinstance(AutoModelForTokenClassification.from_config(config), PostformerForTokenClassification)
    assert isinstance(AutoModelForQuestionAnswering.from_config(config), PostformerForQuestionAnswering)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                                    "AutoModelForTokenClassification", "AutoModelForQuestionAnswering"}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_training_loss_without_logits_equals_the_plain_loss_and_gradients(autocast):
    """In train mode with labels the loss comes from LinearCrossEntropy (no logits tensor): loss and every
    gradient equal those of the plain path (logits, then transformers' causal-LM loss)."""
    from postformer.modeling.modeling_postformer import linear_cross_entropy

    torch.manual_seed(0)
    model = PostformerForCausalLM(tiny_config(vocab_size=300)).train()
    ids = random_ids(3, 20, vocab=300)
    labels = ids.clone()
    labels[0, :5] = -100  # ignored tokens (padding, prompts) count neither in the sum nor in the mean

    def loss_and_grads(fused: bool, **loss_kwargs):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                output = model(input_ids=ids, labels=labels, **loss_kwargs)
                assert output.logits is None
            else:
                logits = model(input_ids=ids).logits
                output = type("O", (), {"loss": model.loss_function(logits, labels, vocab_size=300, **loss_kwargs)})
        output.loss.backward()
        return output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    tolerance = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-6)
    for loss_kwargs in ({}, {"num_items_in_batch": torch.tensor(100)}):
        fused_loss, fused_grads = loss_and_grads(True, **loss_kwargs)
        plain_loss, plain_grads = loss_and_grads(False, **loss_kwargs)
        torch.testing.assert_close(fused_loss, plain_loss, **tolerance)
        for name in plain_grads:
            torch.testing.assert_close(fused_grads[name], plain_grads[name], **tolerance, msg=name)
    # Without gradients (evaluation) it gives the same loss.
    hidden = torch.randn(2, 7, 32)
    weight = torch.randn(300, 32)
    target = torch.randint(0, 300, (2, 7))
    expected = torch.nn.functional.cross_entropy((hidden[:, :-1] @ weight.t()).reshape(-1, 300), target[:, 1:].reshape(-1))
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, target), expected, rtol=1e-5, atol=1e-6)


def test_eval_mode_with_labels_returns_logits_and_the_same_loss():
    torch.manual_seed(0)
    model = PostformerForCausalLM(tiny_config())
    ids = random_ids(2, 12)
    train_loss = model.train()(input_ids=ids, labels=ids).loss
    output = model.eval()(input_ids=ids, labels=ids)
    assert output.logits is not None and output.logits.shape == (2, 12, 96)
    torch.testing.assert_close(output.loss, train_loss.detach(), rtol=1e-5, atol=1e-6)


def test_lm_head_without_gradients_equals_nn_linear():
    """Inference computes the logits as (W h^T)^T, a faster BLAS layout: the same numbers as nn.Linear."""
    model = PostformerForCausalLM(tiny_config())
    hidden = torch.randn(3, 5, 32)
    expected = torch.nn.functional.linear(hidden, model.lm_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(model.lm_head(hidden), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.lm_head(hidden), expected, rtol=0, atol=0)  # with gradients: nn.Linear itself


# ----------------------------------------------------------------------------------------------------------------
# Options from the small-model speed-run literature (off by default; measured in benchmarks/bench_recipe.py)


def test_qk_norm_is_rms_normalised_queries_and_keys_before_rotary():
    config = tiny_config(qk_norm=True)
    model = PostformerForCausalLM(config).eval()
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        attention.q_norm.weight.uniform_(0.5, 1.5)
        attention.k_norm.weight.uniform_(0.5, 1.5)
    hidden = torch.randn(2, 6, 32)
    cos, sin = model.model.rotary_emb(hidden, torch.arange(6)[None])
    captured = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured["q"], captured["k"] = query, key
        return torch.zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None

    from transformers import AttentionInterface

    AttentionInterface.register("test_capture_qk", capture)
    model.set_attn_implementation("test_capture_qk")
    with torch.no_grad():
        attention(hidden, position_embeddings=(cos, sin))
    def rms_norm(x, weight):  # the formula: x / sqrt(mean(x^2) + eps) * weight, over each head's dimensions
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.layer_norm_eps) * weight

    from postformer.modeling.modeling_postformer import apply_rotary

    with torch.no_grad():
        q = attention.q_proj(hidden).view(2, 6, 4, 8).transpose(1, 2)
        k = attention.k_proj(hidden).view(2, 6, 4, 8).transpose(1, 2)
        expected_q = apply_rotary(rms_norm(q, attention.q_norm.weight), cos, sin)
        expected_k = apply_rotary(rms_norm(k, attention.k_norm.weight), cos, sin)
    torch.testing.assert_close(captured["q"], expected_q)
    torch.testing.assert_close(captured["k"], expected_k)
    assert PostformerForCausalLM(tiny_config()).model.layers[0].self_attn.q_norm is None  # off by default


def test_relu2_feed_forward_is_relu_squared():
    model = PostformerForCausalLM(tiny_config(hidden_act="relu2"))
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.down_proj(torch.relu(mlp.up_proj(x)) ** 2))


def test_zero_initialised_output_projections_make_every_block_the_identity():
    model = PostformerForCausalLM(tiny_config(zero_init_output_projections=True)).eval()
    for layer in model.model.layers:
        for projection in (layer.self_attn.o_proj, layer.mlp.down_proj):
            assert torch.count_nonzero(projection.weight) == 0 and torch.count_nonzero(projection.bias) == 0
    ids = random_ids(2, 7)
    with torch.no_grad():
        hidden = model.model(ids, output_hidden_states=True).hidden_states
    for before, after in zip(hidden[:-2], hidden[1:-1]):  # each block adds nothing at initialisation
        torch.testing.assert_close(before, after)
    default = PostformerForCausalLM(tiny_config())
    assert torch.count_nonzero(default.model.layers[0].mlp.down_proj.weight) > 0


def test_untied_head_has_its_own_weights_and_saves_them(tmp_path):
    model = PostformerForCausalLM(tiny_config(tie_word_embeddings=False))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ids = random_ids(2, 7)
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.lm_head.weight.grad is not None and model.model.embed_tokens.weight.grad is not None
    model.save_pretrained(tmp_path)
    reloaded = PostformerForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)
    assert reloaded.lm_head.weight.data_ptr() != reloaded.model.embed_tokens.weight.data_ptr()


def test_speed_run_options_are_validated():
    with pytest.raises(ValueError, match="hidden_act must be one of gelu, gelu_new, gelu_pytorch_tanh, relu, relu2, silu"):
        tiny_config(hidden_act="swish2")
    with pytest.raises(ValueError, match="qk_norm must be True or False"):
        tiny_config(qk_norm="yes")
