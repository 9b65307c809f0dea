"""Compression: bf16/fp16 and int8 folders that load back close to the original, pruning to the exact sparsity,
the checkpoint's contents, errors, and the `compress` command."""

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
import torch
from conftest import TINY_POSTS, run_without_postformer, save_tiny_model, tiny_config
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from postformer import PostformerForCausalLM
from postformer.cli import main as cli
from postformer.compression import (
    compress_model,
    format_report,
    prunable_layers,
    prune_model,
    quantize_int8,
    sparsity,
    to_dtype,
    weights_size,
)
from postformer.evaluation import evaluate_posts
from postformer.model_files import load_model

EVAL_POSTS = TINY_POSTS[::3]  # 20 posts
QUICK = dict(max_posts=20, new_tokens=4, speed_repeats=1)  # the measurements, as small as they go

# Relative change of perplexity allowed against the fp32 original, on EVAL_POSTS. Measured on the trained tiny
# model below (torch 2.13 CPU): bf16 -0.02%, fp16 -0.005%, int8 -0.003%, bf16 + int8 +0.05%. A wrong
# conversion is far off: 4-bit per-row rounding of the same weights gives +0.8%, fp8 +0.4%, scaling them by
# 1.1 +0.7%; a random LM head (the tied head lost on saving) gives +100s of %.
TOLERANCE = {"bf16": 0.002, "fp16": 0.0005, "int8": 0.001, "bf16+int8": 0.002}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model, trained for a few steps on TINY_POSTS (perplexity ~2): a random model predicts nearly
    uniformly, and its perplexity hardly moves whatever is done to the weights."""
    folder = save_tiny_model(tmp_path_factory.mktemp("model"))
    model, tokenizer = load_model(folder)
    batch = tokenizer(TINY_POSTS, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(40):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def posts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("posts") / "posts.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in EVAL_POSTS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def original(model_dir):
    model, tokenizer = load_model(model_dir)
    return model, tokenizer, evaluate_posts(model, tokenizer, EVAL_POSTS)["perplexity"]


def _tiny_model():
    torch.manual_seed(0)
    return PostformerForCausalLM(tiny_config(initializer_range=0.1)).eval()


# ---------------------------------------------------------------------------------------------------------------
# Half precision and int8: saved, loaded back with from_pretrained, close to the original


@pytest.mark.parametrize("name, options, dtype", [
    ("bf16", {"dtype": "bf16"}, torch.bfloat16),
    ("fp16", {"dtype": "fp16"}, torch.float16),
    ("int8", {"int8": True}, torch.float32),
    ("bf16+int8", {"dtype": "bf16", "int8": True}, torch.bfloat16),
])
def test_compressed_folder_loads_back_close_to_the_original(model_dir, posts_file, original, tmp_path, name,
                                                            options, dtype):
    _, tokenizer, perplexity = original
    out = tmp_path / name
    report = compress_model(model_dir, out, data=posts_file, **options, **QUICK)

    loaded = AutoModelForCausalLM.from_pretrained(out)  # nothing for the compression (postformer is imported here)
    assert loaded.dtype == dtype
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied, in floating point
    assert loaded.lm_head.weight.dtype == dtype
    kinds = {type(layer.weight).__name__ for layer in prunable_layers(loaded).values()}
    assert kinds == ({"Int8Tensor"} if options.get("int8") else {"Parameter"})

    after = evaluate_posts(loaded, tokenizer, EVAL_POSTS)["perplexity"]
    assert after == pytest.approx(perplexity, rel=TOLERANCE[name])
    # the report measured the same thing
    assert report["perplexity"]["before"] == pytest.approx(perplexity, rel=1e-6)
    assert report["perplexity"]["after"] == pytest.approx(after, rel=1e-6)
    assert report["evaluation"]["after"]["posts"] == len(EVAL_POSTS)
    assert report["weights_bytes"] == {"before": weights_size(model_dir), "after": weights_size(out)}
    assert json.loads((out / "compression_report.json").read_text()) == json.loads(json.dumps(report))
    assert report["generation"]["tokens_per_second"]["before"] > 0
    assert report["generation"]["tokens_per_second"]["after"] > 0
    card = ModelCard.load(out / "README.md")  # the card is the compressed model's, with its own results
    assert "compressed" in card.data.tags
    [result] = [r for r in card.data.eval_results if r.metric_type == "perplexity"]
    assert result.metric_value == pytest.approx(after, rel=1e-6)


def tensor_bytes(path) -> int:
    """The tensor data of a safetensors file: its size less the 8-byte length and the JSON header."""
    with open(path, "rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
    return path.stat().st_size - 8 - header_length


@pytest.mark.slow
def test_compressed_folders_are_custom_code_folders_without_postformer(model_dir, tmp_path):
    """As the README says: without the package, a bf16 or int8 folder loads with trust_remote_code=True (and
    nothing for the compression), like any Postformer folder, and not without it."""
    compress_model(model_dir, tmp_path / "bf16", dtype="bf16", **QUICK)
    compress_model(model_dir, tmp_path / "int8", int8=True, **QUICK)
    out = run_without_postformer("""
from transformers import AutoModelForCausalLM
for name in ("bf16", "int8"):
    try:
        AutoModelForCausalLM.from_pretrained(name)
        print("RESULT", name, "loaded without trust_remote_code")
    except ValueError as error:
        print("RESULT", name, "refused, asking for trust_remote_code:", "trust_remote_code=True" in str(error))
    model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True)
    weight = model.model.layers[0].self_attn.q_proj.weight
    print("RESULT", name, type(model).__module__.split(".")[0], model.dtype, type(weight).__name__)
""", cwd=tmp_path)  # (transformers' prompt, unanswered, is printed on stdout too)
    assert re.findall(r"RESULT (.*)", out) == [
        "bf16 refused, asking for trust_remote_code: True",
        "bf16 transformers_modules torch.bfloat16 Parameter",
        "int8 refused, asking for trust_remote_code: True",
        "int8 transformers_modules torch.float32 Int8Tensor",
    ]


def test_half_precision_halves_the_weights_and_int8_shrinks_the_linear_ones(model_dir, tmp_path):
    half = compress_model(model_dir, tmp_path / "bf16", dtype="bf16", **QUICK)
    assert half["size_ratio"] == pytest.approx(0.5, abs=0.02)  # 2 bytes for 4; the header is a few KB

    int8 = compress_model(model_dir, tmp_path / "int8", int8=True, **QUICK)
    model = load_model(model_dir)[0]
    layers = prunable_layers(model).values()
    weights = sum(layer.weight.numel() for layer in layers)
    rows = sum(layer.weight.shape[0] for layer in layers)
    # each Linear weight: 4 bytes -> 1, plus an fp32 scale and an int8 zero point per output row; the JSON
    # headers (which name every tensor and, for int8, its quantisation metadata) are compared apart
    expected = tensor_bytes(model_dir / "model.safetensors") - 3 * weights + 5 * rows
    assert tensor_bytes(tmp_path / "int8" / "model.safetensors") == pytest.approx(expected, abs=64)
    header = int8["weights_bytes"]["after"] - tensor_bytes(tmp_path / "int8" / "model.safetensors")
    assert 0 < header < 32768


def test_int8_checkpoint_holds_int8_tensors_in_safetensors_and_no_pickle(model_dir, tmp_path):
    out = tmp_path / "int8"
    compress_model(model_dir, out, int8=True, **QUICK)
    with pytest.raises(ValueError, match="is already quantised; compress the original"):
        compress_model(out, tmp_path / "again", prune=0.5)
    assert not [p.name for p in out.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}]
    model = load_model(model_dir)[0]
    with safe_open(out / "model.safetensors", framework="pt") as checkpoint:
        keys = set(checkpoint.keys())
        for name, layer in prunable_layers(model).items():
            assert f"{name}.weight" not in keys
            qdata = checkpoint.get_tensor(f"{name}._weight_qdata")
            assert qdata.dtype == torch.int8 and qdata.shape == layer.weight.shape
        assert checkpoint.get_tensor("model.embed_tokens.weight").dtype == torch.float32
        assert "lm_head.weight" not in keys  # tied: saved once, as the embedding
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    assert config["quantization_config"]["quant_type"]["default"]["_type"] == "Int8WeightOnlyConfig"


def test_quantize_int8_in_memory_keeps_the_input_and_refuses_a_quantized_model():
    model = _tiny_model()
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        reference = model(ids).logits
        quantized = quantize_int8(model)
        logits = quantized(ids).logits
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Parameter"  # the input is untouched
    assert type(quantized.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    error = (logits - reference).abs().max().item()
    assert 0 < error < 0.05 * reference.abs().max().item()  # rounded, but barely
    with pytest.raises(ValueError, match="already quantised"):
        quantize_int8(quantized)


# ---------------------------------------------------------------------------------------------------------------
# Pruning


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_global_pruning_reaches_the_ratio_exactly_with_the_smallest_weights(ratio):
    model = _tiny_model()
    layers = prunable_layers(model)
    magnitudes = torch.cat([layer.weight.detach().abs().flatten() for layer in layers.values()])
    embedding = model.model.embed_tokens.weight.detach().clone()
    biases = [layer.bias.detach().clone() for layer in layers.values()]

    prune_model(model, ratio, scope="global")
    stats = sparsity(model)
    assert stats["weights"] == magnitudes.numel()
    assert stats["zeros"] == round(ratio * magnitudes.numel())
    pruned = torch.cat([layer.weight.detach().flatten() for layer in layers.values()]) == 0
    if 0 < ratio:
        assert magnitudes[pruned].max() <= magnitudes[~pruned].min()  # the smallest ones, over all layers
    assert torch.equal(model.model.embed_tokens.weight, embedding)  # embedding and tied head left alone
    assert all(torch.equal(layer.bias, bias) for layer, bias in zip(layers.values(), biases))
    assert not any(hasattr(layer, "weight_mask") for layer in layers.values())  # made permanent
    assert all(type(layer.weight) is torch.nn.Parameter for layer in layers.values())


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 0.9])
def test_per_layer_pruning_reaches_the_ratio_in_every_layer(ratio):
    model = _tiny_model()
    prune_model(model, ratio, scope="layer")
    layers = prunable_layers(model)
    assert len(layers) == 12  # 2 blocks x (q, k, v, o, up, down)
    for name, layer in layers.items():
        assert int((layer.weight == 0).sum()) == round(ratio * layer.weight.numel()), name
    assert sparsity(model)["overall"] == pytest.approx(ratio, abs=1e-3)


def test_pruned_model_saved_and_reloaded_keeps_its_zeros(model_dir, posts_file, original, tmp_path):
    out = tmp_path / "pruned"
    report = compress_model(model_dir, out, prune=0.3, prune_scope="layer", data=posts_file, **QUICK)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, layer in prunable_layers(reloaded).items():
        assert int((layer.weight == 0).sum()) == round(0.3 * layer.weight.numel()), name
    assert report["sparsity"]["before"] == 0
    assert report["sparsity"]["after"] == pytest.approx(0.3, abs=1e-3)
    assert report["size_ratio"] == pytest.approx(1.0, abs=0.01)  # zeros are stored as zeros
    # 30% of a tiny, overfitted model's weights: perplexity goes up, but not to pieces (measured +1.7% global)
    assert original[2] < report["perplexity"]["after"] < 1.2 * original[2]


def test_int8_after_pruning_keeps_the_zeros(model_dir, tmp_path):
    report = compress_model(model_dir, tmp_path / "both", prune=0.4, int8=True, **QUICK)
    # every pruned zero stays an exact zero; rounding to int8 may add a few more
    assert 0.4 - 1e-4 <= report["sparsity"]["after"] < 0.42


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, math.nan, True, "0.3", None])
def test_prune_ratio_outside_zero_one_is_an_error(ratio):
    with pytest.raises(ValueError, match=r"prune ratio must be a number in \[0, 1\)"):
        prune_model(_tiny_model(), ratio)


def test_unknown_dtype_or_scope_is_an_error(model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown dtype 'int4'; choose one of fp16, bf16"):
        to_dtype(_tiny_model(), "int4")
    with pytest.raises(ValueError, match=r"unknown dtype 'float32'; choose one of fp16, bf16"):
        compress_model(model_dir, tmp_path / "out", dtype="float32")
    with pytest.raises(ValueError, match=r"unknown scope 'row'; choose one of global, layer"):
        prune_model(_tiny_model(), 0.5, scope="row")
    with pytest.raises(ValueError, match=r"prune ratio must be a number in \[0, 1\)"):
        compress_model(model_dir, tmp_path / "out", prune=1.0)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_nothing_to_do_is_an_error(model_dir, tmp_path):
    with pytest.raises(ValueError, match="nothing to do: ask for at least one of dtype"):
        compress_model(model_dir, tmp_path / "out")


def test_folder_that_is_not_a_model_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a model folder: missing config.json"):
        compress_model(tmp_path / "empty", tmp_path / "out", dtype="bf16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compress_model(tmp_path / "missing", tmp_path / "out", dtype="bf16")


def test_output_folder_that_holds_a_model_is_refused(model_dir, tmp_path):
    other = save_tiny_model(tmp_path / "other")
    files = sorted(p.name for p in other.iterdir())
    for target in (other, model_dir):  # another model, or the source itself
        with pytest.raises(FileExistsError, match="already holds a model or checkpoints .*nothing was overwritten"):
            compress_model(model_dir, target, int8=True)
    assert sorted(p.name for p in other.iterdir()) == files


def test_int8_without_torchao_says_what_to_install(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # as if torchao were not installed
    with pytest.raises(ImportError, match=r"int8 quantisation needs torchao: pip install 'postformer\[extras\]'"):
        compress_model(model_dir, tmp_path / "out", int8=True)
    assert not (tmp_path / "out").exists()
    assert cli(["compress", "--model", str(model_dir), "--output-dir", str(tmp_path / "out"), "--int8"]) == 2
    assert "needs torchao" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_the_folder_and_the_report(model_dir, posts_file, tmp_path, capsys):
    model_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))
    (model_dir / "metrics.json").write_text('{"eval_loss": 1.0}')  # as training leaves: copied along
    (model_dir / "optimizer.pt").write_bytes(b"state")  # weights and training state: not copied
    out = tmp_path / "out"
    code = cli(["compress", "--model", str(model_dir), "--output-dir", str(out), "--int8", "--prune", "0.2",
                "--prune-scope", "global", "--data", str(posts_file), "--max-posts", "5", "--json"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "compression_report.json").read_text())
    assert printed.startswith(format_report(report) + "\n")
    assert json.loads(printed[printed.index("{"):]) == report
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "optimizer.pt").exists()
    assert report["copied_files"] == ["metrics.json"]
    assert report["steps"] == {"prune": 0.2, "prune_scope": "global", "dtype": None, "int8": True}
    assert report["evaluation"]["after"]["posts"] == 5
    assert 0.2 - 1e-4 <= report["sparsity"]["after"] < 0.22
    assert report["weights_bytes"]["after"] < report["weights_bytes"]["before"]
    assert "weights on disk" in printed and "perplexity" in printed and "new tokens/s" in printed


@pytest.mark.parametrize("arguments, message", [
    (["--prune", "1.5"], "prune ratio must be a number in [0, 1) (the fraction of weights set to zero), got 1.5"),
    ([], "nothing to do"),
    (["--int8", "--max-posts", "0"], "max_posts must be an integer >= 1, got 0"),
])
def test_cli_reports_bad_input_in_one_line(model_dir, tmp_path, capsys, arguments, message):
    code = cli(["compress", "--model", str(model_dir), "--output-dir", str(tmp_path / "out"), *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("postformer compress: error: ") and message in error
    assert "\n" not in error


def test_cli_refuses_an_output_folder_with_a_model(model_dir, capsys):
    code = cli(["compress", "--model", str(model_dir), "--output-dir", str(model_dir), "--dtype", "bf16"])
    assert code == 2
    assert "already holds a model" in capsys.readouterr().err
