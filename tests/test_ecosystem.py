"""A saved Postformer folder works with the ecosystem's standard tools, in processes that cannot import
`postformer` (only transformers, peft and the files saved beside the weights): the text-generation pipeline, a
plain `transformers.Trainer` fine-tune as in run_clm.py, and PEFT LoRA. Then `postformer finetune` itself."""

import json

import pytest
import torch
from conftest import TINY_POSTS, run_without_postformer, save_tiny_model

from postformer.cli import main

PROMPT = "just watched the"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding model/ (a tiny saved Postformer and its tokenizer), the subprocesses' working folder."""
    folder = tmp_path_factory.mktemp("ecosystem")
    save_tiny_model(folder / "model")
    return folder


# One process for the three checks: importing torch, transformers and peft is most of the cost of each. Each part
# reports its own numbers, or its traceback, so one failing part does not hide the others.
ECOSYSTEM_CHECKS = r"""
import json, traceback
import datasets, torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator,
                          pipeline, set_seed)
report = {}

def part(function):
    try:
        report[function.__name__] = function()
    except Exception:
        report[function.__name__] = {"error": traceback.format_exc()}
    return function

def load_model(folder="model"):
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

tokenizer = AutoTokenizer.from_pretrained("model", trust_remote_code=True)

@part
def generation():
    prompt = PROMPT
    generator = pipeline("text-generation", model="model", trust_remote_code=True)
    text = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    model = load_model().eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = ids[0, inputs["input_ids"].shape[1]:]
    return dict(model_type=type(generator.model).__name__, model_module=type(generator.model).__module__, text=text,
                expected=tokenizer.decode(ids[0], skip_special_tokens=True), new_tokens=len(new))

@part
def trainer():
    set_seed(0)
    model = load_model()
    raw = datasets.Dataset.from_dict({"text": ["loving the match #football !!! so tired of this weather lol"] * 32})
    tokenized = raw.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    block_size = 16
    def group_texts(examples):  # as run_clm.py: concatenate, cut into blocks, labels = inputs
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = len(concatenated["input_ids"]) // block_size * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = [ids.copy() for ids in result["input_ids"]]
        return result
    blocks = tokenized.map(group_texts, batched=True)
    args = TrainingArguments(output_dir="trainer_out", max_steps=15, per_device_train_batch_size=8, learning_rate=1e-2,
                             logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=blocks, eval_dataset=blocks,
                      data_collator=default_data_collator)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return dict(before=before, after=after, losses=losses)

@part
def lora():
    set_seed(0)
    model = load_model()
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "up_proj", "down_proj"]))
    initial = {name: t.clone() for name, t in peft_model.state_dict().items() if "lora_" in name}
    ids = tokenizer(["loving the match #football !!!"] * 16)["input_ids"]
    blocks = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(output_dir="lora_out", max_steps=6, per_device_train_batch_size=8, learning_rate=1e-2,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    Trainer(model=peft_model, args=args, train_dataset=blocks, data_collator=default_data_collator).train()

    result = dict(base_total=len(base), base_keys=0, base_changed=[], lora_keys=0, lora_unchanged=[])
    for name, tensor in peft_model.state_dict().items():
        if "lora_" in name:
            result["lora_keys"] += 1
            if torch.equal(tensor, initial[name]):
                result["lora_unchanged"].append(name)
            continue
        result["base_keys"] += 1
        if not torch.equal(tensor, base[name.removeprefix("base_model.model.").replace(".base_layer.", ".")]):
            result["base_changed"].append(name)  # bit-identical, not merely close, or reported
    result["targets"] = sorted({name.split(".")[-4] for name in initial})

    peft_model.eval()
    inputs = torch.tensor([ids[0]])
    with torch.no_grad():
        adapter_logits = peft_model(inputs).logits
        merged = peft_model.merge_and_unload()
        merged_logits = merged(inputs).logits
        base_logits = load_model().eval()(inputs).logits
    result["merged_type"] = type(merged).__name__
    result["merged_has_lora"] = any("lora_" in name for name in merged.state_dict())
    result["merge_max_diff"] = (adapter_logits - merged_logits).abs().max().item()
    result["lora_effect"] = (merged_logits - base_logits).abs().max().item()
    merged.save_pretrained("merged")
    tokenizer.save_pretrained("merged")
    with torch.no_grad():
        result["reload_equal"] = torch.equal(load_model("merged").eval()(inputs).logits, merged_logits)
    try:
        get_peft_model(load_model(), LoraConfig(task_type="CAUSAL_LM", target_modules=["query", "value"]))
        result["bad_targets_error"] = None
    except ValueError as error:
        result["bad_targets_error"] = str(error)
    return result

print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def ecosystem(workdir):
    """The report of ECOSYSTEM_CHECKS, run once in a process that cannot import postformer."""
    out = run_without_postformer(ECOSYSTEM_CHECKS.replace("PROMPT", repr(PROMPT)), cwd=workdir)
    line = next(line for line in reversed(out.splitlines()) if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))


def _part(ecosystem, name):
    result = ecosystem[name]
    assert "error" not in result, result.get("error")
    return result


@pytest.mark.slow
def test_text_generation_pipeline_with_remote_code_continues_the_prompt_as_generate_does(ecosystem):
    result = _part(ecosystem, "generation")
    assert result["model_type"] == "PostformerForCausalLM" and "transformers_modules" in result["model_module"]
    assert result["new_tokens"] > 0
    assert result["text"].startswith(PROMPT) and len(result["text"]) > len(PROMPT)
    assert result["text"] == result["expected"]  # greedy pipeline == greedy model.generate, decoded


@pytest.mark.slow
def test_plain_trainer_fine_tune_run_clm_style_lowers_the_loss(ecosystem):
    result = _part(ecosystem, "trainer")
    losses = result["losses"]
    assert len(losses) == 15
    assert losses[0] > 5.0  # a random model over 300 tokens: about ln(300) = 5.7 nats
    assert losses[-1] < losses[0] - 2.0, losses  # one repeated text is quickly learnt
    assert result["after"] < result["before"] - 2.0, result


@pytest.mark.slow
def test_peft_lora_trains_only_the_adapter_and_merges_into_a_loadable_model(ecosystem):
    result = _part(ecosystem, "lora")
    assert result["base_keys"] == result["base_total"] > 0
    assert result["base_changed"] == []  # every base weight bit-identical after training
    assert result["lora_keys"] == 2 * 6 * 2  # lora_A and lora_B of 6 modules in each of 2 layers
    assert result["lora_unchanged"] == []  # every lora_A and lora_B moved
    assert result["targets"] == ["down_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert result["merged_type"] == "PostformerForCausalLM" and not result["merged_has_lora"]
    assert result["merge_max_diff"] < 1e-5  # merged model == base + adapter
    assert result["lora_effect"] > 1e-3  # ... and the adapter did change the model
    assert result["reload_equal"]  # saved and loaded back with from_pretrained: the same logits
    # PEFT's own error for targets that match nothing (postformer's finetune names the model's modules instead)
    assert result["bad_targets_error"] and "query" in result["bad_targets_error"]


def test_finetune_with_unknown_lora_targets_lists_the_models_linear_modules(workdir, tmp_path):
    from postformer.training.finetune import finetune

    with pytest.raises(ValueError) as raised:
        # one real module next to a typo: PEFT alone would silently adapt only o_proj
        finetune(workdir / "model", None, tmp_path / "out", lora=True, target_modules=["o_proj", "query_proj"],
                 block_size=16)
    message = str(raised.value)
    assert "unknown LoRA target module(s) ['query_proj']" in message
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"):
        assert f"'{name}'" in message
    assert not (tmp_path / "out").exists()


def test_finetune_lora_cli_writes_merged_model_adapter_metrics_and_card(workdir, tmp_path, capsys):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    from postformer.push import upload_plan
    from postformer.training.finetune import BASE_QUANTIZATION_FILE, load_adapter

    data = tmp_path / "posts"
    data.mkdir()
    for split, posts in (("train", TINY_POSTS[:48]), ("validation", TINY_POSTS[48:])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in posts))
    out = tmp_path / "tuned"
    argv = ["finetune", "--model", str(workdir / "model"), "--data", str(data), "--output-dir", str(out), "--lora",
            "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "8", "--learning-rate", "1e-2", "--batch-size", "4",
            "--block-size", "16", "--base-model", "someone/tiny-posts-base", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "eval_loss_before" in printed and str(out) in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert metrics["eval_perplexity"] < metrics["eval_perplexity_before"]
    assert 0 < metrics["trainable_parameters"] < metrics["parameters"]
    training_config = json.loads((out / "training_config.json").read_text())
    assert training_config["lora"] and training_config["lora_r"] == 4
    assert training_config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "someone/tiny-posts-base"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert ModelCard.load(out / "README.md").data.base_model == "someone/tiny-posts-base"
    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is True and "auto_map" in config

    # The merged model is a plain model folder: it loads, differs from the base, and is ready to push.
    tuned = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(workdir / "model").eval()
    assert not any("lora_" in name for name in tuned.state_dict())
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, base(ids).logits)
        # The adapter on its base (named here: adapter_config.json names the Hub id) gives the merged model's logits.
        adapted, _ = load_adapter(out / "adapter", model=workdir / "model")
        assert torch.allclose(adapted(ids).logits, tuned(ids).logits, atol=1e-5)
    assert not (out / "adapter" / BASE_QUANTIZATION_FILE).exists()  # written by --quantize runs only
    plan = dict(upload_plan(out))
    assert {"model.safetensors", "adapter/adapter_model.safetensors", "metrics.json", "README.md"} <= set(plan)

    # A second run into the same folder is refused, and changes nothing.
    before = (out / "model.safetensors").read_bytes()
    assert main(argv) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_full_finetune_trains_every_weight_and_saves_a_plain_model_folder(workdir, tmp_path):
    from transformers import AutoModelForCausalLM

    from postformer.training.finetune import finetune

    data = tmp_path / "posts.jsonl"  # a single file: 5% of it becomes the validation split
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in TINY_POSTS))
    out = tmp_path / "full"
    metrics = finetune(workdir / "model", data, out, max_steps=4, learning_rate=1e-2, batch_size=4, block_size=16,
                       disable_progress_bar=True)
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert metrics["trainable_parameters"] == metrics["parameters"] and metrics["lora"] is False
    assert not (out / "adapter").exists()
    assert {"config.json", "model.safetensors", "modeling_postformer.py", "tokenizer.json", "generation_config.json",
            "metrics.json", "training_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tokenizer_config and "is_local" not in tokenizer_config
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2

    with pytest.raises(FileExistsError, match="already holds a model"):
        finetune(workdir / "model", data, out, max_steps=1, block_size=16)
    with pytest.raises(ValueError, match="is the base model's folder"):
        finetune(workdir / "model", data, workdir / "model", max_steps=1, block_size=16)
