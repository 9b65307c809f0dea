"""What transformers expects of any in-library causal LM, and what serving and parallel engines rely on.

Each test reproduces a behaviour of transformers' common model tests (or of an engine's contract) on Postformer:
the default architecture on every attention kernel, padding-free (packed) rows, plain `generate`, standard rotary
scaling, the token-classification and question-answering heads, tensor parallelism, the design's names as
attributes, old checkpoints and adapters, and an engine's own attention function on a packed batch.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_without_postformer, tiny_config
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AttentionInterface, AutoModelForCausalLM, DataCollatorWithFlattening, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from postformer import (
    PostformerConfig,
    PostformerForCausalLM,
    PostformerForQuestionAnswering,
    PostformerForTokenClassification,
)
from postformer.modeling.modeling_postformer import PostformerRotaryEmbedding

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KERNELS = ["eager", "sdpa", "flex_attention"]


def random_ids(batch, length, vocab=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (batch, length), generator=generator)


# ----------------------------------------------------------------------------------------------------------------
# 1. The default architecture runs on every kernel


def test_default_model_runs_on_every_kernel_and_switches_at_run_time():
    config = tiny_config(use_relative_position=PostformerConfig().use_relative_position)
    model = PostformerForCausalLM(config).eval()
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    outputs = {}
    for kernel in KERNELS:
        model.set_attn_implementation(kernel)
        assert model.config._attn_implementation == kernel
        with torch.no_grad():
            outputs[kernel] = model(ids, attention_mask=mask).logits
    for kernel in KERNELS[1:]:
        torch.testing.assert_close(outputs[kernel][0], outputs["eager"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outputs[kernel][1, 3:], outputs["eager"][1, 3:], atol=1e-5, rtol=1e-5)
    assert PostformerForCausalLM._from_config(config, attn_implementation="flex_attention").config._attn_implementation \
        == "flex_attention"


def test_design_preset_with_shaw_positions_refuses_fused_kernels_clearly():
    config = PostformerConfig.from_preset("design", vocab_size=96, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=4)
    model = PostformerForCausalLM(config)
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="cannot run use_relative_position=True"):
        model.set_attn_implementation("sdpa")


def test_folder_saved_by_postformer_0_1_loads_with_the_same_logits_and_saves_in_the_new_layout(tmp_path):
    """The fixture was saved by 0.1 (fused qkv_proj, Shaw relative positions on by default; its config.json
    carries every field). It is split into q/k/v at load time and saved back in the new layout."""
    expected = load_file(str(FIXTURES / "v0_1_expected.safetensors"))
    config = json.loads((FIXTURES / "v0_1_model" / "config.json").read_text())
    assert config["use_relative_position"] is True and config["rope_theta"] == 10000.0
    with safe_open(str(FIXTURES / "v0_1_model" / "model.safetensors"), "pt") as weights:
        assert "model.layers.0.self_attn.qkv_proj.weight" in weights.keys()

    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "v0_1_model").eval()
    assert model.config.use_relative_position and model.config.rope_parameters["rope_theta"] == 10000.0
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=1e-5)

    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
    assert "model.layers.0.self_attn.q_proj.weight" in keys and not any("qkv_proj" in key for key in keys)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        again = reloaded(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    torch.testing.assert_close(again, expected["logits"], atol=1e-5, rtol=1e-5)


def test_lora_adapter_of_0_1_is_upgraded_exactly(tmp_path):
    from peft import PeftModel

    from postformer.cli import main
    from postformer.training.finetune import upgrade_adapter

    expected = load_file(str(FIXTURES / "v0_1_expected.safetensors"))
    out = tmp_path / "adapter"
    assert main(["upgrade-adapter", str(FIXTURES / "v0_1_adapter"), "--model", str(FIXTURES / "v0_1_model"),
                 "--output-dir", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / "v0_1_model").eval()
    model = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    torch.testing.assert_close(logits, expected["adapter_logits"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not target qkv_proj"):
        upgrade_adapter(out, tmp_path / "again", model_dir=FIXTURES / "v0_1_model")


# ----------------------------------------------------------------------------------------------------------------
# 2. Padding-free batches: sequences packed in one row, positions restarting per sequence

POSITIONS = [
    dict(position_embedding_type="rope"),
    dict(position_embedding_type="sinusoidal"),
    dict(position_embedding_type="learned"),
    dict(position_embedding_type="none"),
    dict(position_embedding_type="rope", use_relative_position=True),
    dict(position_embedding_type="none", use_relative_position=True),
]


def _packed(lengths, vocab=96):
    sequences = [random_ids(1, n, vocab, seed=n)[0] for n in lengths]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    return sequences, torch.cat(sequences)[None], position_ids


@pytest.mark.parametrize(
    "positions,kernel",
    # Shaw relative positions run on the eager kernel only (other kernels are refused, tested above).
    [(p, k) for p in POSITIONS for k in ("eager", "sdpa") if k == "eager" or not p.get("use_relative_position")],
    ids=lambda v: v if isinstance(v, str) else "+".join(str(x) for x in v.values()),
)
def test_packed_row_equals_sequences_run_one_by_one(positions, kernel):
    # 16 positions: each sequence fits, the packed row (30 tokens) would not fit a position table.
    config = tiny_config(max_position_embeddings=16, **positions)
    model = PostformerForCausalLM._from_config(config, attn_implementation=kernel).eval()
    sequences, row, position_ids = _packed([9, 14, 7])
    with torch.no_grad():
        # No cache, as in training and in engines: like Llama's, the mask only looks for packed sequences then.
        packed = model(row, position_ids=position_ids, use_cache=False).logits[0]
        alone = torch.cat([model(seq[None]).logits[0] for seq in sequences])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_data_collator_with_flattening_trains_like_padded_batches():
    """transformers' padding-free collator (what TRL's padding_free=True uses): the loss equals the padded
    batch's loss over the same tokens."""
    model = PostformerForCausalLM(tiny_config(max_position_embeddings=16)).eval()
    sequences, _, _ = _packed([9, 14, 7])
    features = [{"input_ids": seq.tolist()} for seq in sequences]
    flat = DataCollatorWithFlattening(return_tensors="pt")(features)
    assert flat["position_ids"].tolist()[0][:10] == list(range(9)) + [0]
    padded_ids = torch.zeros(3, 14, dtype=torch.long)
    labels = torch.full((3, 14), -100)
    mask = torch.zeros(3, 14, dtype=torch.long)
    for i, seq in enumerate(sequences):
        padded_ids[i, : len(seq)], labels[i, : len(seq)], mask[i, : len(seq)] = seq, seq, 1
    with torch.no_grad():
        flat_loss = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], labels=flat["labels"],
                          use_cache=False).loss
        padded_loss = model(input_ids=padded_ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(flat_loss, padded_loss, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# 5. Serving engines: their own attention function, one packed row, no attention mask


def _per_sequence_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An engine's attention function, as vLLM's and SGLang's transformers backends plug in: it ignores
    `attention_mask` and finds the sequences of the packed row from the `position_ids` it is passed (vLLM uses
    its own metadata the same way), then runs causal attention within each."""
    position_ids = kwargs["position_ids"][0]
    starts = (position_ids == 0).nonzero().flatten().tolist() + [position_ids.shape[0]]
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    outputs = []
    for start, end in zip(starts[:-1], starts[1:]):
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True, scale=scaling))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def test_engine_attention_function_on_a_packed_batch_matches_separate_runs():
    AttentionInterface.register("test_engine_packed", _per_sequence_attention)
    assert PostformerForCausalLM._supports_attention_backend
    config = tiny_config(num_key_value_heads=2)
    model = PostformerForCausalLM(config).eval()
    sequences, row, position_ids = _packed([5, 11, 8])
    with torch.no_grad():
        alone = torch.cat([model(seq[None]).logits[0] for seq in sequences])
        model.set_attn_implementation("test_engine_packed")
        packed = model(row, position_ids=position_ids, use_cache=False).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# 3. generate on a bare model is plain


def test_greedy_generate_returns_the_argmax_tokens_including_special_ids():
    """transformers' test_training_overfit generates a memorised sequence that starts with id 1 (<s> here):
    nothing in the class may suppress or stop at ids of its own."""
    model = PostformerForCausalLM(tiny_config(initializer_range=0.2)).eval()
    with torch.no_grad():  # raise the logit of <s> (id 1) by about 4 at every position
        bos_row = model.lm_head.weight[1]
        model.model.norm.bias.copy_(4 * bos_row / bos_row.dot(bos_row))
    ids = random_ids(2, 5)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    expected = ids
    with torch.no_grad():
        for _ in range(8):
            expected = torch.cat([expected, model(expected).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == expected.tolist()
    assert 1 in out[:, 5:].flatten().tolist(), "the test needs <s> among the argmax tokens"


# ----------------------------------------------------------------------------------------------------------------
# 4. What Llama has: rotary scaling, heads, parallelism plans, the design's names

ROPE_PARAMETERS = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 16},
    {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
     "original_max_position_embeddings": 16},
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 2.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
]


@pytest.mark.parametrize("rope_parameters", ROPE_PARAMETERS, ids=lambda p: p["rope_type"])
def test_rotary_scaling_matches_llama(rope_parameters):
    """cos/sin of every rope type equal Llama's for the same parameters, also past max_position_embeddings (where
    dynamic and longrope rescale); a scaled model runs at 1.5x its context."""
    config = tiny_config(hidden_size=32, num_attention_heads=4, max_position_embeddings=16,
                         rope_parameters=dict(rope_parameters))
    llama = LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=16,
                        rope_parameters=dict(rope_parameters))
    ours, theirs = PostformerRotaryEmbedding(config), LlamaRotaryEmbedding(llama)
    x = torch.zeros(1, dtype=torch.float32)
    for length in (8, 24):
        position_ids = torch.arange(length)[None]
        for mine, reference in zip(ours(x, position_ids), theirs(x, position_ids)):
            torch.testing.assert_close(mine, reference)
    model = PostformerForCausalLM(config).eval()
    with torch.no_grad():
        assert torch.isfinite(model(random_ids(1, 24)).logits).all()


def test_dynamic_rope_cached_generation_behaves_as_llama():
    """Under dynamic scaling transformers does not re-rotate cached keys, so cached and uncached decoding past the
    context differ for Llama too; Postformer differs in the same way (same rotary frequencies at every step)."""
    config = tiny_config(max_position_embeddings=8, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                                      "factor": 2.0})
    model = PostformerForCausalLM(config).eval()
    rotary = model.model.rotary_emb
    llama = LlamaRotaryEmbedding(LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=8,
                                             rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                              "factor": 2.0}))
    prompt = random_ids(1, 6)
    model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    # The same sequence of calls that generation makes, on Llama's rotary module: its state ends the same.
    x = torch.zeros(1)
    llama(x, torch.arange(6)[None])
    for position in range(6, 11):
        llama(x, torch.tensor([[position]]))
    torch.testing.assert_close(rotary.inv_freq, llama.inv_freq)
    assert rotary.max_seq_len_cached == llama.max_seq_len_cached


def test_unknown_rope_type_is_a_clear_error():
    with pytest.raises(ValueError, match=r"rope_parameters\['rope_type'\] must be 'default' or one of"):
        tiny_config(rope_parameters={"rope_type": "spiral", "rope_theta": 10000.0})


def test_legacy_rope_theta_becomes_rope_parameters():
    config = PostformerConfig.from_dict({"hidden_size": 32, "num_attention_heads": 4, "rope_theta": 500.0})
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 500.0}


@pytest.mark.slow
def test_token_classification_and_question_answering_heads(tmp_path):
    config = tiny_config(num_labels=3)
    tagger = PostformerForTokenClassification(config).eval()
    ids = random_ids(2, 7)
    labels = torch.randint(0, 3, (2, 7))
    labels[0, :2] = -100
    out = tagger(ids, labels=labels)
    assert out.logits.shape == (2, 7, 3)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 3), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)

    qa = PostformerForQuestionAnswering(config).eval()
    out = qa(ids, start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([2, 6]))
    assert out.start_logits.shape == out.end_logits.shape == (2, 7)
    loss = (torch.nn.functional.cross_entropy(out.start_logits, torch.tensor([1, 3]))
            + torch.nn.functional.cross_entropy(out.end_logits, torch.tensor([2, 6]))) / 2
    torch.testing.assert_close(out.loss, loss)

    # Saved with its remote code and auto_map, both load in a process that cannot import postformer.
    tagger.save_pretrained(tmp_path / "tagger")
    qa.save_pretrained(tmp_path / "qa")
    saved = json.loads((tmp_path / "tagger" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForTokenClassification"] == "modeling_postformer.PostformerForTokenClassification"
    assert saved["auto_map"]["AutoModelForQuestionAnswering"] == "modeling_postformer.PostformerForQuestionAnswering"
    with torch.no_grad():
        tag_logits, start_logits = tagger(ids).logits, qa(ids).start_logits
    torch.save({"ids": ids, "tag": tag_logits, "start": start_logits}, tmp_path / "expected.pt")
    printed = run_without_postformer("""
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification
expected = torch.load("expected.pt")
tagger = AutoModelForTokenClassification.from_pretrained("tagger", trust_remote_code=True).eval()
qa = AutoModelForQuestionAnswering.from_pretrained("qa", trust_remote_code=True).eval()
with torch.no_grad():
    print(type(tagger).__name__, torch.allclose(tagger(expected["ids"]).logits, expected["tag"], atol=1e-6),
          type(qa).__name__, torch.allclose(qa(expected["ids"]).start_logits, expected["start"], atol=1e-6))
""", cwd=tmp_path)
    assert printed.split() == ["PostformerForTokenClassification", "True", "PostformerForQuestionAnswering", "True"]


def test_design_names_are_readable_and_writable_attributes():
    config = tiny_config()
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads) == (32, 64, 2, 4)
    assert (config.max_seq_length, config.dropout) == (64, 0.0)
    config.d_model = 48
    assert config.hidden_size == 48


def test_parallelism_plans_cover_every_projection():
    config = PostformerConfig()
    model = PostformerForCausalLM(tiny_config())
    linears = {name.split(".")[-1] for name, module in model.model.layers[0].named_modules()
               if isinstance(module, torch.nn.Linear)}
    planned = {key.split(".")[-1] for key in config.base_model_tp_plan}
    assert linears == planned == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}
    assert PostformerForCausalLM._tp_plan == {"lm_head": "colwise_gather_output"}
    assert set(config.base_model_pp_plan) == {"embed_tokens", "layers", "norm"}
