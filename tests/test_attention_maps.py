"""Attention maps: the weights are the model's own probabilities, labels read, plots are real PNGs, the CLI."""

import json
import warnings

import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import save_tiny_model

from postformer.attention_maps import AttentionMaps, _display_label, attention_weights, plot_attention
from postformer.cli import main as cli
from postformer.model_files import load_model

TEXT = "loving the match #football 😂😂 lol"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Every way the model can see positions, and grouped-query heads: each changes what the scores contain.
VARIANTS = {
    "rope": {},
    "learned": dict(position_embedding_type="learned"),
    "sinusoidal": dict(position_embedding_type="sinusoidal"),
    "relative-only": dict(position_embedding_type="none", use_relative_position=True),
    "rope+relative": dict(use_relative_position=True),
    "gqa": dict(num_key_value_heads=2),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Model folders by variant, saved on first use."""
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = save_tiny_model(tmp_path_factory.mktemp(variant), **VARIANTS[variant])
        return cache[variant]

    return get


@pytest.fixture(scope="module")
def loaded(folders):
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = load_model(folders(variant))
        return cache[variant]

    return get


@pytest.fixture(scope="module")
def rope_maps(loaded):
    model, tokenizer = loaded("rope")
    return attention_weights(model, tokenizer, TEXT)


def direct_attentions(model, input_ids, **kwargs) -> np.ndarray:
    """What the model returns itself with output_attentions=True on the eager kernel: (batch, layers, heads,
    q, k). Switches back to the model's previous kernel."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, output_attentions=True, use_cache=False, **kwargs)
    finally:
        model.set_attn_implementation(previous)
    return torch.stack(out.attentions, dim=1).numpy()


# ----------------------------------------------------------------------------------------------------------------
# Weights


@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_are_causal_probabilities_and_the_model_is_restored(loaded, variant):
    model, tokenizer = loaded(variant)
    before = model.config._attn_implementation
    assert before == ("eager" if "relative" in variant else "sdpa")  # sdpa returns no weights: the switch matters

    maps = attention_weights(model, tokenizer, TEXT)

    length = len(tokenizer(TEXT)["input_ids"])
    assert maps.weights.shape == (2, 4, length, length)  # GQA: one map per query head, not per key/value head
    assert maps.weights.dtype == np.float32
    assert (maps.num_layers, maps.num_heads) == (2, 4)
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    upper = np.triu(np.ones((length, length), dtype=bool), k=1)
    assert np.count_nonzero(maps.weights[..., upper]) == 0  # exactly zero, not merely small
    assert maps.weights[..., ~upper].min() > 0  # every allowed key gets some weight (softmax)
    np.testing.assert_array_equal(maps.weights[:, :, 0, 0], 1.0)  # <s> can only attend to itself
    assert model.config._attn_implementation == before
    assert not model.training


@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_equal_the_models_own_output_attentions(loaded, variant):
    model, tokenizer = loaded(variant)
    maps = attention_weights(model, tokenizer, TEXT)
    expected = direct_attentions(model, torch.tensor([maps.token_ids]))[0]
    np.testing.assert_array_equal(maps.weights, expected)
    assert maps.token_ids == tokenizer(TEXT)["input_ids"]
    assert maps.token_ids[0] == tokenizer.bos_token_id and maps.tokens[0] == "<s>"


@pytest.mark.parametrize("variant", ["rope", "learned", "rope+relative"])
def test_padding_is_irrelevant(loaded, variant):
    """The post's weights are those it gets inside a left-padded batch, where padding takes no attention."""
    model, tokenizer = loaded(variant)
    maps = attention_weights(model, tokenizer, TEXT)
    assert tokenizer.pad_token_id not in maps.token_ids

    longer = tokenizer(TEXT + " and so tired of this weather")["input_ids"]
    batch = tokenizer.pad([{"input_ids": maps.token_ids}, {"input_ids": longer}], padding=True,
                          padding_side="left", return_tensors="pt")
    mask = batch["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    padded = direct_attentions(model, batch["input_ids"], attention_mask=mask, position_ids=position_ids)[0]
    pad = len(longer) - len(maps.token_ids)
    assert pad > 0
    np.testing.assert_allclose(padded[:, :, pad:, pad:], maps.weights, atol=1e-6, rtol=0)
    assert np.count_nonzero(padded[:, :, pad:, :pad]) == 0


def test_training_mode_is_restored_and_dropout_is_off(tmp_path):
    folder = save_tiny_model(tmp_path / "dropout", attention_dropout=0.5, hidden_dropout=0.5)
    model, tokenizer = load_model(folder)
    expected = attention_weights(model, tokenizer, TEXT).weights
    model.train()
    first = attention_weights(model, tokenizer, TEXT).weights
    second = attention_weights(model, tokenizer, TEXT).weights
    assert model.training
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)


def test_the_implementation_is_restored_when_the_forward_fails(folders):
    model, tokenizer = load_model(folders("rope"))
    seen = []

    def failing_forward(*args, **kwargs):
        seen.append(model.config._attn_implementation)
        raise RuntimeError("out of memory, say")

    model.forward = failing_forward
    with pytest.raises(RuntimeError, match="out of memory"):
        attention_weights(model, tokenizer, TEXT)
    assert seen == ["eager"]
    assert model.config._attn_implementation == "sdpa"


def test_token_labels_read_as_text(loaded):
    model, tokenizer = loaded("rope")
    maps = attention_weights(model, tokenizer, TEXT)
    raw = tokenizer.convert_ids_to_tokens(maps.token_ids)
    assert any("Ġ" in piece or "ðŁ" in piece for piece in raw)  # byte symbols, which the labels decode
    assert maps.tokens[0] == "<s>"
    assert "".join(maps.tokens[1:]) == TEXT
    assert "😂" in maps.tokens

    # "ö" is not in the tiny vocabulary: its two bytes are two tokens, each shown as the split character.
    split = attention_weights(model, tokenizer, "wörld")
    assert split.tokens == ["<s>", "w", "ö…", "…ö", "r", "l", "d"]
    assert split.weights.shape[-1] == len(split.tokens) == 7


def test_display_labels_make_whitespace_and_missing_glyphs_visible():
    covered = frozenset(map(ord, "ab😂❤…"))
    assert _display_label(" a\n", covered) == "␣a↵"
    assert _display_label("中…", covered) == "U+4E2D…"  # no font has it: a code point, not an empty box
    assert _display_label("❤\ufe0f", covered) == "❤"  # the variation selector only picks a presentation
    assert _display_label("…\u200d…", covered) == "…U+200D…"  # a lone joiner would look empty
    assert _display_label("a b", covered, visible_spaces=False) == "a b"


# ----------------------------------------------------------------------------------------------------------------
# Errors


def test_errors_for_empty_and_too_long_text(loaded):
    model, tokenizer = loaded("rope")
    with pytest.raises(ValueError, match="text is empty"):
        attention_weights(model, tokenizer, "")
    with pytest.raises(TypeError, match="text must be a string, got list"):
        attention_weights(model, tokenizer, ["lol"])
    long_text = "so tired of this weather " * 20
    count = len(tokenizer(long_text)["input_ids"])
    assert count > 64
    with pytest.raises(ValueError) as error:
        attention_weights(model, tokenizer, long_text)
    assert str(error.value).startswith(f"text is too long: {count} tokens (with <s>), but the model's context is 64 ")
    assert model.config._attn_implementation == "sdpa"


def test_error_for_a_model_without_attention_output(folders):
    model, tokenizer = load_model(folders("rope"))
    model.set_attn_implementation = lambda implementation: None  # stays on sdpa, which returns no weights
    with pytest.raises(ValueError, match=r"PostformerForCausalLM returned no attention weights .*'sdpa'"):
        attention_weights(model, tokenizer, TEXT)


def test_error_for_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match="is not a model folder: missing config.json"):
        load_model(tmp_path)


def test_errors_for_bad_layer_head_and_output(rope_maps, tmp_path):
    output = tmp_path / "map.png"
    cases = [
        (dict(layer=2), "layer 2 is out of range: the model has 2 layers, numbered 0 to 1"),
        (dict(layer=-1, head=0), "layer -1 is out of range: the model has 2 layers, numbered 0 to 1"),
        (dict(head=4), "head 4 is out of range: the model has 4 heads, numbered 0 to 3"),
        (dict(layer=0, head=True), "head must be an integer from 0 to 3, got True"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError) as error:
            plot_attention(rope_maps, output, **options)
        assert str(error.value) == message
    with pytest.raises(ValueError, match=r"output must be a \.png file, got '.*map\.jpg'"):
        plot_attention(rope_maps, tmp_path / "map.jpg", layer=0, head=0)
    bad = AttentionMaps(tokens=rope_maps.tokens[:-1], weights=rope_maps.weights, token_ids=[], text="")
    with pytest.raises(ValueError, match="maps.weights must have shape"):
        plot_attention(bad, output)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# Plots


def read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] == 4 and image.dtype == np.float32
    return image


def test_single_map_and_grids(rope_maps, tmp_path):
    single = read_png(plot_attention(rope_maps, tmp_path / "single.png", layer=1, head=2))
    grid = read_png(rope_maps.plot(tmp_path / "sub" / "grid.png"))  # missing folders are made
    layer = read_png(plot_attention(rope_maps, tmp_path / "layer.png", layer=0))
    head = read_png(plot_attention(rope_maps, tmp_path / "head.png", head=3))

    height, width = single.shape[:2]
    assert 300 <= height <= 3000 and 300 <= width <= 3000
    assert abs(height - width) < 0.2 * width  # a square map beside a colour bar
    assert grid.shape[1] > 1.5 * grid.shape[0]  # 2 layers x 4 heads: a wide grid
    assert layer.shape[1] == grid.shape[1] and layer.shape[0] < grid.shape[0]  # one row of 4 heads
    assert head.shape[0] == grid.shape[0] and head.shape[1] < grid.shape[1] / 2  # one column of 2 layers
    for image in (single, grid, layer, head):
        assert image[..., :3].std() > 0.05  # drawn, not blank


def test_plot_of_text_without_glyphs_warns_nothing(loaded, tmp_path):
    model, tokenizer = loaded("rope")
    maps = attention_weights(model, tokenizer, "$5 and $6 中文 👩‍👧\nok")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_png(plot_attention(maps, tmp_path / "glyphs.png", layer=0, head=0))
    assert [str(w.message) for w in caught if "missing from font" in str(w.message)] == []


# ----------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_the_png_and_prints_json(folders, rope_maps, tmp_path, capsys):
    output = tmp_path / "cli.png"
    code = cli(["attention", "--model", str(folders("rope")), "--text", TEXT, "--output", str(output),
                "--layer", "1", "--head", "2", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    length = len(rope_maps.tokens)
    assert record["tokens"] == rope_maps.tokens and record["shape"] == [2, 4, length, length]
    assert (record["layer"], record["head"], record["output"]) == (1, 2, str(output))
    np.testing.assert_allclose(np.array(record["weights"]), rope_maps.weights[1, 2], atol=1e-6, rtol=0)
    read_png(output)


def test_cli_grid_and_errors(folders, tmp_path, capsys):
    model = str(folders("rope"))
    assert cli(["attention", "--model", model, "--text", TEXT, "--output", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "attention of 2 layers x 4 heads written to" in out and "tokens: '<s>' 'loving' ' the'" in out
    read_png(tmp_path / "grid.png")

    cases = [
        (["--model", model, "--text", TEXT, "--layer", "5"], "layer 5 is out of range"),
        (["--model", model, "--text", ""], "text is empty"),
        (["--model", str(tmp_path), "--text", TEXT], "is not a model folder: missing config.json"),
    ]
    for arguments, message in cases:
        assert cli(["attention", *arguments, "--output", str(tmp_path / "bad.png")]) == 2
        captured = capsys.readouterr()
        last_line = captured.err.splitlines()[-1]  # earlier lines: transformers' loading progress bar
        assert last_line.startswith("postformer attention: error: ") and message in last_line
        assert captured.out == ""
    assert not (tmp_path / "bad.png").exists()
