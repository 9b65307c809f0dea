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

`--to onnx` writes that stock model as one ONNX graph with its key/value cache as plain tensors (exported with
PyTorch's dynamo-based `torch.onnx.export`), so that ONNX Runtime decodes token by token; `onnx_greedy` is the
decoding loop (numpy and onnxruntime only). Its logits are checked against PyTorch's in ONNX Runtime (within 1e-4)
at the prefill and at each decoding step, and its greedy tokens against the Postformer's `generate`.
"""

import copy
import json
import logging
import warnings
from pathlib import Path

import torch

TARGETS = ("starcoder2", "gpt2", "onnx")
TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4  # ONNX Runtime's kernels sum in another order than PyTorch's


def check_exportable(config, to: str) -> None:
    """Raise ValueError (one line: why, and which target would work) unless `config` exports exactly to `to`."""
    from transformers.activations import ACT2FN

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if to == "onnx":
        to = onnx_architecture(config)
        rope = (config.rope_parameters or {}) if config.position_embedding_type == "rope" else {}
        rope_type = rope.get("rope_type")
        if rope_type in ("dynamic", "longrope"):
            raise ValueError(f"cannot export rope_type={rope_type!r} to onnx: its frequencies change with the length "
                             "of the sequence at run time, which one ONNX graph does not follow; use --to starcoder2")
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


def onnx_architecture(config) -> str:
    """The stock architecture the ONNX graph is exported from: starcoder2 for rotary positions, gpt2 for the others."""
    return "starcoder2" if config.position_embedding_type == "rope" else "gpt2"


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
        n_ctx=config.max_position_embeddings,  # n_positions' old name, which llama.cpp's GPT-2 converter reads
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


class CacheAsTensors(torch.nn.Module):
    """A stock causal LM with its key/value cache as plain tensors, the form an ONNX graph takes: in, input_ids,
    attention_mask (past and new tokens), position_ids and each layer's past key and value (batch, key-value
    heads, past length, head size; length 0 at the prefill); out, the logits and each layer's present key and
    value (the past with the new tokens appended)."""

    def __init__(self, stock):
        super().__init__()
        self.stock = stock

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        # No config: every layer keeps its whole past, as the past inputs and present outputs say.
        cache = DynamicCache()
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.stock(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = [tensor for layer in out.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return (out.logits, *present)


def onnx_io_names(num_layers: int) -> tuple[list, list]:
    """Input and output names, those of Hugging Face Optimum's decoder exports (past_key_values.0.key, ...,
    present.0.key, ...)."""
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def kv_shape(config) -> tuple[int, int]:
    """The stock model's key/value heads and head size."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return heads, config.hidden_size // config.num_attention_heads


def write_onnx(stock, path) -> None:
    """Export `stock` (fp32, eval) with its cache as tensors (`CacheAsTensors`) to the ONNX file `path`, batch,
    sequence and past lengths dynamic."""
    config = stock.config
    inputs, outputs = onnx_io_names(config.num_hidden_layers)
    heads, head_dim = kv_shape(config)
    # Example sizes other than 0 and 1, which torch.export would take for constants.
    batch, new, past_length = 2, 3, 4
    past = tuple(torch.zeros(batch, heads, past_length, head_dim) for _ in inputs[3:])
    example = (torch.zeros(batch, new, dtype=torch.long), torch.ones(batch, past_length + new, dtype=torch.long),
               torch.arange(past_length, past_length + new).expand(batch, new), past)
    batch, sequence, past_sequence = "batch_size", "sequence_length", "past_sequence_length"
    dynamic = ({0: batch, 1: sequence}, {0: batch, 1: "total_sequence_length"}, {0: batch, 1: sequence},
               tuple({0: batch, 2: past_sequence} for _ in past))
    # Protobuf holds at most 2 GB: larger weights go to a model.onnx.data file beside the graph.
    large = sum(p.numel() * p.element_size() for p in stock.parameters()) >= 2**31 - 2**26
    # The exporter logs the torchvision operators it skips and warns that axes sharing a name share a size: noise.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(CacheAsTensors(stock).eval(), example, str(path), input_names=inputs,
                              output_names=outputs, dynamic_shapes=dynamic, dynamo=True, external_data=large,
                              verbose=False)
    finally:
        registration.setLevel(level)


def onnx_greedy(folder, input_ids, attention_mask=None, max_new_tokens=20, session=None, **overrides):
    """Greedy decoding with the ONNX export in `folder` in ONNX Runtime, needing only numpy and onnxruntime.
    `input_ids` (batch, length) integers, left-padded with `attention_mask` (0 on padding) for a batch of several
    lengths. Applies, like transformers' `generate(do_sample=False)`, the folder's generation_config.json:
    eos_token_id (a row ends there; ended rows get pad_token_id), suppress_tokens and repetition_penalty;
    `overrides` replace them (eos_token_id=None: no end before max_new_tokens). Returns the prompt and the new
    tokens, (batch, length + new) int64. `session`: an onnxruntime.InferenceSession of the folder's model.onnx,
    to reuse one."""
    import json
    import os

    import numpy as np
    import onnxruntime

    if session is None:
        session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
    with open(os.path.join(folder, "generation_config.json"), encoding="utf-8") as file:
        settings = {**json.load(file), **overrides}
    eos = settings.get("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = settings.get("pad_token_id")
    pad = (eos[0] if eos else 0) if pad is None else pad
    penalty = settings.get("repetition_penalty") or 1.0
    suppress = list(settings.get("suppress_tokens") or [])

    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)  # each row counts from its first real token
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    for tensor in session.get_inputs()[3:]:  # past keys/values (batch, heads, 0, head size): nothing yet
        feed[tensor.name] = np.zeros((len(ids), tensor.shape[1], 0, tensor.shape[3]), dtype=np.float32)
    names = [tensor.name for tensor in session.get_outputs()]
    done = np.zeros(len(ids), dtype=bool)
    for _ in range(max_new_tokens):
        logits, *present = session.run(names, feed)
        scores = logits[:, -1, :].astype(np.float32)
        if penalty != 1.0:  # every earlier token, prompt included, made less likely (transformers' way)
            for row, seen in zip(scores, ids):
                seen = np.unique(seen)
                row[seen] = np.where(row[seen] < 0, row[seen] * penalty, row[seen] / penalty)
        scores[:, suppress] = -np.inf
        token = np.where(done, pad, scores.argmax(axis=1))
        ids = np.concatenate([ids, token[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((len(ids), 1), dtype=np.int64)], axis=1)
        done |= np.isin(token, eos)
        if done.all():
            break
        feed = {"input_ids": token[:, None], "attention_mask": mask, "position_ids": feed["position_ids"][:, -1:] + 1}
        feed.update((name.replace("present", "past_key_values"), tensor) for name, tensor in zip(names[1:], present))
    return ids


def verify_onnx(model, stock, folder, new_tokens: int = 8, seed: int = 0) -> dict:
    """Run the ONNX export in `folder` in ONNX Runtime against `stock` (fp32 PyTorch, itself checked against the
    Postformer `model`): the logits of a prefill (a batch of two prompts, the first left-padded, and one prompt
    as long as the context) and of each of `new_tokens` decoding steps fed ONNX Runtime's own present
    keys/values, against the stock model's for the whole sequence without a cache; then greedy decoding with
    `onnx_greedy` against the Postformer's `generate`. Return the checks; raise ValueError when one fails."""
    import numpy as np
    import onnxruntime

    config = model.config
    context = config.max_position_embeddings
    session = onnxruntime.InferenceSession(str(Path(folder) / "model.onnx"), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst, names = 0.0, [tensor.name for tensor in session.get_outputs()]
    prompt_length = max(2, min(8, context - new_tokens))
    padding = prompt_length // 2

    def positions_of(mask):  # each row counts from its first real token, as generate's position_ids do
        return (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)

    def difference(ids, mask, logits):  # ONNX Runtime's logits against PyTorch's, on the real tokens
        positions = positions_of(mask)
        with torch.no_grad():
            expected = stock(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -logits.shape[1]:]
        real = mask[:, -logits.shape[1]:].bool()
        return (torch.from_numpy(logits) - expected)[real].abs().max().item()

    def prefill(ids, mask):
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions_of(mask).numpy()}
        # past keys/values (batch, heads, 0, head size), their sizes as the graph declares them (as onnx_greedy)
        feed.update((tensor.name, np.zeros((len(ids), tensor.shape[1], 0, tensor.shape[3]), np.float32))
                    for tensor in session.get_inputs()[3:])
        return feed, session.run(names, feed)

    ids = torch.randint(0, config.vocab_size, (1, context), generator=generator)
    worst = difference(ids, torch.ones_like(ids), prefill(ids, torch.ones_like(ids))[1][0])
    ids = torch.randint(0, config.vocab_size, (2, prompt_length), generator=generator)
    mask = torch.ones_like(ids)
    ids[0, :padding], mask[0, :padding] = config.pad_token_id or 0, 0
    feed, (logits, *present) = prefill(ids, mask)
    worst = max(worst, difference(ids, mask, logits))
    steps = min(new_tokens, context - prompt_length)
    for _ in range(steps):
        token = torch.from_numpy(logits[:, -1].argmax(-1))[:, None]
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
        feed = {"input_ids": token.numpy(), "attention_mask": mask.numpy(),
                "position_ids": feed["position_ids"][:, -1:] + 1}
        feed.update((name.replace("present", "past_key_values"), tensor) for name, tensor in zip(names[1:], present))
        logits, *present = session.run(names, feed)
        worst = max(worst, difference(ids, mask, logits))
    if worst > ONNX_TOLERANCE:
        raise ValueError(f"export check failed: ONNX Runtime's logits differ from PyTorch's by {worst:.3g} "
                         f"(tolerance {ONNX_TOLERANCE})")

    prompt = torch.randint(0, config.vocab_size, (1, prompt_length), generator=generator)
    with torch.no_grad():
        expected = model.generate(prompt, do_sample=False, max_new_tokens=steps)
    greedy = onnx_greedy(folder, prompt.numpy(), max_new_tokens=steps, session=session)
    if not np.array_equal(greedy, expected.numpy()):
        raise ValueError("export check failed: greedy decoding in ONNX Runtime differs from the Postformer's generate")
    return {"max_abs_logit_difference_onnx": worst, "decoding_steps": steps,
            "greedy_tokens_onnx": greedy.shape[1] - prompt_length}


def model_card(source: str, to: str, stock, checks: dict, config) -> str:
    """The exported folder's README.md: what it was exported from, the checks it passed, and how to run it (the
    ONNX export: ONNX Runtime with `onnx_greedy`'s source; the others: transformers and vLLM)."""
    import inspect

    architecture, name = type(stock).__name__, Path(source).name
    positions = config.position_embedding_type + (f" ({config.rope_parameters['rope_type']})"
                                                  if config.position_embedding_type == "rope" else "")
    onnx = to == "onnx"
    checks_lines = [
        f"- in PyTorch, the logits of `{architecture}` equal the Postformer's in fp32 on random token ids of lengths "
        f"{', '.join(map(str, checks['lengths']))} (largest difference {checks['max_abs_logit_difference']:.2e}, "
        f"tolerance {TOLERANCE:g}), and greedy decoding of {checks['greedy_tokens']} tokens gives the same tokens;"]
    if onnx:
        checks_lines += [
            f"- in ONNX Runtime (CPU), the logits of `model.onnx` equal PyTorch's at a prefill of the whole context, "
            f"at a left-padded batch prefill and at each of {checks['decoding_steps']} decoding steps fed ONNX "
            f"Runtime's own key/value cache (largest difference {checks['max_abs_logit_difference_onnx']:.2e}, "
            f"tolerance {ONNX_TOLERANCE:g});",
            f"- greedy decoding with `onnx_greedy` (below) gives the Postformer's `generate(do_sample=False)` tokens "
            f"({checks['greedy_tokens_onnx']} tokens)."]
    if onnx:
        heads, head_dim = kv_shape(stock.config)
        use = f"""## Run with ONNX Runtime

`model.onnx` (exported with PyTorch's `torch.onnx.export(dynamo=True)`) decodes with a key/value cache. Inputs:
`input_ids`, `attention_mask` (past and new tokens, 0 on left padding) and `position_ids` (batch, length, int64),
and per layer `past_key_values.N.key` / `.value` (float32, batch x {heads} x past length x {head_dim}; past length
0 at the prefill); outputs: `logits` and `present.N.key` / `.value`, the next step's past (the names of Hugging
Face Optimum's decoder exports). A greedy loop needing only `pip install onnxruntime numpy tokenizers` (it is
`postformer.export.onnx_greedy`):

```python
{inspect.getsource(onnx_greedy).rstrip()}


from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("PATH/tokenizer.json")
ids = onnx_greedy("PATH", [tokenizer.encode("Breaking news:").ids], max_new_tokens=40)
print(tokenizer.decode(ids[0].tolist()))
```

## Load in transformers, serve with vLLM

This folder holds the ONNX graph, not PyTorch weights (config.json is `{architecture}`'s, for tools that read the
sizes). For transformers and vLLM export the same model with `postformer export --to {onnx_architecture(config)}`.
"""
    else:
        use = f"""## Load in transformers

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
print(tokenizer.decode(model.generate(**tokenizer("Breaking news:", return_tensors="pt"), max_new_tokens=40)[0]))
```

## Serve with vLLM

vLLM serves it with its native `{architecture}` implementation (no `--trust-remote-code`): `vllm serve PATH`, or
in Python `LLM(model="PATH")`.
"""
    what = f"the ONNX graph of `{architecture}`" if onnx else f"the stock transformers architecture `{architecture}`"
    newline = "\n"
    return f"""---
library_name: {"onnx" if onnx else "transformers"}
pipeline_tag: text-generation
tags:
- postformer
- {stock.config.model_type}{newline + "- onnx" if onnx else ""}
---

# {name} ({"ONNX, " if onnx else ""}{architecture})

## Exported from

Exported by `postformer export --to {to}` from the Postformer model `{name}` \
({config.num_hidden_layers} layers, hidden size {config.hidden_size}, {config.num_attention_heads} heads / \
{config.num_key_value_heads} key-value heads, {positions} positions, {config.hidden_act}): the same weights in \
fp32, rearranged for {what} (model_type `{stock.config.model_type}`), so no custom code is needed to run it.

## Checks passed at export

{newline.join(checks_lines)}

{use}"""


def export_model(model_dir, to: str, output_dir) -> dict:
    """Export the Postformer in `model_dir` to `to` in `output_dir`: "starcoder2" or "gpt2", a stock architecture
    (model.safetensors, config.json with the stock model_type and no auto_map), or "onnx", that architecture
    (starcoder2 for rotary positions, gpt2 otherwise) as model.onnx with its key/value cache as tensors; with
    generation_config.json, the tokenizer (AutoTokenizer, no custom code) and README.md. The result is checked
    against the Postformer (`verify`, and `verify_onnx` for onnx) before the folder is complete. Return the checks."""
    from .model_files import check_model_folder, load_config, load_model
    from .saving import check_output_folder, saving

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if to == "onnx":
        from ._dependencies import require

        for module, package in (("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript"), ("onnx", "onnx")):
            require(module, "--to onnx", package, extra="onnx")
    check_output_folder(output_dir)
    path, raw = check_model_folder(model_dir)
    if raw.get("model_type") != "postformer":
        raise ValueError(f"{str(model_dir)!r} holds a {raw.get('model_type')!r} model; export reads Postformer models")
    check_exportable(load_config(path, raw), to)  # refused before the weights are read
    model, tokenizer = load_model(model_dir, dtype=torch.float32)
    stock = convert(model, onnx_architecture(model.config) if to == "onnx" else to)
    checks = verify(model, stock)
    with saving(output_dir, "the exported model") as staging:
        if to == "onnx":
            stock.config.save_pretrained(staging)
            stock.generation_config.save_pretrained(staging)
        else:
            stock.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        tokenizer_config = Path(staging) / "tokenizer_config.json"
        values = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        for key in ("auto_map", "is_local", "local_files_only"):  # custom code, and where it was loaded from here
            values.pop(key, None)
        values["tokenizer_class"] = "PreTrainedTokenizerFast"
        tokenizer_config.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if to == "onnx":
            write_onnx(stock, Path(staging) / "model.onnx")
            checks.update(verify_onnx(model, stock, staging))  # ONNX Runtime reads the folder as users will
        card = model_card(str(model_dir), to, stock, checks, model.config)
        (Path(staging) / "README.md").write_text(card, encoding="utf-8")
    return {"to": to, "architecture": type(stock).__name__, **checks}


__all__ = ["TARGETS", "check_exportable", "convert", "verify", "export_model", "write_onnx", "verify_onnx",
           "onnx_greedy"]
