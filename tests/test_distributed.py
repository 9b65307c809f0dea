"""Under `torchrun`, two CPU processes (gloo): `postformer train` trains the same model as one process with the
same global batch, and a saved folder loaded with tensor parallelism gives the logits of one process.

Both runs share one tokenizer (so the token ids match), start from the same seed and see the same data order:
one process with --batch-size 8 against two processes with --batch-size 4 each (Accelerate hands process 0 the
first 4 blocks of each global batch of 8 and process 1 the next 4). Data-parallel training only changes the
order of float additions (per-process gradients averaged by an all-reduce), so the runs agree to float32 noise.

Measured on the CPU (2 cores, OMP_NUM_THREADS=1): per-step training losses within 1e-6, final weights within
3e-7, final eval loss within 5e-5 relative. The eval loss differs a little more than the training losses because
the 231 validation blocks do not split evenly into 2 processes x 4: Accelerate pads the last batch with a repeated
block and the Trainer averages per-batch mean losses, so that batch's mean includes the duplicate. Running the
same 8 steps with the wrong global batch (2 processes x 8, or 1 process x 4) moves the per-step losses by 3e-3 to
5e-2, the weights by 1.7e-2 and the eval loss by 2.5e-3 to 4.5e-3 relative: the tolerances below sit about
100x (losses, weights) and 10x (eval loss) above the noise, and well under those differences.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BLOCK_SIZE = 32
MAX_STEPS = 8
GLOBAL_BATCH = 8
TIMEOUT_S = 300

TRAIN_LOSS_ATOL = 1e-4  # per-step training loss, nats/token (measured: ~1e-6)
WEIGHT_ATOL = 1e-4  # final parameters (measured: ~3e-7)
EVAL_LOSS_RTOL = 5e-4  # final eval loss (measured: ~5e-5)

TINY_RUN = [
    "--hidden-size", "32", "--intermediate-size", "64", "--num-hidden-layers", "2", "--num-attention-heads", "4",
    "--vocab-size", "300", "--block-size", str(BLOCK_SIZE), "--max-steps", str(MAX_STEPS),
    "--eval-steps", str(MAX_STEPS), "--save-steps", str(MAX_STEPS), "--logging-steps", "1",
    "--max-eval-posts", "40", "--warmup-steps", "0", "--disable-progress-bar",
    "--hidden-dropout", "0", "--attention-dropout", "0", "--seed", "0",
    "--sample-prompts",  # no prompts: no generation at evaluation
    # AdamW, not the default Muon: torch.optim.Muon orthogonalises in bf16, which turns the all-reduce's float
    # rounding (~1e-7) into ~1e-3 weight differences; what is tested here is data parallelism itself.
    "--optimizer", "adamw",
]

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed"),
    pytest.mark.slow,
]


def _env(hf_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "TORCHELASTIC_"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK"):
        env.pop(name, None)  # in case pytest itself runs under a launcher
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(hf_home),  # a cold datasets cache: the processes prepare the bundled posts themselves
        PYTHONUNBUFFERED="1",
    )
    return env


def _run(command: list[str], cwd: Path, hf_home: Path) -> tuple[str, float]:
    """Run `command` in its own process group, killing the whole group (torchrun and its workers) on timeout.
    Returns stdout and the wall time; fails the test with the output when the command fails."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=_env(hf_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"timed out after {TIMEOUT_S} s (a hang?): {' '.join(command)}\n--- stdout ---\n{stdout[-4000:]}\n"
            f"--- stderr ---\n{stderr[-8000:]}"
        )
    elapsed = time.perf_counter() - start
    assert process.returncode == 0, (
        f"exit status {process.returncode}: {' '.join(command)}\n--- stdout ---\n{stdout[-4000:]}\n"
        f"--- stderr ---\n{stderr[-8000:]}"
    )
    return stdout, elapsed


def _torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _results(output_dir: Path) -> dict:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    return {
        "state": state,
        "losses": losses,
        "eval_loss": json.loads((output_dir / "metrics.json").read_text())["eval_loss"],
        "weights": load_file(str(output_dir / "model.safetensors")),
    }


def test_torchrun_two_cpu_processes_match_one_process(tmp_path):
    _, tokenizer_s = _run(
        [sys.executable, "-m", "postformer", "train-tokenizer", "--vocab-size", "300", "--output-dir", "tok",
         "--quiet"],
        tmp_path, tmp_path / "hf_tok",
    )
    tokenizer = ["--tokenizer", str(tmp_path / "tok")]

    # The distributed run first and with its own empty cache, so both processes load and tokenise from scratch.
    _, ddp_s = _run(
        _torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "postformer", "train", *TINY_RUN, *tokenizer,
                       "--batch-size", str(GLOBAL_BATCH // 2), "--output-dir", "ddp"],
        tmp_path, tmp_path / "hf_ddp",
    )
    _, single_s = _run(
        [sys.executable, "-m", "postformer", "train", *TINY_RUN, *tokenizer,
         "--batch-size", str(GLOBAL_BATCH), "--output-dir", "single"],
        tmp_path, tmp_path / "hf_single",
    )
    print(f"wall time: tokenizer {tokenizer_s:.1f} s, torchrun x2 {ddp_s:.1f} s, single {single_s:.1f} s")

    single, ddp = _results(tmp_path / "single"), _results(tmp_path / "ddp")

    # The two processes trained one model together: every step consumed the global batch (tokens counted over
    # both processes). Two independent single-process runs writing one folder would report half as many tokens.
    tokens = MAX_STEPS * GLOBAL_BATCH * BLOCK_SIZE
    assert single["state"]["log_history"][-1]["num_input_tokens_seen"] == tokens
    assert ddp["state"]["log_history"][-1]["num_input_tokens_seen"] == tokens, (
        "the torchrun processes did not train as one data-parallel job (each saw only its own batches): "
        f"{ddp['state']['log_history'][-1]}"
    )
    assert ddp["state"]["global_step"] == single["state"]["global_step"] == MAX_STEPS

    assert sorted(single["losses"]) == sorted(ddp["losses"]) == list(range(1, MAX_STEPS + 1))
    differences = {step: abs(single["losses"][step] - ddp["losses"][step]) for step in single["losses"]}
    weight_difference = max((single["weights"][k] - ddp["weights"][k]).abs().max().item() for k in single["weights"])
    eval_difference = abs(single["eval_loss"] - ddp["eval_loss"]) / single["eval_loss"]
    print(f"per-step |loss difference|: {differences}")
    print(f"max |weight difference| {weight_difference:.2e}, eval loss relative difference {eval_difference:.2e}")

    assert max(differences.values()) <= TRAIN_LOSS_ATOL, (
        f"per-step training losses differ by up to {max(differences.values()):.2e} (> {TRAIN_LOSS_ATOL}):\n"
        f"single: {single['losses']}\ntorchrun: {ddp['losses']}"
    )
    assert single["weights"].keys() == ddp["weights"].keys()
    assert weight_difference <= WEIGHT_ATOL, f"final weights differ by up to {weight_difference:.2e}"
    assert eval_difference <= EVAL_LOSS_RTOL, (
        f"final eval loss {ddp['eval_loss']} (torchrun) vs {single['eval_loss']} (single process): relative "
        f"difference {eval_difference:.2e} > {EVAL_LOSS_RTOL}"
    )


TP_SCRIPT = """
import os, sys, torch
import postformer
from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], distributed_config=DistributedConfig(tp_plan="auto")).eval()
weight = model.model.layers[0].self_attn.k_proj.weight
with torch.no_grad():
    logits = model(input_ids=torch.load(sys.argv[2])).logits
if int(os.environ["RANK"]) == 0:
    print("local", tuple(weight.to_local().shape), "global", tuple(weight.shape))
    torch.save(logits, sys.argv[3])
"""


def test_tensor_parallel_load_under_torchrun_gives_the_logits_of_one_process(tmp_path):
    """Two CPU processes (gloo) load a saved folder with tp_plan="auto": each holds half the heads of every
    projection (grouped-query attention: 4 query heads, 2 key-value heads) and the logits equal one process's."""
    from conftest import tiny_config

    from postformer import PostformerForCausalLM

    torch.manual_seed(0)
    model = PostformerForCausalLM(tiny_config(num_key_value_heads=2)).eval()
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(4, 96, (2, 12))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        expected = model(ids).logits
    (tmp_path / "tp.py").write_text(TP_SCRIPT)
    stdout, _ = _run(_torchrun() + ["--standalone", "--nproc_per_node", "2", str(tmp_path / "tp.py"),
                                    str(tmp_path / "model"), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
                     tmp_path, tmp_path / "hf_home")
    assert "local (8, 32) global (16, 32)" in stdout
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=1e-5)
