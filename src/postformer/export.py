"""Export a Postformer to a stock transformers architecture, loadable with no custom code (and served natively
by engines that know the architecture, e.g. vLLM).

A Postformer with rotary positions is, function for function, a `Starcoder2ForCausalLM`: pre-norm LayerNorm with
bias, rotary positions from transformers' rope utilities, biased q/k/v/o projections, a biased two-matrix MLP
(c_fc / c_proj) with the same activation, MHA or GQA, tied or untied head. One with learned, sinusoidal (the
table written as weights) or no absolute positions (a zero table) and multi-head attention is a
`GPT2LMHeadModel` (GPT-2's Conv1D stores weights transposed, c_attn fuses q, k and v); grouped-query attention is
exported exactly by repeating each key/value head for its group of query heads. A sliding window on every layer
is Starcoder2's own `sliding_window` (same mask, same windowed cache).

Combinations no stock architecture computes are refused with one ValueError line saying why and which target
would work. The export checks its own result: the stock model's logits equal Postformer's (fp32, within 1e-5)
on random ids, and greedy decoding gives the same tokens; the checks are written in the folder's README.md.
"""

import copy
import json
from pathlib import Path

import torch

TARGETS = ("starcoder2", "gpt2")
TOLERANCE = 1e-5


def check_exportable(config, to: str) -> None:
    """Raise ValueError (one line: why, and which target would work) unless `config` exports exactly to `to`."""
    from transformers.activations import ACT2FN

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if config.use_relative_position:
        raise ValueError("cannot export a model with Shaw relative positions (use_relative_position=True): neither "
                         "starcoder2 nor gpt2 has relative position embeddings")
    if config.qk_norm:
        raise ValueError("cannot export a model with QK-norm (qk_norm=True): neither starcoder2 nor gpt2 normalises "
                         "queries and keys")
    if config.hidden_act not in ACT2FN:
        raise ValueError(f"cannot export hidden_act={config.hidden_act!r}: transformers has no activation of that "
                         "name, so neither starcoder2 nor gpt2 computes it")
    sliding = set(config.layer_types) == {"sliding_attention"}
    if "sliding_attention" in config.layer_types and not sliding:
        raise ValueError("cannot export layer_types mixing full and sliding-window attention: starcoder2 slides "
                         "every layer or none, and gpt2 has no sliding window")
    rope = config.position_embedding_type == "rope"
    if sliding and to == "gpt2":
        where = ("use --to starcoder2" if rope else "starcoder2, which slides, has rotary positions only, so no "
                 "stock target computes this model")
        raise ValueError(f"cannot export a sliding-window model to gpt2 (it attends to every earlier token); {where}")
    if to == "starcoder2" and not rope:
        raise ValueError(f"cannot export position_embedding_type={config.position_embedding_type!r} to starcoder2 "
                         "(it has rotary positions only); use --to gpt2")
    if to == "gpt2" and rope:
        raise ValueError("cannot export rotary positions to gpt2 (it has a learned position table only); use "
                         "--to starcoder2")


def starcoder2_config(config):
    from transformers import Starcoder2Config

    # every layer slides or none does (check_exportable)
    window = config.sliding_window if "sliding_attention" in config.layer_types else None
    return Starcoder2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, initializer_range=config.initializer_range,
        norm_epsilon=config.layer_norm_eps, use_cache=True, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        rope_parameters=dict(config.rope_parameters), sliding_window=window,
        attention_dropout=config.attention_dropout, residual_dropout=config.hidden_dropout,
        embedding_dropout=config.hidden_dropout, use_bias=True, tie_word_embeddings=config.tie_word_embeddings,
    )


def gpt2_config(config):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, n_inner=config.intermediate_size,
        activation_function=config.hidden_act, resid_pdrop=config.hidden_dropout, embd_pdrop=config.hidden_dropout,
        attn_pdrop=config.attention_dropout, layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range, scale_attn_weights=True, use_cache=True,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def starcoder2_weights(model) -> dict:
    """Postformer's weights under Starcoder2's names (the same layout, MLP renamed)."""
    renames = {"mlp.up_proj.": "mlp.c_fc.", "mlp.down_proj.": "mlp.c_proj."}
    weights = {}
    for name, tensor in model.state_dict().items():
        for old, new in renames.items():
            name = name.replace(old, new)
        weights[name] = tensor
    return weights


def _repeat_kv_rows(tensor, config):
    """k/v projection rows (or biases) with each key/value head repeated for the query heads of its group."""
    groups = config.num_attention_heads // config.num_key_value_heads
    heads = tensor.reshape(config.num_key_value_heads, config.head_dim, *tensor.shape[1:])
    return heads.repeat_interleave(groups, dim=0).reshape(config.hidden_size, *tensor.shape[1:])


def gpt2_weights(model) -> dict:
    """Postformer's weights under GPT-2's names: Conv1D weights transposed, q/k/v fused into c_attn (k/v heads
    repeated under GQA), the position table from the learned or sinusoidal embedding, or zeros."""
    config, body = model.config, model.model
    weights = {"transformer.wte.weight": body.embed_tokens.weight, "transformer.ln_f.weight": body.norm.weight,
               "transformer.ln_f.bias": body.norm.bias}
    if config.position_embedding_type == "learned":
        weights["transformer.wpe.weight"] = body.embed_positions.weight
    elif config.position_embedding_type == "sinusoidal":
        weights["transformer.wpe.weight"] = body.embed_positions.table
    else:  # "none": a zero table adds nothing
        weights["transformer.wpe.weight"] = torch.zeros(config.max_position_embeddings, config.hidden_size,
                                                        dtype=body.embed_tokens.weight.dtype)
    for i, layer in enumerate(body.layers):
        prefix, attn = f"transformer.h.{i}.", layer.self_attn
        k_w, v_w = _repeat_kv_rows(attn.k_proj.weight, config), _repeat_kv_rows(attn.v_proj.weight, config)
        k_b, v_b = _repeat_kv_rows(attn.k_proj.bias, config), _repeat_kv_rows(attn.v_proj.bias, config)
        weights.update({
            prefix + "ln_1.weight": layer.input_layernorm.weight, prefix + "ln_1.bias": layer.input_layernorm.bias,
            prefix + "ln_2.weight": layer.post_attention_layernorm.weight,
            prefix + "ln_2.bias": layer.post_attention_layernorm.bias,
            prefix + "attn.c_attn.weight": torch.cat([attn.q_proj.weight, k_w, v_w], dim=0).t(),
            prefix + "attn.c_attn.bias": torch.cat([attn.q_proj.bias, k_b, v_b], dim=0),
            prefix + "attn.c_proj.weight": attn.o_proj.weight.t(), prefix + "attn.c_proj.bias": attn.o_proj.bias,
            prefix + "mlp.c_fc.weight": layer.mlp.up_proj.weight.t(), prefix + "mlp.c_fc.bias": layer.mlp.up_proj.bias,
            prefix + "mlp.c_proj.weight": layer.mlp.down_proj.weight.t(),
            prefix + "mlp.c_proj.bias": layer.mlp.down_proj.bias,
        })
    weights["lm_head.weight"] = model.lm_head.weight
    return weights


def convert(model, to: str):
    """The stock model (fp32, eval mode) computing what the Postformer `model` computes."""
    from transformers import GPT2LMHeadModel, Starcoder2ForCausalLM

    config = model.config
    check_exportable(config, to)
    stock_config = starcoder2_config(config) if to == "starcoder2" else gpt2_config(config)
    stock_class = Starcoder2ForCausalLM if to == "starcoder2" else GPT2LMHeadModel
    stock = stock_class(stock_config).float().eval()
    weights = starcoder2_weights(model) if to == "starcoder2" else gpt2_weights(model)
    expected = set(stock.state_dict())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        raise ValueError(f"cannot map the weights onto {to}: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        stock.load_state_dict({k: v.detach().float().clone() for k, v in weights.items()}, strict=True)
    if config.tie_word_embeddings:
        stock.tie_weights()
    stock.generation_config = copy.deepcopy(model.generation_config)
    if to == "starcoder2":
        ours, theirs = model.model.rotary_emb, stock.model.rotary_emb
        if not (torch.equal(ours.inv_freq, theirs.inv_freq) and ours.attention_scaling == theirs.attention_scaling):
            raise ValueError(f"cannot export rope_parameters={config.rope_parameters}: starcoder2 computes other "
                             "rotary frequencies from them, so no stock target reproduces this model")
    return stock


def verify(model, stock, lengths=None, new_tokens: int = 8, seed: int = 0) -> dict:
    """Compare `stock` with the Postformer `model` (both fp32): logits on random ids of several lengths up to the
    context, and greedy decoding. Return the checks; raise ValueError when one fails."""
    config = model.config
    context = config.max_position_embeddings
    lengths = lengths or sorted({1, min(7, context), min(32, context), context})
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for length in lengths:
            ids = torch.randint(0, config.vocab_size, (2, length), generator=generator)
            ours = model(ids).logits.float()
            theirs = stock(ids).logits.float()
            worst = max(worst, (ours - theirs).abs().max().item())
        prompt_length = max(1, min(8, context - new_tokens))
        prompt = torch.randint(0, config.vocab_size, (1, prompt_length), generator=generator)
        settings = dict(max_new_tokens=min(new_tokens, context - prompt_length), do_sample=False, min_new_tokens=0,
                        eos_token_id=None, pad_token_id=config.pad_token_id)
        ours_generated = model.generate(prompt, **settings)
        theirs_generated = stock.generate(prompt, **settings)
    if worst > TOLERANCE:
        raise ValueError(f"export check failed: the exported model's logits differ from the Postformer's by "
                         f"{worst:.3g} (tolerance {TOLERANCE})")
    if not torch.equal(ours_generated, theirs_generated):
        raise ValueError("export check failed: greedy decoding of the exported model differs from the Postformer's")
    return {"lengths": list(lengths), "max_abs_logit_difference": worst,
            "greedy_tokens": int(settings["max_new_tokens"])}


def model_card(source: str, to: str, stock, checks: dict, config) -> str:
    architecture = type(stock).__name__
    positions = config.position_embedding_type + (f" ({config.rope_parameters['rope_type']})"
                                                  if config.position_embedding_type == "rope" else "")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- postformer
- {to}
---

# {Path(source).name} ({architecture})

Exported by `postformer export --to {to}` from the Postformer model `{Path(source).name}` ({config.num_hidden_layers}
layers, hidden size {config.hidden_size}, {config.num_attention_heads} heads / {config.num_key_value_heads} key-value
heads, {positions} positions, {config.hidden_act}): the same weights in fp32, rearranged
for the stock transformers architecture `{architecture}` (model_type `{stock.config.model_type}`), so no custom
code is needed to load it.

## Checks passed at export

- logits of `{architecture}` equal the Postformer's in fp32 on random token ids of lengths
  {", ".join(map(str, checks["lengths"]))} (largest difference {checks["max_abs_logit_difference"]:.2e}, tolerance
  {TOLERANCE:g});
- greedy decoding of {checks["greedy_tokens"]} tokens gives the same tokens.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
```

vLLM serves it with its native `{architecture}` implementation: `vllm serve PATH` (or `LLM(model="PATH")`).
"""


def export_model(model_dir, to: str, output_dir) -> dict:
    """Export the Postformer in `model_dir` to the stock architecture `to` ("starcoder2" or "gpt2") in
    `output_dir`: model.safetensors, config.json (stock model_type, no auto_map), generation_config.json, the
    tokenizer (AutoTokenizer, no custom code) and README.md. The result is checked against the Postformer before
    anything is written (`verify`). Return the checks."""
    from .model_files import check_model_folder, load_config, load_model
    from .saving import check_output_folder, saving

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    check_output_folder(output_dir)
    path, raw = check_model_folder(model_dir)
    if raw.get("model_type") != "postformer":
        raise ValueError(f"{str(model_dir)!r} holds a {raw.get('model_type')!r} model; export reads Postformer models")
    check_exportable(load_config(path, raw), to)  # refused before the weights are read
    model, tokenizer = load_model(model_dir, dtype=torch.float32)
    stock = convert(model, to)
    checks = verify(model, stock)
    with saving(output_dir, "the exported model") as staging:
        stock.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        tokenizer_config = Path(staging) / "tokenizer_config.json"
        values = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        for key in ("auto_map", "is_local", "local_files_only"):  # custom code, and where it was loaded from here
            values.pop(key, None)
        values["tokenizer_class"] = "PreTrainedTokenizerFast"
        tokenizer_config.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        card = model_card(str(model_dir), to, stock, checks, model.config)
        (Path(staging) / "README.md").write_text(card, encoding="utf-8")
    return {"to": to, "architecture": type(stock).__name__, **checks}


__all__ = ["TARGETS", "check_exportable", "convert", "verify", "export_model"]
