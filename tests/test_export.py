"""Export to stock transformers architectures: Starcoder2 for rotary positions, GPT-2 for the others."""

import json

import pytest
import torch

from conftest import TINY_POSTS, run_without_postformer, save_tiny_model
from postformer.cli import main as cli
from postformer.export import export_model

ROPE_CASES = {
    "rope default": {},
    "rope linear": dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "rope yarn": dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}),
    "rope dynamic": dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
    "rope llama3": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 32}),
    "rope longrope": dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "factor": 2.0,
                                           "short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [1.5, 2.0, 2.5, 3.0],
                                           "original_max_position_embeddings": 32}),
    "rope theta, gqa, untied, eps": dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                         num_key_value_heads=2, tie_word_embeddings=False, layer_norm_eps=1e-6),
    "rope mqa relu2": dict(num_key_value_heads=1, hidden_act="relu2"),
    "rope gelu_new": dict(hidden_act="gelu_new"),
    "rope gelu_pytorch_tanh": dict(hidden_act="gelu_pytorch_tanh"),
    "rope relu": dict(hidden_act="relu"),
    "rope silu": dict(hidden_act="silu"),
    # a window on every layer is Starcoder2's sliding_window; the checks run past it (lengths 33-100, 20 new tokens)
    "rope sliding window": dict(sliding_window=8),
    "rope sliding window gqa": dict(sliding_window=5, num_key_value_heads=2),
}
GPT2_CASES = {
    "learned": dict(position_embedding_type="learned"),
    "learned untied gelu_new eps": dict(position_embedding_type="learned", tie_word_embeddings=False,
                                        hidden_act="gelu_new", layer_norm_eps=1e-6),
    "sinusoidal": dict(position_embedding_type="sinusoidal"),
    "none": dict(position_embedding_type="none", hidden_act="silu"),
    "learned gqa": dict(position_embedding_type="learned", num_key_value_heads=2),
    "sinusoidal mqa relu2": dict(position_embedding_type="sinusoidal", num_key_value_heads=1, hidden_act="relu2"),
}
CASES = [("starcoder2", name, kw) for name, kw in ROPE_CASES.items()] + \
    [("gpt2", name, kw) for name, kw in GPT2_CASES.items()]


def _nonzero_biases(model_dir):
    """Randomise every bias (saved models start them at zero) so that the export of biases is tested."""
    from postformer import PostformerForCausalLM

    model = PostformerForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    model.save_pretrained(model_dir)


@pytest.mark.parametrize("to,name,overrides", CASES, ids=[f"{to}: {name}" for to, name, _ in CASES])
def test_export_equal_logits_and_greedy(tmp_path, to, name, overrides):
    from transformers import AutoModelForCausalLM

    from postformer import PostformerForCausalLM

    model_dir = save_tiny_model(tmp_path / "model", **overrides)
    _nonzero_biases(model_dir)
    out = tmp_path / "out"
    report = export_model(model_dir, to, out)
    assert report["max_abs_logit_difference"] <= 1e-5

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == to and "auto_map" not in config
    if to == "starcoder2":
        assert config["sliding_window"] == overrides.get("sliding_window")
    assert to != "gpt2" or config["n_ctx"] == config["n_positions"]  # what llama.cpp's GPT-2 converter reads
    assert (out / "generation_config.json").is_file() and (out / "README.md").is_file()
    ours = PostformerForCausalLM.from_pretrained(model_dir).eval()
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(stock).__name__ == {"starcoder2": "Starcoder2ForCausalLM", "gpt2": "GPT2LMHeadModel"}[to]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # rotary positions have no table to end: past the context too (where dynamic scaling changes frequencies)
        for length in (1, 5, 33, 64) + ((100,) if to == "starcoder2" else ()):
            ids = torch.randint(0, ours.config.vocab_size, (2, length), generator=generator)
            torch.testing.assert_close(stock(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)
        prompt = torch.randint(4, ours.config.vocab_size, (1, 6), generator=generator)
        settings = dict(max_new_tokens=20, do_sample=False, min_new_tokens=20)
        assert torch.equal(stock.generate(prompt, **settings), ours.generate(prompt, **settings))
        # a left-padded batch: positions shifted past the padding in both
        batch = torch.randint(4, ours.config.vocab_size, (2, 9), generator=generator)
        mask = torch.ones_like(batch)
        batch[0, :4], mask[0, :4] = ours.config.pad_token_id, 0
        settings = dict(max_new_tokens=10, do_sample=False, min_new_tokens=10, attention_mask=mask)
        assert torch.equal(stock.generate(batch, **settings), ours.generate(batch, **settings))


@pytest.mark.slow  # a fresh Python process without postformer
def test_export_tokenizer_round_trip_and_load_without_postformer(tmp_path):
    from transformers import AutoTokenizer

    from postformer.data.splits import load_posts_split
    from postformer.model_files import load_tokenizer

    model_dir = save_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    export_model(model_dir, "starcoder2", out)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not {"auto_map", "is_local", "local_files_only"} & set(tokenizer_config)
    card = (out / "README.md").read_text()
    assert "Starcoder2ForCausalLM" in card and str(tmp_path) not in card
    original, exported = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(out)
    posts = list(load_posts_split(split="validation"))
    for text in TINY_POSTS + posts:
        ids = original(text)["input_ids"]
        assert exported(text)["input_ids"] == ids
        assert exported.decode(ids) == original.decode(ids)
    assert exported.special_tokens_map == original.special_tokens_map

    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
ids = tok("just watched the match #football", return_tensors="pt")["input_ids"]
out = model.generate(ids, max_new_tokens=5, do_sample=False, min_new_tokens=5)
print(type(model).__name__, out[0].tolist())
"""
    printed = run_without_postformer(code, tmp_path).split()
    assert printed[0] == "Starcoder2ForCausalLM"


REFUSALS = [
    ("starcoder2", dict(use_relative_position=True), "Shaw relative positions"),
    ("gpt2", dict(use_relative_position=True, position_embedding_type="learned"), "Shaw relative positions"),
    ("starcoder2", dict(qk_norm=True), "QK-norm"),
    ("gpt2", dict(qk_norm=True, position_embedding_type="learned"), "QK-norm"),
    ("starcoder2", dict(position_embedding_type="learned"), "use --to gpt2"),
    ("starcoder2", dict(position_embedding_type="none"), "use --to gpt2"),
    ("gpt2", {}, "use --to starcoder2"),
    ("gpt2", dict(sliding_window=8, position_embedding_type="learned"), "starcoder2, which slides, has rotary"),
    ("starcoder2", dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
     "mixing full and sliding-window attention"),
    ("gpt2", dict(sliding_window=8, layer_types=["full_attention", "sliding_attention"], position_embedding_type="learned"),
     "mixing full and sliding-window attention"),
]


@pytest.mark.parametrize("to,overrides,message", REFUSALS)
def test_export_refusals(tmp_path, to, overrides, message):
    model_dir = save_tiny_model(tmp_path / "model", **overrides)
    with pytest.raises(ValueError, match=message) as error:
        export_model(model_dir, to, tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out" / "config.json").exists()


def test_export_cli(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model", position_embedding_type="learned")
    capsys.readouterr()
    assert cli(["export", "--model", str(model_dir), "--to", "starcoder2", "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("postformer export: error: ") and "use --to gpt2" in err and "\n" not in err
    assert cli(["export", "--model", str(model_dir), "--to", "gpt2", "--output-dir", str(tmp_path / "b")]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    # the output folder now holds a model: nothing is overwritten
    assert cli(["export", "--model", str(model_dir), "--to", "gpt2", "--output-dir", str(tmp_path / "b")]) == 2
    assert "already holds a model" in capsys.readouterr().err


def test_export_refuses_other_models_and_targets(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    with pytest.raises(ValueError, match="must be one of starcoder2, gpt2"):
        export_model(model_dir, "llama", tmp_path / "out")
    export_model(model_dir, "starcoder2", tmp_path / "out")
    with pytest.raises(ValueError, match="export reads Postformer models"):
        export_model(tmp_path / "out", "starcoder2", tmp_path / "again")
    with pytest.raises(FileExistsError, match="already holds a model"):
        export_model(model_dir, "starcoder2", tmp_path / "out")


def test_export_refuses_rope_that_starcoder2_computes_otherwise(tmp_path, monkeypatch):
    from transformers.models.starcoder2 import modeling_starcoder2

    original = modeling_starcoder2.Starcoder2RotaryEmbedding.compute_default_rope_parameters
    monkeypatch.setattr(modeling_starcoder2.Starcoder2RotaryEmbedding, "compute_default_rope_parameters",
                        staticmethod(lambda config, **kwargs: (original(config)[0] * 2, 1.0)))
    model_dir = save_tiny_model(tmp_path / "model")
    with pytest.raises(ValueError, match="starcoder2 computes other rotary frequencies"):
        export_model(model_dir, "starcoder2", tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------------------------------------------- ONNX

ONNX_CASES = {  # gpt2's graph is exported in the quick tier too, by test_export_onnx_cli_and_missing_onnxruntime
    "rope gqa untied": dict(num_key_value_heads=2, tie_word_embeddings=False),
}
ONNX_SLOW_CASES = {
    "learned": dict(position_embedding_type="learned"),
    "rope yarn relu2": dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0},
                            hidden_act="relu2"),
    "rope llama3 mqa": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 32}, num_key_value_heads=1),
    "sinusoidal gqa": dict(position_embedding_type="sinusoidal", num_key_value_heads=2),
    "none": dict(position_embedding_type="none"),
    # the graph's cache keeps every token; Starcoder2's sliding-window mask hides those past the window
    "rope sliding window": dict(sliding_window=4),
}
ONNX_ALL = [pytest.param(name, kw, id=name) for name, kw in ONNX_CASES.items()] + \
    [pytest.param(name, kw, id=name, marks=pytest.mark.slow) for name, kw in ONNX_SLOW_CASES.items()]


@pytest.fixture
def onnxruntime():
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name,overrides", ONNX_ALL)
def test_export_onnx_cache_and_greedy(tmp_path, onnxruntime, name, overrides):
    """ONNX Runtime against the Postformer itself: logits at a left-padded prefill and at decoding steps fed
    ONNX Runtime's own cache, and `onnx_greedy` against `generate` (a padded batch; the folder's stop tokens)."""
    import numpy as np

    from postformer import PostformerForCausalLM
    from postformer.export import onnx_greedy

    model_dir = save_tiny_model(tmp_path / "model", **overrides)
    _nonzero_biases(model_dir)
    out = tmp_path / "out"
    report = export_model(model_dir, "onnx", out)
    assert report["max_abs_logit_difference_onnx"] <= 1e-4 and report["decoding_steps"] == 8
    assert {p.name for p in out.iterdir()} == {"model.onnx", "config.json", "generation_config.json", "README.md",
                                              "tokenizer.json", "tokenizer_config.json"}
    ours = PostformerForCausalLM.from_pretrained(model_dir).eval()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [tensor.name for tensor in session.get_outputs()]
    assert names[:3] == ["logits", "present.0.key", "present.0.value"]

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, ours.config.vocab_size, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    ids[0, :4], mask[0, :4] = ours.config.pad_token_id, 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # each row counts from its first real token, as generate does
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
    feed.update((tensor.name, np.zeros((2, tensor.shape[1], 0, tensor.shape[3]), np.float32))
                for tensor in session.get_inputs()[3:])
    logits, *present = session.run(names, feed)
    with torch.no_grad():
        expected = ours(ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(torch.from_numpy(logits)[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)
    for _ in range(5):  # decoding steps, each fed the last step's present keys/values
        token = torch.randint(4, ours.config.vocab_size, (2, 1), generator=generator)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
        feed = {"input_ids": token.numpy(), "attention_mask": mask.numpy(),
                "position_ids": feed["position_ids"][:, -1:] + 1}
        feed.update((name.replace("present", "past_key_values"), tensor) for name, tensor in zip(names[1:], present))
        logits, *present = session.run(names, feed)
        positions = torch.cat([positions, positions[:, -1:] + 1], 1)
        with torch.no_grad():
            expected = ours(ids, attention_mask=mask, position_ids=positions).logits[:, -1:]
        torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)

    with torch.no_grad():
        # 30 tokens with no stop token, then the folder's generation config (stop tokens, suppressed tokens,
        # repetition penalty) on a left-padded batch
        prompt = torch.randint(4, ours.config.vocab_size, (1, 6), generator=generator)
        expected = ours.generate(prompt, do_sample=False, max_new_tokens=30, eos_token_id=None)
        assert np.array_equal(onnx_greedy(out, prompt.tolist(), max_new_tokens=30, eos_token_id=None),
                              expected.numpy())
        expected = ours.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20)
        got = onnx_greedy(out, ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=20, session=session)
        assert np.array_equal(got, expected.numpy())


@pytest.mark.slow  # the snippets run in fresh Python processes without postformer
def test_export_cards_and_their_snippets(tmp_path, onnxruntime):
    """Each card says what it was exported from, the checks it passed and how to run it; the cards' snippets run
    as printed, in a process without postformer, and the ONNX one decodes what `onnx_greedy` decodes."""
    import re

    from tokenizers import Tokenizer

    from postformer.export import onnx_greedy

    model_dir = save_tiny_model(tmp_path / "model")
    export_model(model_dir, "starcoder2", tmp_path / "stock")
    export_model(model_dir, "onnx", tmp_path / "onnx")
    stock, onnx = (tmp_path / "stock" / "README.md").read_text(), (tmp_path / "onnx" / "README.md").read_text()
    for card in (stock, onnx):
        assert "## Exported from" in card and "## Checks passed at export" in card and str(tmp_path) not in card
    assert "## Load in transformers" in stock and "## Serve with vLLM" in stock and "vllm serve PATH" in stock
    assert "## Run with ONNX Runtime" in onnx and "library_name: onnx" in onnx and "ONNX Runtime (CPU)" in onnx
    assert "postformer export --to starcoder2" in onnx

    def snippet(card, section, folder):
        return re.search(r"```python\n(.*?)```", card.split(section)[1], re.S).group(1).replace("PATH", str(folder))

    code = snippet(stock, "## Load in transformers", tmp_path / "stock") + \
        snippet(onnx, "## Run with ONNX Runtime", tmp_path / "onnx") + "print(ids[0].tolist())\n"
    printed = run_without_postformer(code, tmp_path).strip().splitlines()[-1]
    prompt = [Tokenizer.from_file(str(tmp_path / "onnx" / "tokenizer.json")).encode("Breaking news:").ids]
    assert printed == str(onnx_greedy(tmp_path / "onnx", prompt, max_new_tokens=40)[0].tolist())


ONNX_REFUSALS = [
    (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}), "rope_type='dynamic'"),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "factor": 2.0,
                           "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                           "original_max_position_embeddings": 32}), "rope_type='longrope'"),
    (dict(use_relative_position=True), "Shaw relative positions"),
]


@pytest.mark.parametrize("overrides,message", ONNX_REFUSALS, ids=["dynamic", "longrope", "shaw"])
def test_export_onnx_refusals(tmp_path, onnxruntime, overrides, message):
    model_dir = save_tiny_model(tmp_path / "model", **overrides)
    with pytest.raises(ValueError, match=message) as error:
        export_model(model_dir, "onnx", tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out" / "config.json").exists()


def test_export_onnx_cli_and_missing_onnxruntime(tmp_path, capsys, monkeypatch, onnxruntime):
    model_dir = save_tiny_model(tmp_path / "model", position_embedding_type="sinusoidal")
    capsys.readouterr()
    assert cli(["export", "--model", str(model_dir), "--to", "onnx", "--output-dir", str(tmp_path / "a")]) == 0
    assert "exported to ONNX (GPT2LMHeadModel graph" in capsys.readouterr().out
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if it were not installed
    assert cli(["export", "--model", str(model_dir), "--to", "onnx", "--output-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs onnxruntime: pip install 'postformer[onnx]'" in err and "\n" not in err


@pytest.mark.parametrize("config,message", [
    ({"model_type": "starcoder2", "hidden_act": "silu"}, "computes GELU in starcoder2"),
    ({"model_type": "gpt2", "activation_function": "gelu_new", "n_embd": 32, "n_inner": 64}, "4 x n_embd = 128"),
], ids=["silu", "gpt2 feed-forward"])
def test_convert_to_gguf_refuses_what_llama_cpp_computes_otherwise(tmp_path, config, message):
    """scripts/convert_to_gguf.py checks the folder before it looks for llama.cpp (not installed here)."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "config.json").write_text(json.dumps(config))
    script = Path(__file__).resolve().parent.parent / "scripts" / "convert_to_gguf.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "no-llama.cpp"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
