"""The lean decoding loop behind `PostformerForCausalLM.generate` (modeling/generation_postformer.py).

It must give what transformers' own `generate` gives (called explicitly as `GenerationMixin.generate(model, ...)`):
greedy decoding token for token, sampling with the same distributions (checked processor by processor on random
logits), the same streamer calls; and every option it does not implement must take transformers' loop, which
`DECODING_PATHS` tells apart.
"""

import functools

import pytest
import torch
from conftest import run_without_postformer, tiny_config
from transformers import GenerationConfig, GenerationMixin, LogitsProcessorList, pipeline
from transformers.generation.streamers import BaseStreamer

from postformer import PostformerConfig, PostformerForCausalLM
from postformer.modeling import generation_postformer
from postformer.modeling.generation_postformer import DECODING_PATHS, LogitsPlan


def random_ids(batch, length, vocab=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (batch, length), generator=generator)


def left_padded(batch=3, length=7):
    """A batch whose rows have 7, 5 and 3 real tokens, left-padded with id 0."""
    ids = random_ids(batch, length)
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 2, 4][:batch]):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def make_model(**overrides):
    # initializer_range 0.2: logits spread enough that greedy choices are not near-ties
    return PostformerForCausalLM(tiny_config(initializer_range=0.2, **overrides)).eval()


class Paths:
    """Which loop the `generate` calls inside the block took."""

    def __enter__(self):
        self.before = dict(DECODING_PATHS)
        return self

    def __exit__(self, *exc):
        self.lean = DECODING_PATHS["lean"] - self.before.get("lean", 0)
        self.fallback = DECODING_PATHS["fallback"] - self.before.get("fallback", 0)


def both(model, *args, seed=None, **kwargs):
    """(lean generate, transformers' generate) for the same call; asserts the first took the lean loop."""
    if seed is not None:
        torch.manual_seed(seed)
    with Paths() as paths:
        lean = model.generate(*args, **kwargs)
    assert (paths.lean, paths.fallback) == (1, 0), "expected the lean loop"
    if seed is not None:
        torch.manual_seed(seed)
    with Paths() as paths:
        plain = GenerationMixin.generate(model, *args, **kwargs)
    assert paths.lean == 0
    return lean, plain


# ----------------------------------------------------------------------------------------------------------------
# Greedy decoding: token for token


ARCHITECTURES = {
    "rope": dict(position_embedding_type="rope"),
    "learned": dict(position_embedding_type="learned"),
    "sinusoidal": dict(position_embedding_type="sinusoidal"),
    "none": dict(position_embedding_type="none"),
    "gqa": dict(num_key_value_heads=2),
    "mqa-qk-norm-relu2": dict(num_key_value_heads=1, qk_norm=True, hidden_act="relu2"),
    "untied-silu": dict(tie_word_embeddings=False, hidden_act="silu"),
    "gelu_new": dict(hidden_act="gelu_new"),
    "rope-linear": dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "rope-yarn": dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                                       "original_max_position_embeddings": 16}),
    "rope-llama3": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 2.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16}),
    "eager": dict(attn_implementation="eager"),
    # sliding windows: a ring cache of the window, prompts (7 columns) and generations (27) longer than it
    "sliding-window": dict(sliding_window=4),
    "sliding-window-2": dict(sliding_window=2),
    "sliding-mixed-gqa": dict(sliding_window=3, layer_types=["full_attention", "sliding_attention"],
                              num_key_value_heads=2),
    "sliding-learned-eager": dict(sliding_window=5, position_embedding_type="learned", attn_implementation="eager"),
    "sliding-window-wider-than-the-generation": dict(sliding_window=40),
}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_equals_transformers_generate_on_a_left_padded_batch(architecture):
    model = make_model(**ARCHITECTURES[architecture])
    ids, mask = left_padded()
    lean, plain = both(model, ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
    assert lean.shape == (3, 27)
    assert lean.tolist() == plain.tolist()


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_without_attention_mask_or_prompt(batch):
    model = make_model()
    lean, plain = both(model, random_ids(batch, 5), max_new_tokens=9, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
    assert lean.tolist() == plain.tolist()
    # no prompt at all: generate starts from bos
    lean, plain = both(model, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0, bos_token_id=1)
    assert lean.tolist() == plain.tolist() and lean.shape == (1, 7)


def test_end_tokens_finish_rows_with_padding_and_stop_when_all_have_ended():
    model = make_model()
    ids, mask = left_padded()
    free = GenerationMixin.generate(model, ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                    eos_token_id=None, pad_token_id=0)
    # an end token that row 0 generates early and row 1 later (or never): rows end at different steps
    new = free[:, ids.shape[1]:].tolist()
    eos = next(token for token in new[0][1:6] if token not in new[1][:3])
    for eos_token_id in (eos, [eos, 95], [95, eos]):
        lean, plain = both(model, ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                           eos_token_id=eos_token_id, pad_token_id=0)
        assert lean.tolist() == plain.tolist()
        assert (lean[0, ids.shape[1]:] == 0).any(), "row 0 should end and be padded"
    # batch of one: the loop ends at the end token
    lean, plain = both(model, ids[:1], max_new_tokens=20, do_sample=False, eos_token_id=[95, eos], pad_token_id=0)
    assert lean.tolist() == plain.tolist() and lean[0, -1] == eos and lean.shape[1] < ids.shape[1] + 20


def test_min_new_tokens_min_length_and_suppressed_tokens():
    model = make_model()
    ids, mask = left_padded()
    free = GenerationMixin.generate(model, ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                    eos_token_id=None, pad_token_id=0)
    first = free[0, ids.shape[1]].item()  # row 0's first choice: as an end token it would end row 0 at once
    second = free[0, ids.shape[1] + 1].item()
    cases = [
        dict(min_new_tokens=5, eos_token_id=[first, second]),
        dict(min_length=ids.shape[1] + 4, eos_token_id=first),
        dict(suppress_tokens=[first, second, 7], eos_token_id=None),
        dict(begin_suppress_tokens=[first], suppress_tokens=[second], eos_token_id=[first, 9]),
        dict(repetition_penalty=1.6, no_repeat_ngram_size=2, eos_token_id=None),
        dict(max_length=ids.shape[1] + 4, eos_token_id=None),
    ]
    for case in cases:
        options = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, **case)
        if "max_length" in case:
            del options["max_new_tokens"]
        lean, plain = both(model, ids, attention_mask=mask, **options)
        assert lean.tolist() == plain.tolist(), case


def test_a_trained_folders_generation_config(loaded):
    """Folders written by training carry eos [</s>, <sep>], pad, suppress_tokens [<pad>, <s>] and sampling
    settings in generation_config.json; generate_posts reads them."""
    from postformer.generation import generate_token_ids

    model, tokenizer = loaded
    assert model.generation_config.suppress_tokens and len(model.generation_config.eos_token_id) == 2
    prompts = ["just watched the", "so tired", ""]
    with Paths() as paths:
        greedy = generate_token_ids(model, tokenizer, prompts, max_new_tokens=15, do_sample=False)
        sampled = generate_token_ids(model, tokenizer, prompts, max_new_tokens=15, seed=3)
    assert paths.lean == 2 and paths.fallback == 0
    ids = tokenizer.pad([{"input_ids": tokenizer(p)["input_ids"]} for p in prompts], padding_side="left",
                        return_tensors="pt")
    lean, plain = both(model, ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=15,
                       do_sample=False)
    assert lean.tolist() == plain.tolist()
    lean, plain = both(model, ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=15, seed=3)
    assert lean.tolist() == plain.tolist()  # the model's own sampling settings, same seed
    assert greedy and sampled


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_and_prepacked_products_give_the_same_tokens(monkeypatch, threads):
    """Larger models multiply one row through split matrix-vector products (blocks of the weight's rows, one per
    thread) and several rows through prepacked oneDNN copies; tiny ones do not reach the size threshold, so it is
    lowered here. 3 threads: blocks that do not divide some matrices' rows evenly (fewer blocks are used)."""
    monkeypatch.setattr(generation_postformer, "PACK_MIN_BYTES", 0)
    monkeypatch.setattr(generation_postformer, "PACK_MIN_NEW_TOKENS", 1)
    made = []
    for name in ("_split_linear", "_packed_linear"):
        def spy(*args, make=getattr(generation_postformer, name), name=name):
            linear = make(*args)
            made.append((name, not isinstance(linear, functools.partial)))  # a partial of F.linear: refused
            return linear

        monkeypatch.setattr(generation_postformer, name, spy)
    model = make_model(num_key_value_heads=2)
    ids, mask = left_padded()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows, kind in ((1, "_split_linear"), (3, "_packed_linear")):
            made.clear()
            lean, plain = both(model, ids[-rows:], attention_mask=mask[-rows:], max_new_tokens=15, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
            assert lean.tolist() == plain.tolist()
            assert made == [(kind, True)] * (2 * 4 + 1), "every matrix should have taken the fast product"
    finally:
        torch.set_num_threads(previous)


def test_a_split_product_equals_f_linear():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 40, generator=generator), torch.randn(96, generator=generator)
    x = torch.randn(1, 40, generator=generator)
    for b in (None, bias):
        linear = generation_postformer._split_linear(weight, b)
        assert not isinstance(linear, functools.partial)
        torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, weight, b))
    # rows no block count divides (a prime), or a weight that is not contiguous: F.linear itself
    assert isinstance(generation_postformer._split_linear(torch.randn(97, 40), None), functools.partial)
    assert isinstance(generation_postformer._split_linear(weight.t().contiguous().t(), None), functools.partial)


@pytest.mark.parametrize("position_embedding_type", ["rope", "learned"])
def test_the_cache_grows_past_its_initial_room(monkeypatch, position_embedding_type):
    """Room for INITIAL_CAPACITY new tokens is reserved first (a large max_new_tokens cut short by an end token
    reserves no more); longer generations double it."""
    monkeypatch.setattr(generation_postformer, "INITIAL_CAPACITY", 3)
    model = make_model(position_embedding_type=position_embedding_type)
    ids, mask = left_padded()
    lean, plain = both(model, ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
    assert lean.tolist() == plain.tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes(dtype):
    model = make_model().to(dtype)
    ids, mask = left_padded()
    lean, plain = both(model, ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
    assert lean.tolist() == plain.tolist()


def test_the_decode_step_gives_the_models_logits():
    """LeanDecoder.step against the model's forward on the whole sequence, for a padded batch."""
    model = make_model(num_key_value_heads=2, qk_norm=True)
    ids, mask = left_padded()
    full = torch.cat([ids, random_ids(3, 4, seed=1)], dim=1)
    full_mask = torch.cat([mask, torch.ones(3, 4, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        position_ids = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
        expected = model(full, attention_mask=full_mask, position_ids=position_ids).logits
        prefill = model(ids, attention_mask=mask, position_ids=position_ids[:, :7], use_cache=True)
        decoder = generation_postformer.LeanDecoder(model, 3, 11, prefill.cache, mask, position_ids[:, 6])
        for column in range(7, 11):
            logits = decoder.step(full[:, column], column)
            torch.testing.assert_close(logits, expected[:, column], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def test_seeded_sampling_is_reproducible_and_draws_what_transformers_draws():
    model = make_model()
    ids, mask = left_padded()
    options = dict(attention_mask=mask, max_new_tokens=15, do_sample=True, temperature=0.8, top_k=30, top_p=0.9,
                   repetition_penalty=1.2, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(5)
    first = model.generate(ids, **options)
    torch.manual_seed(5)
    again = model.generate(ids, **options)
    assert first.tolist() == again.tolist()
    torch.manual_seed(6)
    assert model.generate(ids, **options).tolist() != first.tolist()
    # the same draws as transformers' loop: same distributions, same calls to the random generator
    lean, plain = both(model, ids, seed=5, **options)
    assert lean.tolist() == plain.tolist()
    lean, plain = both(model, ids, seed=7, attention_mask=mask, max_new_tokens=10, do_sample=True,
                       num_return_sequences=3, eos_token_id=[5, 6], pad_token_id=0)
    assert lean.shape == plain.shape and lean.shape[0] == 9 and lean.tolist() == plain.tolist()


PROCESSING = [
    dict(do_sample=False),
    dict(do_sample=False, repetition_penalty=1.5, no_repeat_ngram_size=2, suppress_tokens=[4, 9]),
    dict(do_sample=True, temperature=0.7),
    dict(do_sample=True, top_k=5),
    dict(do_sample=True, top_k=0, top_p=0.8),
    dict(do_sample=True, temperature=1.3, top_k=12, top_p=0.7, repetition_penalty=1.3),
    dict(do_sample=True, temperature=0.7, top_k=0, top_p=0.9, repetition_penalty=1.2, no_repeat_ngram_size=3,
         suppress_tokens=[0, 1], begin_suppress_tokens=[10, 11], min_new_tokens=2, min_length=12),
    dict(do_sample=True, repetition_penalty=0.8, top_p=0.5),
]


@pytest.mark.parametrize("options", PROCESSING, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_processed_distribution_equals_transformers_processors(options):
    """LogitsPlan against the LogitsProcessorList that generate builds for the same options, step after step on
    random logits and a random left-padded history (the repetition penalty ignores the padding, the suppressions
    and minimum lengths switch on and off with the length)."""
    vocab, batch, prompt = 40, 3, 6
    model = make_model(vocab_size=vocab)
    config = GenerationConfig(eos_token_id=[2, 3], pad_token_id=0, **options)
    model._prepare_special_tokens(config, True, device="cpu")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (batch, prompt), generator=generator)  # few distinct ids: n-grams repeat
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    processors = model._get_logits_processor(
        generation_config=config, input_ids_seq_length=prompt, encoder_input_ids=ids, prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(), device="cpu", model_kwargs={"attention_mask": mask},
    )
    plan = LogitsPlan.from_processors(processors, vocab, torch.device("cpu"))
    assert plan is not None
    plan.start(ids)
    sequences = torch.cat([ids, torch.zeros(batch, 10, dtype=ids.dtype)], dim=1)
    for length in range(prompt, prompt + 10):
        logits = torch.randn(batch, vocab, generator=generator) * 3
        expected = processors(sequences[:, :length], logits.clone())
        actual = plan(logits.clone(), sequences, length)
        assert torch.equal(torch.isinf(actual), torch.isinf(expected)), length
        torch.testing.assert_close(actual.softmax(-1), expected.softmax(-1), rtol=1e-6, atol=1e-7)
        tokens = torch.randint(0, 12, (batch,), generator=generator)
        sequences[:, length] = tokens
        plan.record(tokens)


def test_a_processor_the_plan_does_not_implement_is_refused():
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    cpu = torch.device("cpu")
    assert LogitsPlan.from_processors([MinPLogitsWarper(0.1)], 10, cpu) is None
    assert LogitsPlan.from_processors([TopKLogitsWarper(3, filter_value=-10.0)], 10, cpu) is None
    # a processor after a warper is not an order generate builds
    temperature, suppress = TemperatureLogitsWarper(0.5), SuppressTokensLogitsProcessor([1])
    assert LogitsPlan.from_processors([temperature, suppress], 10, cpu) is None
    assert LogitsPlan.from_processors([suppress, temperature], 10, cpu) is not None


# ----------------------------------------------------------------------------------------------------------------
# Streamers and pipelines


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended += 1


def test_a_streamer_receives_the_same_tokens():
    model = make_model()
    ids = random_ids(1, 5)
    lean_streamer, plain_streamer = Recorder(), Recorder()
    options = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    with Paths() as paths:
        lean = model.generate(ids, streamer=lean_streamer, **options)
    assert paths.lean == 1
    plain = GenerationMixin.generate(model, ids, streamer=plain_streamer, **options)
    assert lean.tolist() == plain.tolist()
    assert lean_streamer.puts == plain_streamer.puts and len(lean_streamer.puts) == 9  # the prompt, then 8 tokens
    assert lean_streamer.ended == plain_streamer.ended == 1


def test_the_text_generation_pipeline_takes_the_lean_loop(loaded):
    model, tokenizer = loaded
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    with Paths() as paths:
        text = generator("just watched the", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert paths.lean == 1 and paths.fallback == 0
    ids = tokenizer("just watched the", return_tensors="pt")
    expected = GenerationMixin.generate(model, **ids, max_new_tokens=10, do_sample=False)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------------------
# Everything else: transformers' loop


class Marker(torch.nn.Module):
    def forward(self, x):
        return x


def _hooked(model):
    model.model.layers[0].mlp.register_forward_hook(lambda module, args, output: output)
    return model


def _training_with_dropout(model):
    model.config.hidden_dropout = 0.1
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    return model.train()


def _replaced_linear(model):
    class Scaled(torch.nn.Linear):  # as an adapter or a quantizer would replace a projection
        pass

    old = model.model.layers[0].self_attn.q_proj
    new = Scaled(old.in_features, old.out_features)
    new.load_state_dict(old.state_dict())
    model.model.layers[0].self_attn.q_proj = new
    return model


FALLBACKS = {
    "beams": (None, dict(num_beams=2)),
    "output_scores": (None, dict(output_scores=True, return_dict_in_generate=True)),
    "output_logits": (None, dict(output_logits=True, return_dict_in_generate=True)),
    "return_dict": (None, dict(return_dict_in_generate=True)),
    "no_cache": (None, dict(use_cache=False)),
    "static_cache": (None, dict(cache_implementation="static")),
    "custom_processor": (None, dict(logits_processor=LogitsProcessorList([lambda ids, scores: scores]))),
    "prefix_fn": (None, dict(prefix_allowed_tokens_fn=lambda batch, ids: list(range(96)))),
    "min_p": (None, dict(do_sample=True, min_p=0.1)),
    "bad_words": (None, dict(bad_words_ids=[[5]])),
    "forced_eos": (None, dict(forced_eos_token_id=2)),
    "max_time": (None, dict(max_time=60.0)),
    "model_generation_config_beams": ("beam_config", {}),
    "shaw": (dict(use_relative_position=True), {}),
    "dynamic_rope": (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}), {}),
    "hook": (_hooked, {}),
    "training_dropout": (_training_with_dropout, {}),
    "replaced_linear": (_replaced_linear, {}),
}


@pytest.mark.parametrize("name", FALLBACKS)
def test_options_the_lean_loop_does_not_implement_take_transformers_loop(name):
    change, options = FALLBACKS[name]
    model = make_model(**change) if isinstance(change, dict) else make_model()
    if callable(change):
        model = change(model)
    if change == "beam_config":
        model.generation_config = GenerationConfig(num_beams=2, pad_token_id=0)
    ids = random_ids(2, 5)
    options = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, pad_token_id=0, **options)
    options.setdefault("do_sample", False)
    torch.manual_seed(0)
    with Paths() as paths:
        out = model.generate(ids, **options)
    assert paths.lean == 0 and paths.fallback == 1
    torch.manual_seed(0)
    expected = GenerationMixin.generate(model, ids, **options)
    if model.training:  # dropout draws differ between the calls; only the shapes compare
        assert out.shape == expected.shape
    else:
        sequences = out.sequences if hasattr(out, "sequences") else out
        assert sequences.tolist() == (expected.sequences if hasattr(expected, "sequences") else expected).tolist()


def test_a_generation_past_an_absolute_position_table_is_transformers_error():
    model = make_model(position_embedding_type="learned", max_position_embeddings=16)
    ids = random_ids(1, 10)
    with Paths() as paths, pytest.raises(ValueError, match="sequence too long"):
        model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert paths.fallback == 1 and paths.lean == 0
    # one that fits the table runs lean, up to its last position
    lean, plain = both(model, ids, max_new_tokens=7, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert lean.tolist() == plain.tolist()


def test_compiled_generation_options_take_transformers_loop():
    from postformer.generation import compiled_generation_options

    model = make_model()
    options = compiled_generation_options()
    options["compile_config"]._compile_all_devices = False  # the static cache alone: no compilation here
    with Paths() as paths:
        model.generate(random_ids(1, 5), max_new_tokens=3, do_sample=False, **options)
    assert paths.fallback == 1 and paths.lean == 0


# ----------------------------------------------------------------------------------------------------------------
# Remote code


@pytest.mark.slow
def test_a_saved_folder_loaded_as_remote_code_generates_through_the_lean_loop(tmp_path):
    model = make_model(num_key_value_heads=2)
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "generation_postformer.py").is_file()
    out = run_without_postformer(
        """
import sys, torch
from transformers import AutoModelForCausalLM, GenerationMixin
model = AutoModelForCausalLM.from_pretrained("model", trust_remote_code=True).eval()
modeling = sys.modules[type(model).__module__]
assert "transformers_modules" in modeling.__name__
ids = torch.randint(4, 96, (2, 6), generator=torch.Generator().manual_seed(0))
mask = torch.ones_like(ids)
mask[1, :2] = 0
options = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
lean = model.generate(ids, **options)
assert dict(modeling.DECODING_PATHS) == {"lean": 1}, dict(modeling.DECODING_PATHS)
assert lean.tolist() == GenerationMixin.generate(model, ids, **options).tolist()
model.generate(ids, num_beams=2, **options)
assert modeling.DECODING_PATHS["fallback"] == 1
print("OK")
""",
        cwd=tmp_path,
    )
    assert out.strip().endswith("OK")


@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_without_a_full_sort_keeps_what_transformers_keeps(scale, top_p):
    """The nucleus from the top k (grown as needed: flat distributions need thousands of tokens) against
    TopPLogitsWarper's full sort, on a posts-sized vocabulary."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    for scores in (torch.randn(4, 8192, generator=generator) * scale,
                   TopKLogitsWarper(40)(None, torch.randn(4, 8192, generator=generator) * scale)):
        expected = TopPLogitsWarper(top_p)(None, scores.clone())
        actual = generation_postformer._top_p(scores.clone(), top_p, 1)
        assert torch.equal(torch.isinf(actual), torch.isinf(expected))
        torch.testing.assert_close(actual.softmax(-1), expected.softmax(-1), rtol=1e-6, atol=1e-7)
