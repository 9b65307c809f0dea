"""Training: a tiny run learns and writes a Hub-ready folder; metrics by hand; resume is exact; bad input."""

import json
import math
import re
import shlex

import pytest
import torch
from huggingface_hub import ModelCard
from conftest import run_without_postformer, tiny_config
from safetensors.torch import load_file
from transformers import GenerationConfig

from postformer import PostformerForCausalLM, PostformerForSequenceClassification
from postformer.cli import main as cli
from postformer.data import load_posts
from postformer.generation import POSTS_SAMPLING
from postformer.tokenization import config_token_ids, train_tokenizer
from postformer.training import (
    NonFiniteLossError,
    PostformerTrainer,
    pack_posts,
    tokens_per_character,
    train,
)
from postformer.training.arguments import command_arguments
from postformer.training.trainer import flops_per_token

TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
    block_size=32, batch_size=8, learning_rate=3e-3, warmup_steps=0, max_eval_posts=40, logging_steps=5,
    disable_progress_bar=True, hidden_dropout=0.0, attention_dropout=0.0,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_posts()["train"]["text"], vocab_size=300, show_progress=False, model_max_length=64)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("run") / "tiny"
    return output, train(*options(output_dir=str(output), max_steps=60, eval_steps=20, save_steps=20,
                                  sample_prompts=["Breaking news:"], **TINY))


def options(**values):
    """`postformer train`'s arguments (job, training arguments) from option names, as the command line splits them."""
    return command_arguments("train", **values)


def test_extra_callbacks_take_part_in_the_run(tmp_path):
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            CountSteps.steps += 1
            control.should_training_stop = state.global_step == 3  # a callback can stop the run

    train(*options(output_dir=str(tmp_path / "run"), max_steps=10, eval_steps=10, save_steps=10, sample_prompts=[],
                   **TINY), callbacks=[CountSteps()])
    assert CountSteps.steps == 3
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 3


def test_tiny_run_validation_loss_falls(tiny_run):
    output, metrics = tiny_run
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    assert len(evals) == 3  # steps 20, 40, 60; the last one is the final evaluation, not run twice
    assert evals[0] > evals[1] > evals[2] and evals[-1] < math.log(300) - 1.0, evals
    assert metrics["eval_loss"] == pytest.approx(evals[-1])
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    logs = [e for e in history if "tokens_per_second" in e]
    assert logs and all(e["tokens_per_second"] > 0 and 0 < e["mfu"] < 1 for e in logs)


def test_tiny_run_writes_a_hub_ready_folder(tiny_run):
    output, _ = tiny_run
    for name in ("model.safetensors", "config.json", "modeling_postformer.py", "configuration_postformer.py",
                 "tokenizer.json", "tokenizer_config.json", "generation_config.json", "metrics.json",
                 "training_config.json", "samples.jsonl"):
        assert (output / name).is_file(), name
    assert (output / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_postformer.PostformerForCausalLM"
    assert (config["vocab_size"], config["pad_token_id"], config["eos_token_id"], config["sep_token_id"]) == (300, 0, 2, 3)
    assert config["use_cache"] is True  # Trainer turns it off for training; the saved model generates with it
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "text-generation" and card.data.license == "mit"
    generation = json.loads((output / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 3] and generation["suppress_tokens"] == [0, 1]  # the posts defaults
    assert GenerationConfig.from_pretrained(output).to_dict().items() >= POSTS_SAMPLING.items()
    assert "generation stops at `</s>` or `<sep>` (`eos_token_id` [2, 3]); `<pad>` and `<s>` are never generated" \
        in (output / "README.md").read_text()
    samples = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} >= {20, 40, 60} and all(s["prompt"] == "Breaking news:" for s in samples)
    assert all("loop" in s for s in samples)  # None, or the loop the greedy sample ends in


@pytest.mark.slow
def test_saved_folder_loads_in_a_clean_process(tiny_run):
    output, _ = tiny_run
    out = run_without_postformer(
        f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(output)!r}, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained({str(output)!r})
batch = tokenizer(["Breaking news:", "We are"], return_tensors="pt", padding=True)
out = model.generate(**batch, max_new_tokens=5, do_sample=False)
assert out.shape[0] == 2
ids = tokenizer("a post about the news", return_tensors="pt")["input_ids"]
loss = model(ids, labels=ids).loss.item()
print("LOSS", loss)
""",
        cwd=output.parent,
    )
    assert float(out.split("LOSS")[1]) < math.log(300)


def test_weight_decay_skips_norms_biases_and_embeddings(tokenizer, tmp_path):
    model = PostformerForCausalLM(tiny_config(**config_token_ids(tokenizer), position_embedding_type="learned"))
    from transformers import TrainingArguments

    trainer = PostformerTrainer(model=model, args=TrainingArguments(str(tmp_path), report_to="none"))
    decayed = set(trainer.get_decay_parameter_names(model))
    assert "model.layers.0.self_attn.q_proj.weight" in decayed and "model.layers.1.mlp.down_proj.weight" in decayed
    assert not any("bias" in n or "norm" in n or "embed" in n for n in decayed)
    optimizer = trainer.create_optimizer()
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert id(model.model.embed_tokens.weight) in groups[0.0]
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8


def test_perplexity_and_bits_per_character_match_a_hand_computation(tokenizer, tmp_path):
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    posts = load_posts()["validation"].select(range(30))
    blocks = pack_posts(posts, tokenizer, block_size=32)
    blocks = blocks.select(range(len(blocks) // 4 * 4))  # whole eval batches of 4
    model = PostformerForCausalLM(tiny_config(**config_token_ids(tokenizer))).eval()
    tpc = tokens_per_character(posts, tokenizer)
    trainer = PostformerTrainer(
        model=model,
        args=TrainingArguments(str(tmp_path), per_device_eval_batch_size=4, report_to="none"),
        eval_dataset=blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        tokens_per_character=tpc,
    )
    metrics = trainer.evaluate()

    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        logits = model(ids).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    texts = posts["text"]
    by_hand_tpc = sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts) / sum(len(t) + 1 for t in texts)
    assert tpc == pytest.approx(by_hand_tpc)
    assert metrics["eval_loss"] == pytest.approx(nll.item(), rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert metrics["eval_bits_per_character"] == pytest.approx(nll.item() / math.log(2) * by_hand_tpc, rel=1e-5)


def test_packing_separates_posts_with_end_of_post(tokenizer):
    posts = load_posts()["validation"].select(range(20))
    blocks = pack_posts(posts, tokenizer, block_size=16)
    stream = [i for block in blocks["input_ids"] for i in block]
    expected = [i for t in posts["text"] for i in tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]]
    assert all(len(b) == 16 for b in blocks["input_ids"])
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 16
    assert stream.count(tokenizer.bos_token_id) == stream.count(tokenizer.eos_token_id) + (stream[-1] != 2)


def test_flops_per_token_formula(tokenizer):
    model = PostformerForCausalLM(tiny_config(**config_token_ids(tokenizer)))
    n = sum(p.numel() for p in model.parameters())
    assert flops_per_token(model, 32) == 6 * n + 12 * 2 * 32 * 32
    # A classifier has no LM head: its embedding table is looked up, not multiplied
    classifier = PostformerForSequenceClassification(tiny_config(**config_token_ids(tokenizer), num_labels=3))
    table = classifier.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in classifier.parameters())
    assert flops_per_token(classifier, 32) == 6 * (n - table) + 12 * 2 * 32 * 32


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_run_resumes_to_the_same_weights_and_loss_curve(tmp_path, monkeypatch, capsys, optimizer):
    common = dict(max_steps=30, eval_steps=10, save_steps=10, logging_steps=1, sample_prompts=[], hidden_dropout=0.1,
                  optimizer=optimizer)
    train(*options(output_dir=str(tmp_path / "reference"), **{**TINY, **common}))

    original_step = PostformerTrainer.training_step

    def killed_at_step_25(self, *args, **kwargs):
        if self.state.global_step == 25:
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, *args, **kwargs)

    interrupted = {**TINY, **common}
    capsys.readouterr()
    monkeypatch.setattr(PostformerTrainer, "training_step", killed_at_step_25)
    config = _write_config(tmp_path, interrupted)
    argv = ["train", "--output-dir", str(tmp_path / "interrupted"), "--config", config]
    assert cli(argv) == 130  # Ctrl-C: one line naming the step and the command that resumes
    message = capsys.readouterr().err.strip().splitlines()
    assert message == [f"postformer train: interrupted at step 25; resume with: postformer {shlex.join(argv)} --resume"]
    monkeypatch.setattr(PostformerTrainer, "training_step", original_step)
    assert not (tmp_path / "interrupted" / "model.safetensors").exists()
    assert cli([*argv, "--resume"]) == 0
    printed = capsys.readouterr()
    summary = printed.out.split("\n{")[0]  # printed before training starts
    assert "data: the bundled posts sample (4,000 train / 40 validation posts" in summary
    assert "training: 30 steps x 256 tokens = 7,680 tokens; about" in summary and "output: " in summary
    logged = [json.loads(line) for line in printed.out.splitlines() if line.startswith('{"loss"')]
    assert logged and all(isinstance(entry["loss"], float) for entry in logged)  # numbers, not quoted strings
    assert f"resuming from {tmp_path / 'interrupted' / 'checkpoint-20'} (step 20)" in printed.out
    assert "missing keys" not in printed.err  # the tied LM head is tied again, silently

    expected = load_file(tmp_path / "reference" / "model.safetensors")
    resumed = load_file(tmp_path / "interrupted" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name

    def losses(run):
        history = json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"]
        return {e["step"]: e["loss"] for e in history if "loss" in e}

    assert losses("interrupted") == losses("reference") and len(losses("reference")) == 30


def _write_config(tmp_path, values):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))  # earlier names (batch_size, disable_progress_bar) included
    return str(path)


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    original_step = PostformerTrainer.training_step

    def nan_from_step_12(self, model, inputs, num_items_in_batch=None):
        if self.state.global_step >= 12:
            with torch.no_grad():
                model.model.norm.weight.fill_(float("nan"))
        return original_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(PostformerTrainer, "training_step", nan_from_step_12)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 13: training stopped"):
        train(*options(output_dir=str(tmp_path / "run"), max_steps=30, eval_steps=10, save_steps=10, sample_prompts=[],
                       **TINY))
    assert not (tmp_path / "run" / "model.safetensors").exists()
    checkpoint = load_file(tmp_path / "run" / "checkpoint-10" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in checkpoint.values())
    assert not (tmp_path / "run" / "checkpoint-20").exists()


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing overwritten


def test_output_folder_holding_another_model_is_refused_and_left_intact(tiny_run, capsys):
    output, _ = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"already holds a model or checkpoints \(config.json, model.safetensors, checkpoint-40, checkpoint-60\); nothing was overwritten"):
        train(*options(output_dir=str(output), max_steps=5, **TINY))
    assert cli(["train", "--output-dir", str(output), "--max-steps", "5"]) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (dict(data="missing.jsonl"), FileNotFoundError, "posts data not found"),
        (dict(data="empty.jsonl"), ValueError, "no posts in .*the file is empty"),
        (dict(data="posts.jsonl", text_field="body"), ValueError, "text field 'body' not found"),
        (dict(block_size=128, max_position_embeddings=64), ValueError, "block_size 128 is longer than the model's context"),
        (dict(data="posts.jsonl", batch_size=64), ValueError, "batch size does not fit the data"),
        (dict(precision="fp8"), ValueError, "precision must be fp32, bf16 or fp16"),
        (dict(max_steps=0), ValueError, "max_steps must be at least 1"),
        (dict(resume=True), FileNotFoundError, "no complete checkpoint"),
    ],
)
def test_bad_training_input_is_a_clear_error(tmp_path, monkeypatch, overrides, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "posts.jsonl").write_text("\n".join(json.dumps({"text": f"post {i} " * 8}) for i in range(40)))
    with pytest.raises(error, match=message):
        train(*options(output_dir=str(tmp_path / "out"), **{**TINY, "max_steps": 2, **overrides}))


def _parsed(argv):
    from postformer.cli import _expand_config, _parse, build_parser
    from postformer.training.arguments import dataclasses_from_namespace

    parser = build_parser()
    return dataclasses_from_namespace("train", _parse(parser, _expand_config(parser, argv)))


def test_config_file_and_flags(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"preset": "medium", "learning_rate": 1e-4, "max_steps": 7,
                                                 "batch_size": 4, "precision": "bf16", "sample_prompts": ["Hi"]}))
    job, args = _parsed(["train", "--config", str(tmp_path / "c.json"), "--max-steps", "9"])
    assert (job.preset, args.learning_rate, args.max_steps) == ("medium", 1e-4, 9)  # the flag wins
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.bf16) == (4, 4, True)
    assert job.sample_prompts == ["Hi"]
    # Trainer's own options reach the command line without being declared again
    job, args = _parsed(["train", "--optim", "adamw_torch", "--gradient_checkpointing", "--report_to", "none"])
    assert (args.optim.value, args.gradient_checkpointing, args.report_to) == ("adamw_torch", True, [])
    assert (args.output_dir, args.max_steps, args.learning_rate, job.preset) == ("runs/small", 700, 2e-3, "small")


@pytest.mark.parametrize("text,message", [
    ("learning_rat: 0.1\n", r"unknown option\(s\) in --config .*bad.yaml: \['learning_rat'\]"),
    ("max_steps: [5\n", r"--config .*bad.yaml is not valid YAML \(line 2, column 1\): expected ',' or ']'"),
    ("- 1\n- 2\n", r"--config .*bad.yaml must hold a mapping of option names to values, got list"),
])
def test_broken_config_file_is_one_clear_line(tmp_path, capsys, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    assert cli(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("postformer train: error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_wrongly_typed_config_value_and_mistyped_flags_are_named(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("max_steps: five\n")
    with pytest.raises(SystemExit) as exit_status:
        cli(["train", "--config", str(tmp_path / "bad.yaml")])
    assert exit_status.value.code == 2
    assert "argument --max_steps/--max-steps: invalid int value: 'five'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["train", "--lerning-rate", "0.1"])
    err = capsys.readouterr().err
    assert "usage: postformer train" in err
    assert "unrecognized arguments: --lerning-rate 0.1; --lerning-rate (did you mean --learning-rate" in err


def test_every_training_flag_has_help_and_the_version_is_printed(capsys):
    from postformer import __version__
    from postformer.cli import build_parser

    with pytest.raises(SystemExit):
        cli(["--version"])
    assert capsys.readouterr().out.strip() == f"postformer {__version__}"
    train_parser = dict(_training_commands_of(build_parser()))["train"]
    undocumented = [a.option_strings[0] for a in train_parser._actions if a.option_strings and not a.help]
    assert undocumented == []
    choices = {a.dest: a.choices for a in train_parser._actions}
    assert set(choices["precision"]) == {"fp32", "bf16", "fp16"} and "cosine" in [str(c) for c in choices["lr_scheduler_type"]]
    assert set(choices["preset"]) == {"small", "medium", "large", "base", "design"}


def _training_commands_of(parser):
    from postformer.cli import _training_commands

    return _training_commands(parser).items()


def test_train_skips_bad_lines_when_asked_and_names_the_flag_that_does(tmp_path, capsys):
    posts = [json.dumps({"text": f"post number {i} about the match and the weather " * 3}) for i in range(60)]
    (tmp_path / "bad.jsonl").write_text("\n".join(posts + ['{"text": "unterminated']))  # cut off mid-record
    argv = ["train", "--data", str(tmp_path / "bad.jsonl"), "--output-dir", str(tmp_path / "out"), "--max-steps", "1",
            "--hidden-size", "32", "--intermediate-size", "64", "--num-hidden-layers", "1", "--vocab-size", "300",
            "--block-size", "32", "--batch-size", "2", "--sample-prompts", "--quiet"]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"postformer train: error: {tmp_path / 'bad.jsonl'}, line 61: not valid JSON (Unterminated string "
                   "starting at column 10): '{\"text\": \"unterminated'; fix or remove the line, or skip malformed "
                   "lines (on_bad_lines='skip', --skip-bad-lines)")
    assert cli([*argv, "--skip-bad-lines"]) == 0
    captured = capsys.readouterr()
    assert "warning: skipped 1 malformed line" in captured.err
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err  # --quiet


def test_mfu_never_exceeds_one_when_the_peak_was_measured_on_a_busy_machine(tokenizer, tmp_path, monkeypatch):
    """A peak measured while something else ran can be lower than what training then reaches: the next log that
    would exceed it measures the peak again and keeps the higher one."""
    from transformers import TrainingArguments

    import postformer.training.trainer as trainer_module

    model = PostformerForCausalLM(tiny_config(**config_token_ids(tokenizer)))
    trainer = PostformerTrainer(model=model, args=TrainingArguments(str(tmp_path), report_to="none"), peak_flops=1.0)
    monkeypatch.setattr(trainer_module, "measure_matmul_peak", lambda dtype: 1e15)
    trainer._sequence_length = 32
    trainer.state.num_input_tokens_seen = 0
    trainer.log({"loss": 1.0})
    trainer.state.num_input_tokens_seen = 10_000
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert trainer.peak_flops == 1e15 and 0 < logs["mfu"] < 1


# The 2-D weights inside tiny_config's two blocks: what Muon takes.
HIDDEN_MATRICES = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")}


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tokenizer, tmp_path):
    from postformer.training.arguments import training_arguments
    from postformer.training.trainer import CombinedOptimizer

    model = PostformerForCausalLM(tiny_config(**config_token_ids(tokenizer), position_embedding_type="learned"))
    args = training_arguments("train", output_dir=str(tmp_path), optimizer="muon", muon_learning_rate=0.05,
                              weight_decay=0.1, eval_strategy="no")
    optimizer = PostformerTrainer(model=model, args=args).create_optimizer()
    assert isinstance(optimizer, CombinedOptimizer) and set(optimizer.optimizers) == {"adamw", "muon"}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for group in optimizer.optimizers["muon"].param_groups for p in group["params"]}
    adamw = {names[id(p)]: group["weight_decay"] for group in optimizer.optimizers["adamw"].param_groups
             for p in group["params"]}
    assert isinstance(optimizer.optimizers["muon"], torch.optim.Muon)
    assert muon == HIDDEN_MATRICES
    assert set(adamw) == set(names.values()) - muon  # embeddings (tied head), positions, norms, biases
    assert all(decay == 0.0 for decay in adamw.values())  # none of them is a decayed matrix
    assert [g["lr"] for g in optimizer.optimizers["muon"].param_groups] == [0.05]
    # One step moves both kinds; the scheduler sees every group of both optimizers.
    assert len(optimizer.param_groups) == len(optimizer.optimizers["adamw"].param_groups) + 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(4, 300, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "model.layers.0.mlp.up_proj.weight" in changed and "model.embed_tokens.weight" in changed


@pytest.mark.parametrize("tie", [True, False])
def test_muon_leaves_every_head_to_adamw(tokenizer, tie):
    from postformer.training.trainer import muon_parameter_names

    config = tiny_config(**config_token_ids(tokenizer), tie_word_embeddings=tie, num_labels=5)
    # The LM head (tied or not) and a classifier's score map hidden states to tokens or labels: AdamW's.
    assert set(muon_parameter_names(PostformerForCausalLM(config))) == HIDDEN_MATRICES
    assert set(muon_parameter_names(PostformerForSequenceClassification(config))) == HIDDEN_MATRICES


def test_layer_lr_decay_scales_each_depth_and_zero_trains_the_head_only(tokenizer, tmp_path):
    from postformer.training.arguments import training_arguments
    from postformer.training.trainer import layer_depth

    model = PostformerForCausalLM(tiny_config(**config_token_ids(tokenizer), tie_word_embeddings=False))
    args = training_arguments("train", output_dir=str(tmp_path), layer_lr_decay=0.5, learning_rate=1e-2,
                              weight_decay=0.1, eval_strategy="no", optimizer="adamw")
    optimizer = PostformerTrainer(model=model, args=args).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    group_of = {names[id(p)]: g for g in optimizer.param_groups for p in g["params"]}
    assert set(group_of) == set(names.values())
    assert optimizer.param_groups[0]["lr"] == 1e-2  # the head's comes first: the logged rate is --learning_rate
    for name, group in group_of.items():
        depth = 0 if "embed" in name else int(name.split(".")[2]) + 1 if ".layers." in name else 3
        assert layer_depth(name, 2) == depth
        assert group["lr"] == pytest.approx(1e-2 * 0.5 ** (3 - depth)), name
        assert group["weight_decay"] == (0.1 if name.endswith("proj.weight") or name == "lm_head.weight" else 0.0)
    with pytest.raises(ValueError, match="layer_lr_decay must be between 0 and 1"):
        training_arguments("train", output_dir=str(tmp_path), layer_lr_decay=1.5, optimizer="adamw")
    with pytest.raises(ValueError, match="adamw only"):
        training_arguments("train", output_dir=str(tmp_path), layer_lr_decay=0.5, optimizer="muon")

    # 0: a linear probe. One step moves the head and leaves the body as it was.
    args = training_arguments("train", output_dir=str(tmp_path), layer_lr_decay=0.0, eval_strategy="no",
                              optimizer="adamw")
    optimizer = PostformerTrainer(model=model, args=args).create_optimizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(4, 300, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in names.values() if layer_depth(n, 2) == 3} and "lm_head.weight" in changed


def test_warmup_stable_decay_decays_over_the_last_decay_fraction_of_the_steps(tokenizer, tmp_path):
    from postformer.training.arguments import training_arguments

    model = PostformerForCausalLM(tiny_config(**config_token_ids(tokenizer)))
    args = training_arguments("train", output_dir=str(tmp_path), lr_scheduler_type="warmup_stable_decay",
                              decay_fraction=0.25, warmup_steps=10, learning_rate=1e-2, eval_strategy="no")
    trainer = PostformerTrainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    rates = []
    for _ in range(100):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates[5] == pytest.approx(5e-3) and rates[10] == rates[74] == pytest.approx(1e-2)  # warm-up, stable
    assert rates[75 + 12] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 12 / 25)))  # cosine decay
    assert trainer.args.lr_scheduler_kwargs == {"num_decay_steps": 25}  # recorded in training_args.json
    with pytest.raises(ValueError, match="decay_fraction must be in"):
        training_arguments("train", output_dir=str(tmp_path), decay_fraction=0)


def test_default_run_options_are_the_measured_recipe():
    """The default job's numbers in the README and benchmarks/results/recipe.md depend on these: seed 0 included
    (transformers' own default is 42)."""
    job, args = command_arguments("train")
    assert (job.preset, job.vocab_size, job.block_size, job.max_eval_posts) == ("small", 8192, 128, 300)
    assert (job.hidden_dropout, job.attention_dropout) == (0.0, 0.0)
    assert (args.seed, args.data_seed, args.max_steps, args.per_device_train_batch_size) == (0, 0, 700, 16)
    assert (args.optimizer, args.muon_learning_rate, args.muon_momentum) == ("muon", 0.02, 0.95)
    assert (args.learning_rate, args.weight_decay, args.warmup_steps, args.lr_scheduler_type.value,
            args.decay_fraction) == (2e-3, 0.1, 30, "warmup_stable_decay", 0.2)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.max_grad_norm) == (0.9, 0.999, 1e-8, 1.0)
    assert (args.eval_steps, args.save_steps, args.save_total_limit, args.logging_steps) == (350, 350, 2, 10)
