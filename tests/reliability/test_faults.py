"""Faults: `postformer train` processes killed with SIGKILL, mid-checkpoint and mid-training, then resumed.

Every run is a real `python -m postformer train` subprocess. Where a kill must land (inside a checkpoint write,
at a given step) a `sitecustomize.py` put on the subprocess's PYTHONPATH pauses it there and tells the test, which
looks at the files and then kills it (or lets it go on); production code has no test hooks. Hooks, by environment
variable (unset: the subprocess runs untouched):

- FAULTS_PAUSE_AT_RENAME=NAME: pause in os.replace(src, dst) when dst's name is NAME (before the rename);
- FAULTS_PAUSE_AFTER_STEP=N: pause after the N-th optimizer step of this process (before it is saved);
- FAULTS_MARKER=FILE: written when paused; FAULTS_CONTINUE=FILE: the pause ends when it exists (else never);
- FAULTS_TORCH_LOAD_LOG=FILE: every torch.load must pass weights_only=True, and each file loaded is logged.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config  # tests/conftest.py: pytest puts tests/ on sys.path for this subfolder too
from safetensors.torch import load_file

from postformer import PostformerForCausalLM
from postformer.data import load_posts
from postformer.tokenization import train_tokenizer
from postformer.training import latest_checkpoint

MAX_STEPS, SAVE_STEPS = 30, 10
TRAIN_FLAGS = [
    "--hidden-size", "32", "--intermediate-size", "64", "--num-hidden-layers", "2", "--num-attention-heads", "4",
    "--block-size", "32", "--batch-size", "8", "--learning-rate", "3e-3", "--warmup-steps", "0",
    "--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS), "--eval-steps", "1000", "--logging-steps", "5",
    "--max-eval-posts", "40", "--hidden-dropout", "0.1", "--sample-prompts", "--disable-progress-bar",
]  # dropout: the RNG state must be restored too for a resumed run to match; --save-total-limit stays 2
TIMEOUT = 300  # seconds for one training process, on a slow shared machine

pytestmark = pytest.mark.slow  # SIGKILLed training subprocesses

SITECUSTOMIZE = r'''
import os, sys, time

def _pause(where):
    marker = os.environ["FAULTS_MARKER"]
    with open(marker + ".part", "w") as f:
        f.write(where)
    os.rename(marker + ".part", marker)  # whole when it appears (os.replace may be the patched one)
    go_on = os.environ.get("FAULTS_CONTINUE")
    while not (go_on and os.path.exists(go_on)):
        time.sleep(0.02)

if os.environ.get("FAULTS_PAUSE_AT_RENAME"):
    _replace = os.replace
    def _paused_replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == os.environ["FAULTS_PAUSE_AT_RENAME"]:
            _pause(os.fspath(src))
        return _replace(src, dst, *args, **kwargs)
    os.replace = _paused_replace

if os.environ.get("FAULTS_PAUSE_AFTER_STEP"):
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    _steps, _inner = [0], set()
    def _before_step(optimizer, args, kwargs):  # an optimizer made of others (Muon + AdamW) steps them inside
        _inner.update(id(o) for o in getattr(optimizer, "optimizers", {}).values())
    def _after_step(optimizer, args, kwargs):
        if id(optimizer) in _inner:
            return  # one training step, counted once
        _steps[0] += 1
        if _steps[0] == int(os.environ["FAULTS_PAUSE_AFTER_STEP"]):
            _pause(f"step {_steps[0]}")
    register_optimizer_step_pre_hook(_before_step)
    register_optimizer_step_post_hook(_after_step)

if os.environ.get("FAULTS_TORCH_LOAD_LOG"):
    import torch
    _load = torch.load
    def _checked_load(f, *args, **kwargs):
        with open(os.environ["FAULTS_TORCH_LOAD_LOG"], "a") as log:
            log.write(f"{os.fspath(f)}\t{kwargs.get('weights_only')}\n")
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load({f!r}) without weights_only=True")
        return _load(f, *args, **kwargs)
    torch.load = _checked_load

# No loss-curve picture (run.py skips it when matplotlib cannot be imported): importing matplotlib costs ~1 s.
import importlib.machinery
class _NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "matplotlib" else None
    def create_module(self, spec):
        raise ImportError("matplotlib is left out of the fault tests' training runs")
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, _NoMatplotlib())
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """hooks/ (the sitecustomize) and tokenizer/ (trained once: each run takes it with --tokenizer)."""
    root = tmp_path_factory.mktemp("faults")
    (root / "hooks").mkdir()
    (root / "hooks" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    tokenizer = train_tokenizer(load_posts()["train"]["text"], vocab_size=300, show_progress=False)
    tokenizer.save_pretrained(root / "tokenizer")
    return root


def start_training(workspace: Path, output_dir: Path, *flags: str, **hooks: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTS_")}
    env.update(hooks)
    env.update(
        PYTHONPATH=os.pathsep.join([str(workspace / "hooks"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        OMP_NUM_THREADS="1",  # as the other runs: bit-identical results need the same reduction order
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    command = [sys.executable, "-m", "postformer", "train", "--output-dir", str(output_dir),
               "--tokenizer", str(workspace / "tokenizer"), *TRAIN_FLAGS, *flags]
    log_path = output_dir.parent / f"{output_dir.name}-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log_path
    return process


def finish(process: subprocess.Popen) -> None:
    returncode = process.wait(TIMEOUT)
    assert returncode == 0, f"training failed ({returncode}):\n{process.log_path.read_text()[-4000:]}"


def wait_until_paused(process: subprocess.Popen, marker: Path) -> str:
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"training never reached the pause ({process.returncode}):\n{process.log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    return marker.read_text()


def sigkill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(TIMEOUT) == -signal.SIGKILL


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"weights differ from the uninterrupted run's: {different}"


def assert_no_temporary_names(output_dir: Path) -> None:
    assert not [str(p) for p in output_dir.rglob(".tmp-*")]


def assert_safe_formats_only(folder: Path) -> None:
    """Weights in safetensors; the only pickles are the optimizer/scheduler/RNG states a resume needs."""
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names
    assert not {n for n in names if n.endswith((".bin", ".pkl"))}, names
    assert {n for n in names if n.endswith((".pt", ".pth"))} <= {"optimizer.pt", "scheduler.pt", "rng_state.pth"}


@pytest.fixture(scope="module")
def reference(workspace):
    """The same run, never interrupted: started at once, in parallel with the first test's runs; calling the
    fixture's value waits for it and returns its output folder."""
    output = workspace / "reference"
    process = start_training(workspace, output)

    def finished() -> Path:
        finish(process)
        return output

    yield finished
    if process.poll() is None:  # a test failed before waiting for it
        process.kill()
        process.wait()


def test_kill_inside_a_checkpoint_write_keeps_the_previous_checkpoint_and_resume_finishes(workspace, reference, tmp_path):
    output = tmp_path / "run"
    marker = tmp_path / "paused"
    process = start_training(workspace, output, FAULTS_PAUSE_AT_RENAME="checkpoint-20", FAULTS_MARKER=str(marker))
    staged = Path(wait_until_paused(process, marker))

    # Paused between writing checkpoint 20 and renaming it into place: complete, but under a temporary name.
    assert staged == output / ".tmp-checkpoint-20" / "checkpoint-20"
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json"} <= {p.name for p in staged.iterdir()}
    assert_safe_formats_only(staged)
    assert not (output / "checkpoint-20").exists()
    assert latest_checkpoint(output) == output / "checkpoint-10"

    sigkill(process)
    assert latest_checkpoint(output) == output / "checkpoint-10"  # the half-published one is never picked
    assert json.loads((output / "checkpoint-10" / "trainer_state.json").read_text())["global_step"] == 10
    model = PostformerForCausalLM.from_pretrained(output / "checkpoint-10")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (output / "config.json").exists()  # no final model

    load_log = tmp_path / "torch_load.log"
    finish(start_training(workspace, output, "--resume", FAULTS_TORCH_LOAD_LOG=str(load_log)))
    loaded = [line.split("\t") for line in load_log.read_text().splitlines()]
    assert {Path(f).parent for f, _ in loaded} == {output / "checkpoint-10"}  # resumed from the previous one
    assert {Path(f).name for f, _ in loaded} == {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert_same_weights(output, reference())
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]  # rotated
    assert_no_temporary_names(output)  # the leftover .tmp-checkpoint-20 was removed on resume


def test_run_killed_at_a_random_step_resumes_to_the_same_weights(workspace, reference, tmp_path):
    kill_after = random.Random(1).choice([s for s in range(SAVE_STEPS + 1, MAX_STEPS) if s % SAVE_STEPS])
    output = tmp_path / "run"
    marker = tmp_path / "paused"
    process = start_training(workspace, output, FAULTS_PAUSE_AFTER_STEP=str(kill_after), FAULTS_MARKER=str(marker))
    wait_until_paused(process, marker)
    sigkill(process)
    assert latest_checkpoint(output) == output / f"checkpoint-{kill_after // SAVE_STEPS * SAVE_STEPS}"
    assert_no_temporary_names(output)  # killed between saves: nothing half-written

    # The resumed run pauses as it moves the final model into place: saved whole under a temporary name first.
    marker, go_on = tmp_path / "publishing", tmp_path / "go-on"
    process = start_training(
        workspace, output, "--resume", FAULTS_PAUSE_AT_RENAME="model.safetensors", FAULTS_MARKER=str(marker),
        FAULTS_CONTINUE=str(go_on),
    )
    staged = Path(wait_until_paused(process, marker))
    assert staged == output / ".tmp-save" / "model.safetensors"
    assert {"config.json", "model.safetensors"} <= {p.name for p in staged.parent.iterdir()}  # config.json goes last
    assert not (output / "model.safetensors").exists() and not (output / "config.json").exists()
    go_on.touch()
    finish(process)

    assert_same_weights(output, reference())
    assert_safe_formats_only(output)
    assert_safe_formats_only(output / "checkpoint-30")
    assert_no_temporary_names(output)
    for name in ("config.json", "trainer_state.json", "metrics.json", "training_config.json", "training_args.json"):
        json.loads((output / name).read_text())
    loaded = PostformerForCausalLM.from_pretrained(output).state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights(reference()).items())


def test_a_checkpoint_replaces_an_old_folder_of_its_step_and_rotation_runs_after_the_rename(tmp_path):
    """In-process: a checkpoint-N left by an older run (resumed from an earlier checkpoint) is replaced whole,
    and save_total_limit deletes old checkpoints only after the new one is in place."""
    from transformers import TrainingArguments

    from postformer.training import PostformerTrainer

    trainer = PostformerTrainer(model=PostformerForCausalLM(tiny_config()),
                                args=TrainingArguments(str(tmp_path), save_total_limit=2, report_to="none"))
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "stale.txt").write_text("written in place by an older run")
    for step in (1, 2, 3, 4):
        trainer.state.global_step = step
        trainer._save_checkpoint(trainer.model, trial=None)
        if step == 2:
            assert not (tmp_path / "checkpoint-2" / "stale.txt").exists()
            assert json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert_safe_formats_only(tmp_path / "checkpoint-4")
    assert json.loads((tmp_path / "checkpoint-4" / "training_args.json").read_text())["save_total_limit"] == 2
