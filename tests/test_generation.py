"""Generation from a model folder: loading, seeds, greedy, stop tokens, length limits, batching, the CLI."""

import io
import json

import pytest
import torch

from postformer import PostformerForCausalLM
from postformer.cli import main as cli
from postformer.generation import (
    compiled_generation_options,
    find_loop,
    format_generations,
    generate_posts,
    generate_token_ids,
)
from postformer.model_files import load_model

PROMPTS = ["just watched", "", "so tired of this weather and the", "@maria"]


@pytest.fixture
def stop_model(model_dir):
    """A fresh copy whose head makes one token (set by the test) the only likely next token."""
    model, tokenizer = load_model(model_dir)

    def prefer(token_name):
        token_id = getattr(tokenizer, token_name)
        with torch.no_grad():  # logits = head . bias (the final norm's weight is zero): only token_id scores
            model.lm_head.weight.zero_()
            model.lm_head.weight[token_id] = 1.0
            model.model.norm.weight.zero_()
            model.model.norm.bias.fill_(1.0)
        return model, tokenizer, token_id

    return prefer


# ----------------------------------------------------------------------------------------------------------------
# Loading


def test_load_gives_an_eval_model_with_its_tokenizer(loaded):
    model, tokenizer = loaded
    assert isinstance(model, PostformerForCausalLM) and not model.training
    assert tokenizer.padding_side == "left"
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.sep_token_id]


def test_load_with_a_dtype(model_dir):
    model, _ = load_model(model_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown torch dtype"):
        load_model(model_dir, dtype="float7")


@pytest.mark.parametrize(
    "keep, missing",
    [
        ((), "config.json"),
        (("config.json", "model.safetensors"), "tokenizer files"),
        (("config.json", "tokenizer.json", "tokenizer_config.json"), "model weights"),
    ],
)
def test_a_folder_that_is_not_a_model_is_named_with_what_is_missing(model_dir, tmp_path, keep, missing):
    for name in keep:
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=missing) as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_a_model_without_a_language_model_head_is_refused(model_dir, tmp_path):
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["PostformerForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a language model"):
        load_model(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Seeds, greedy, lengths, stop tokens, batching


def test_the_same_seed_gives_the_same_text_and_another_seed_other_text(loaded):
    model, tokenizer = loaded
    sample = dict(max_new_tokens=20, num_return_sequences=2, temperature=1.2, top_k=0, top_p=1.0)
    first = generate_posts(model, tokenizer, PROMPTS, seed=7, **sample)
    torch.manual_seed(123)  # whatever the global state, the seed decides
    assert generate_posts(model, tokenizer, PROMPTS, seed=7, **sample) == first
    assert generate_posts(model, tokenizer, PROMPTS, seed=8, **sample) != first
    assert [len(g) for g in first] == [2] * len(PROMPTS)
    assert all(isinstance(text, str) for g in first for text in g)


def test_greedy_is_deterministic_and_returns_only_the_continuation(loaded):
    model, tokenizer = loaded
    first = generate_posts(model, tokenizer, PROMPTS, max_new_tokens=12, do_sample=False)
    torch.manual_seed(99)
    assert generate_posts(model, tokenizer, PROMPTS, max_new_tokens=12, do_sample=False, seed=3) == first
    # The text is the decoded new tokens: no prompt, no special tokens.
    ids = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=12, do_sample=False)
    assert first == [[tokenizer.decode(s, skip_special_tokens=True) for s in seqs] for seqs in ids]
    prompt_ids = tokenizer(PROMPTS[0])["input_ids"]
    full = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert ids[0][0] == full[0, len(prompt_ids) :].tolist()[: len(ids[0][0])]


def test_greedy_with_several_sequences_is_refused(loaded):
    with pytest.raises(ValueError, match=r"Greedy methods .* do not support `num_return_sequences` different than 1"):
        generate_posts(*loaded, ["hi"], do_sample=False, num_return_sequences=2)


@pytest.mark.parametrize("max_new_tokens", [1, 7])
def test_max_new_tokens_is_honoured(loaded, max_new_tokens):
    model, tokenizer = loaded
    stop = {tokenizer.eos_token_id, tokenizer.sep_token_id}
    ids = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=max_new_tokens, num_return_sequences=3, seed=0)
    lengths = [len(seq) for seqs in ids for seq in seqs]
    assert len(lengths) == 3 * len(PROMPTS) and max(lengths) == max_new_tokens
    for seq in (seq for seqs in ids for seq in seqs):
        assert 1 <= len(seq) <= max_new_tokens
        if len(seq) < max_new_tokens:  # only a stop token ends a continuation early
            assert seq[-1] in stop


@pytest.mark.parametrize("stop_token", ["sep_token_id", "eos_token_id"])
@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_stops_at_the_separator_or_end_of_post(stop_model, stop_token, do_sample):
    model, tokenizer, stop_id = stop_model(stop_token)
    ids = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=10, do_sample=do_sample, seed=0)
    assert ids == [[[stop_id]]] * len(PROMPTS)  # stopped after one token
    assert generate_posts(model, tokenizer, PROMPTS, max_new_tokens=10, do_sample=do_sample, seed=0) == [[""]] * 4


def test_a_batch_generates_as_each_prompt_alone(loaded):
    model, tokenizer = loaded
    greedy = dict(max_new_tokens=10, do_sample=False)
    together = generate_token_ids(model, tokenizer, PROMPTS, batch_size=len(PROMPTS), **greedy)
    alone = [generate_token_ids(model, tokenizer, [prompt], **greedy)[0] for prompt in PROMPTS]
    assert together == alone
    assert generate_token_ids(model, tokenizer, PROMPTS, batch_size=3, **greedy) == alone
    assert generate_posts(model, tokenizer, PROMPTS, batch_size=2, **greedy) == [
        [tokenizer.decode(seq, skip_special_tokens=True) for seq in seqs] for seqs in alone
    ]


def test_an_empty_prompt_starts_a_new_post(loaded):
    model, tokenizer = loaded
    ids = generate_token_ids(model, tokenizer, [""], max_new_tokens=5, do_sample=False)
    bos = torch.tensor([[tokenizer.bos_token_id]])
    expected = model.generate(bos, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert ids[0][0] == expected[0, 1:].tolist()[: len(ids[0][0])]


def test_a_prompt_too_long_for_the_model_is_refused_with_its_length(loaded):
    model, tokenizer = loaded
    limit = model.config.max_position_embeddings
    prompt = "just watched the match " * 4
    length = len(tokenizer(prompt)["input_ids"])
    assert length < limit
    generate_posts(model, tokenizer, ["hi", prompt], max_new_tokens=limit - length, do_sample=False)  # fits exactly
    with pytest.raises(ValueError, match=rf"prompt 2 is too long: {length} tokens .* limit of {limit}"):
        generate_posts(model, tokenizer, ["hi", prompt], max_new_tokens=limit - length + 1)
    with pytest.raises(ValueError, match=rf"prompt 1 is too long: .* limit of {limit}"):
        generate_posts(model, tokenizer, ["just watched " * 40], max_new_tokens=1)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(temperature=0), "temperature must be a number > 0"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(top_k=2.5), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(num_return_sequences=0), "num_return_sequences must be an integer >= 1"),
        (dict(repetition_penalty=0), "repetition_penalty must be a number > 0"),
        (dict(batch_size=0), "batch_size"),
        (dict(prompts=[]), "prompts is empty"),
        (dict(prompts="hello"), "prompts must be a list"),
        (dict(prompts=["ok", None]), "prompt 2 must be a string"),
    ],
)
def test_out_of_range_values_are_refused(loaded, bad, message):
    model, tokenizer = loaded
    arguments = {"prompts": ["hello"], "max_new_tokens": 3, **bad}
    with pytest.raises(ValueError, match=message):
        generate_posts(model, tokenizer, **arguments)


@pytest.mark.parametrize("ids, loop", [
    ([5, 6, 7] + [1, 2, 3, 4] * 4, {"period": 4, "repeats": 4, "start": 3}),
    ([5, 6, 7] + [1, 2, 3, 4] * 4 + [1, 2], {"period": 4, "repeats": 4, "start": 3}),  # ends part-way through
    ([9] * 20, {"period": 1, "repeats": 20, "start": 0}),
    ([8, 9] + [1, 2] * 3 + [1, 2] * 3, {"period": 2, "repeats": 6, "start": 2}),  # the shortest unit
    (list(range(30)), None),
    ([1, 2] * 5, None),  # 10 tokens: under the 12 a loop must cover
    ([1, 2, 3, 4, 5] * 2 + [6] * 4, None),  # two repeats only; a run of 4 is too short
])
def test_find_loop(ids, loop):
    assert find_loop(ids) == loop


def test_settings_not_given_come_from_the_models_generation_config_then_the_posts_defaults(model_dir, monkeypatch):
    from postformer.generation import POSTS_SAMPLING, sampling_defaults

    model, tokenizer = load_model(model_dir)
    model.generation_config.temperature, model.generation_config.no_repeat_ngram_size = 0.5, 2
    assert sampling_defaults(model) == {**POSTS_SAMPLING, "temperature": 0.5, "no_repeat_ngram_size": 2}
    seen = {}
    real_generate = model.generate

    def generate(**options):
        seen.update(options)
        return real_generate(**options)

    monkeypatch.setattr(model, "generate", generate)
    generate_posts(model, tokenizer, ["hi"], max_new_tokens=3, seed=0, top_p=0.8)
    assert seen["temperature"] == 0.5 and seen["no_repeat_ngram_size"] == 2 and seen["top_p"] == 0.8
    assert seen["top_k"] == POSTS_SAMPLING["top_k"] and seen["do_sample"] is POSTS_SAMPLING["do_sample"]
    generate_posts(model, tokenizer, ["hi"], max_new_tokens=3, do_sample=False)
    assert seen["do_sample"] is False and seen["temperature"] == 1.0  # greedy: no sampling settings reach generate


def test_repetition_penalty_changes_greedy_text(loaded):
    model, tokenizer = loaded
    plain = generate_token_ids(model, tokenizer, ["just watched"], max_new_tokens=20, do_sample=False)[0][0]
    penalised = generate_token_ids(
        model, tokenizer, ["just watched"], max_new_tokens=20, do_sample=False, repetition_penalty=100.0
    )[0][0]
    assert len(set(penalised)) > len(set(plain))  # a tiny random model repeats itself; the penalty stops it


def test_streaming_prints_the_continuation_as_returned(loaded, capsys):
    model, tokenizer = loaded
    texts = generate_posts(model, tokenizer, ["just watched"], max_new_tokens=8, do_sample=False, streamer=True)
    assert capsys.readouterr().out == texts[0][0] + "\n"
    with pytest.raises(ValueError, match="streaming needs one prompt and one sequence"):
        generate_posts(model, tokenizer, ["a", "b"], streamer=True)


# ----------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_generates_and_streams(loaded, model_dir, capsys):
    expected = generate_posts(*loaded, ["hello"], max_new_tokens=5, do_sample=False)[0][0]
    args = ["generate", "--model", str(model_dir), "--seed", "0", "--greedy", "--max-new-tokens", "5", "hello"]
    assert cli(args) == 0
    assert capsys.readouterr().out == f"prompt 1: 'hello'\n  [1] hello{expected}\n"
    args = ["generate", "--model", str(model_dir), "--greedy", "--max-new-tokens", "5", "--no-stream", "hello"]
    assert cli(args) == 0
    assert capsys.readouterr().out == format_generations(["hello"], [[expected]]) + "\n"


def test_cli_json_with_several_sequences(model_dir, capsys):
    args = ["generate", "--model", str(model_dir), "--seed", "1", "--max-new-tokens", "4",
            "--num-return-sequences", "3", "--json", "hello", ""]
    assert cli(args) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in records] == ["hello", ""]
    assert all(len(r["generations"]) == 3 and all(isinstance(g, str) for g in r["generations"]) for r in records)
    assert cli(args) == 0
    assert json.loads(capsys.readouterr().out) == records  # same seed, same text


def test_cli_prompts_file(model_dir, tmp_path, capsys, loaded):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("just watched\n\n@maria\nso tired of\n", encoding="utf-8")
    args = ["generate", "--model", str(model_dir), "--greedy", "--max-new-tokens", "6", "--batch-size", "2"]
    assert cli([*args, "--json", "--prompts-file", str(prompts_file)]) == 0
    records = json.loads(capsys.readouterr().out)
    prompts = ["just watched", "@maria", "so tired of"]
    assert records == [
        {"prompt": p, "generations": g}
        for p, g in zip(prompts, generate_posts(*loaded, prompts, max_new_tokens=6, do_sample=False))
    ]
    assert cli([*args, "--prompts-file", str(prompts_file)]) == 0  # several prompts: printed after generation
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("prompt ")] == [
        "prompt 1: 'just watched'", "prompt 2: '@maria'", "prompt 3: 'so tired of'"
    ]


def test_cli_empty_prompts_file_is_an_error(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert cli(["generate", "--model", str(model_dir), "--prompts-file", str(empty)]) == 2
    captured = capsys.readouterr()
    assert "postformer generate: error:" in captured.err and "holds no prompts" in captured.err
    assert str(empty) in captured.err and captured.out == ""


def test_cli_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert cli(["generate", "--model", str(tmp_path), "hello"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "config.json" in err and "Traceback" not in err


def test_cli_bad_sampling_value_is_an_error(model_dir, capsys):
    assert cli(["generate", "--model", str(model_dir), "--temperature", "0", "hello"]) == 2
    captured = capsys.readouterr()
    assert "temperature must be a number > 0" in captured.err and captured.out == ""


def test_cli_prompts_from_stdin_or_a_new_post(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("just watched\n@maria\n"))
    assert cli(["generate", "--model", str(model_dir), "--max-new-tokens", "3", "--json"]) == 0
    assert [r["prompt"] for r in json.loads(capsys.readouterr().out)] == ["just watched", "@maria"]

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli(["generate", "--model", str(model_dir)]) == 2
    assert "no prompts on standard input" in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    assert cli(["generate", "--model", str(model_dir), "--max-new-tokens", "3", "--json"]) == 0
    assert [r["prompt"] for r in json.loads(capsys.readouterr().out)] == [""]


@pytest.mark.slow
def test_compiled_generation_gives_the_plain_paths_text(model_dir, loaded, capsys):
    """--compile (static cache, compiled decoding step) changes the speed, not the text: greedy continuations of
    a left-padded batch equal the plain path's."""
    model, tokenizer = loaded
    expected = generate_posts(model, tokenizer, PROMPTS, do_sample=False, max_new_tokens=12)
    args = ["generate", "--model", str(model_dir), "--greedy", "--compile", "--max-new-tokens", "12", "--json", *PROMPTS]
    assert cli(args) == 0
    assert [r["generations"] for r in json.loads(capsys.readouterr().out)] == expected


def test_compiled_generation_options_turn_on_compilation_on_the_cpu(loaded):
    """compiled_generation_options sets transformers' private CompileConfig._compile_all_devices (no public switch
    compiles generation on a CPU in 5.x). If transformers renames or drops it, this fails instead of --compile
    silently running uncompiled."""
    from transformers import CompileConfig, GenerationConfig, StaticCache

    model, _ = loaded
    assert "_compile_all_devices" in vars(CompileConfig)
    options = compiled_generation_options()
    config = GenerationConfig(compile_config=options["compile_config"])
    cache = StaticCache(config=model.config, max_cache_len=8)
    assert model.device.type == "cpu" and model._valid_auto_compile_criteria({"cache": cache}, config)
    assert not model._valid_auto_compile_criteria({"cache": cache}, GenerationConfig(compile_config=CompileConfig()))


def test_ctrl_c_is_one_line_and_exit_130(model_dir, monkeypatch, capsys):
    import postformer.generation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(postformer.generation, "generate_posts", interrupted)
    assert cli(["generate", "--model", str(model_dir), "--quiet", "hello"]) == 130
    assert capsys.readouterr().err.strip() == "postformer generate: interrupted"
