"""A saved model loads with `trust_remote_code=True` in a process that cannot import `postformer`."""

import pytest
import json

import torch
from conftest import run_without_postformer, tiny_config
from safetensors.torch import save_file

from postformer import PostformerForCausalLM, PostformerForSequenceClassification


pytestmark = pytest.mark.slow  # fresh Python processes without postformer

def test_trust_remote_code_load_gives_identical_logits_without_the_package(tmp_path):
    model = PostformerForCausalLM(tiny_config(use_relative_position=True, num_key_value_heads=2)).eval()
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(4, 96, (2, 12))
    save_file({"ids": ids, "logits": model(ids).logits.detach().contiguous()}, tmp_path / "expected.safetensors")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_postformer.PostformerForCausalLM"

    out = run_without_postformer(
        """
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("model", trust_remote_code=True).eval()
expected = load_file("expected.safetensors")
assert type(model).__name__ == "PostformerForCausalLM" and "transformers_modules" in type(model).__module__
assert torch.equal(model(expected["ids"]).logits, expected["logits"])
cached = model.generate(expected["ids"][:, :4], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
plain = model.generate(expected["ids"][:, :4], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=False)
assert torch.equal(cached, plain)
print("OK")
""",
        cwd=tmp_path,
    )
    assert out.strip().endswith("OK")


def test_classifier_and_base_model_load_through_auto_classes_without_the_package(tmp_path):
    model = PostformerForSequenceClassification(tiny_config(num_labels=3)).eval()
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(4, 96, (2, 9))
    save_file({"ids": ids, "logits": model(ids).logits.detach().contiguous()}, tmp_path / "expected.safetensors")
    out = run_without_postformer(
        """
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification
expected = load_file("expected.safetensors")
classifier = AutoModelForSequenceClassification.from_pretrained("model", trust_remote_code=True).eval()
assert torch.equal(classifier(expected["ids"]).logits, expected["logits"])
base = AutoModel.from_pretrained("model", trust_remote_code=True)
assert type(base).__name__ == "PostformerModel"
print("OK")
""",
        cwd=tmp_path,
    )
    assert out.strip().endswith("OK")
