"""Soak test (not in CI): a long `postformer train` run SIGKILLed again and again at random moments and resumed each
time, against the same run left alone. Passes when every kill left a whole latest checkpoint and the final weights
(and loss curve) of the two runs are bit-identical.

Kill i waits for a seeded, randomly chosen checkpoint to appear, then (a seeded coin) either for a random part of
one checkpoint interval (so it lands anywhere: mid-step, mid-evaluation, mid-checkpoint-write, mid-final-save) or
for the next checkpoint write to begin and a random part of its measured duration (so it lands inside the write),
then sends SIGKILL; `postformer train --resume` restarts from the newest checkpoint. After each kill the newest checkpoint is
checked: trainer_state.json parses and names its step, model.safetensors loads, resume state files are present.

    python benchmarks/soak_kill_resume.py --quick   # 300 steps, 3 kills: about 1 min on 2 CPU cores
    python benchmarks/soak_kill_resume.py           # 3000 steps, 10 kills

Writes benchmarks/results/soak_kill_resume.json and .md; exits 1 if a check failed.
"""

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RESUME_FILES = ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="defaults of 300 steps, checkpoints every 25, 3 kills")
    parser.add_argument("--steps", type=int, help="default: 3000")
    parser.add_argument("--save-steps", type=int, help="default: 100")
    parser.add_argument("--eval-steps", type=int, help="default: 500")
    parser.add_argument("--kills", type=int, help="default: 10")
    parser.add_argument("--seed", type=int, default=0, help="picks the kill moments (the training seed stays 0)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-hidden-layers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training processes")
    parser.add_argument("--work-dir", help="where the runs go (default: a temporary folder, removed afterwards)")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/results/")
    parser.add_argument("train_flags", nargs="*", help="more `postformer train` flags, after --")
    args = parser.parse_args(argv)
    defaults = dict(steps=300, save_steps=25, eval_steps=100, kills=3) if args.quick else \
        dict(steps=3000, save_steps=100, eval_steps=500, kills=10)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    checkpoints = range(args.save_steps, args.steps, args.save_steps)
    if args.kills > len(checkpoints):
        parser.error(f"--kills {args.kills}: only {len(checkpoints)} checkpoints before the last step to kill after")
    return args


def train_command(args, output_dir: Path, tokenizer: Path, resume: bool) -> list[str]:
    flags = {
        "output-dir": output_dir, "tokenizer": tokenizer, "max-steps": args.steps, "save-steps": args.save_steps,
        "eval-steps": args.eval_steps, "hidden-size": args.hidden_size,
        # A logged loss averages the steps since the previous log, and a checkpoint does not keep that running sum:
        # logs must fall on every checkpoint for a resumed run's loss curve to match (the weights match anyway).
        "logging-steps": math.gcd(args.save_steps, 10),
        "intermediate-size": 2 * args.hidden_size, "num-hidden-layers": args.num_hidden_layers,
        "num-attention-heads": 4, "block-size": args.block_size, "batch-size": args.batch_size,
        "max-eval-posts": 100, "warmup-steps": 20, "learning-rate": 2e-3,
        "hidden-dropout": 0.1,  # dropout draws from the RNG, so resuming must restore the RNG state exactly
    }
    command = [sys.executable, "-m", "postformer", "train", "--disable-progress-bar", "--sample-prompts"]
    for name, value in flags.items():
        command += [f"--{name}", str(value)]
    return command + (["--resume"] if resume else []) + list(args.train_flags)


def child_env(args) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def start(args, output_dir: Path, tokenizer: Path, resume: bool, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(train_command(args, output_dir, tokenizer, resume), env=child_env(args), stdout=out,
                                stderr=subprocess.STDOUT)


def step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[1]) if checkpoint is not None else 0


def check_checkpoint(checkpoint: Path) -> list[str]:
    """What is wrong with a checkpoint that resume would pick (nothing: [])."""
    from safetensors.torch import load_file

    problems = [f"{name} missing" for name in RESUME_FILES if not (checkpoint / name).is_file()]
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        if state["global_step"] != step_of(checkpoint):
            problems.append(f"trainer_state.json says step {state['global_step']}")
        json.loads((checkpoint / "config.json").read_text())
        load_file(checkpoint / "model.safetensors")
    except Exception as error:  # noqa: BLE001 - any failure to read is what is being looked for
        problems.append(f"{type(error).__name__}: {error}")
    return problems


class Watch:
    """Polls a run folder for its newest checkpoint and for checkpoint writes in progress, timing both (the timings
    carry over from one process to the next)."""

    def __init__(self, output: Path, timing: dict):
        from postformer.training import latest_checkpoint

        self.latest_checkpoint, self.output, self.timing = latest_checkpoint, output, timing
        self.step = step_of(latest_checkpoint(output)) if output.is_dir() else 0
        self.published_at = self.write_began = None
        self.writing = False
        self.stale = self._partial()  # left by the killed process, until the new one removes them

    def _partial(self) -> set[str]:
        return {p.name for p in self.output.glob(".tmp-checkpoint-*")}

    def poll(self) -> None:
        time.sleep(0.01)
        now = time.perf_counter()
        partial = self._partial()
        self.stale &= partial
        self.writing = bool(partial - self.stale)
        if self.writing and self.write_began is None:
            self.write_began = now
        newest = step_of(self.latest_checkpoint(self.output))
        if newest > self.step:
            if self.published_at is not None:
                checkpoints = (newest - self.step) / self.timing["save_steps"]
                self.timing["interval_s"] = (now - self.published_at) / checkpoints
            if self.write_began is not None:
                self.timing["save_s"] = now - self.write_began
            self.step, self.published_at, self.write_began = newest, now, None


def interrupted_run(args, work: Path, tokenizer: Path) -> dict:
    """Train, killing at seeded random moments and resuming, until the run finishes."""
    output = work / "interrupted"
    rng = random.Random(args.seed)
    targets = sorted(rng.sample(range(args.save_steps, args.steps, args.save_steps), args.kills))
    kills, problems, starts = [], [], 0
    timing = {"save_steps": args.save_steps, "interval_s": 1.0, "save_s": 0.05}  # guesses until measured
    begin = time.perf_counter()
    while True:
        watch = Watch(output, timing)
        log = work / f"start-{starts}.log"
        process = start(args, output, tokenizer, resume=watch.step > 0, log=log)
        starts += 1
        # The next kill's checkpoint; one a kill has already passed (resumed from a later step) moves up to the next.
        target = max(targets.pop(0), watch.step + args.save_steps) if targets else args.steps
        if target >= args.steps:  # no kill left (or no checkpoint left to kill after): let it finish
            if process.wait() != 0:
                raise RuntimeError(f"training failed; see {log}")
            break
        # Half the kills land anywhere between two checkpoints, half inside the next checkpoint write.
        aim, fraction = ("checkpoint write" if rng.random() < 0.5 else "anywhere"), rng.random()
        while process.poll() is None and watch.step < target:
            watch.poll()
        if aim == "checkpoint write":
            while process.poll() is None and not watch.writing and watch.step == target:
                watch.poll()
            delay = fraction * timing["save_s"]
        else:
            delay = fraction * timing["interval_s"]
        time.sleep(delay)
        killed = process.poll() is None
        if killed:
            os.kill(process.pid, signal.SIGKILL)
        if process.wait() not in (0, -signal.SIGKILL):
            raise RuntimeError(f"training failed ({process.returncode}); see {log}")
        latest = watch.latest_checkpoint(output)
        partial = sorted(p.name for p in output.glob(".tmp-*"))
        found = check_checkpoint(latest) if latest is not None else ["no checkpoint"]
        problems += [f"kill {len(kills) + 1}: {latest}: {p}" for p in found]
        kills.append({"after_checkpoint": target, "aim": aim, "delay_s": round(delay, 3), "killed": killed,
                      "resumed_from_step": step_of(latest), "partial_saves_left": partial, "latest_whole": not found})
        print(f"kill {len(kills)} ({aim}): {delay:.2f}s after checkpoint-{target}"
              f"{' + write began' if aim == 'checkpoint write' else ''} -> resume from step {step_of(latest)}"
              f"{' (left mid-save: ' + ', '.join(partial) + ')' if partial else ''}", flush=True)
        if not killed:  # it finished first: the run is complete
            break
    timing.pop("save_steps")
    return {"output": output, "wall_s": time.perf_counter() - begin, "starts": starts, "kills": kills,
            "problems": problems, "timing": timing}


def compare(a: Path, b: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    diffs = {
        name: (0.0 if torch.equal(wa[name], wb[name]) else (wa[name].double() - wb[name].double()).abs().max().item())
        for name in sorted(wa.keys() & wb.keys())
    }

    def losses(folder):
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return {e["step"]: e["loss"] for e in history if "loss" in e}

    la, lb = losses(a), losses(b)
    return {
        "same_tensor_names": wa.keys() == wb.keys(),
        "bit_identical": wa.keys() == wb.keys() and all(d == 0.0 for d in diffs.values()),
        "max_abs_diff": max(diffs.values(), default=0.0),
        "max_abs_diff_per_tensor": diffs,
        "loss_curves_equal": la == lb,
        "logged_steps_differing": sorted(step for step in la.keys() | lb.keys() if la.get(step) != lb.get(step)),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from postformer.data import load_posts
    from postformer.tokenization import train_tokenizer

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("interrupted", "reference"):
        shutil.rmtree(work / name, ignore_errors=True)
    tokenizer = work / "tokenizer"  # trained once, given to every process: both runs see the same token ids
    train_tokenizer(load_posts()["train"]["text"], vocab_size=args.vocab_size, show_progress=False).save_pretrained(tokenizer)

    begin = time.perf_counter()
    interrupted = interrupted_run(args, work, tokenizer)
    print(f"interrupted run: {len(interrupted['kills'])} kills, {interrupted['starts']} starts, "
          f"{interrupted['wall_s']:.0f} s", flush=True)
    reference_begin = time.perf_counter()
    with open(work / "reference.log", "w") as out:
        if subprocess.run(train_command(args, work / "reference", tokenizer, False), env=child_env(args), stdout=out,
                          stderr=subprocess.STDOUT).returncode != 0:
            raise RuntimeError(f"reference run failed; see {work / 'reference.log'}")
    reference_wall = time.perf_counter() - reference_begin
    comparison = compare(interrupted["output"], work / "reference")
    passed = comparison["bit_identical"] and comparison["loss_curves_equal"] and not interrupted["problems"]

    result = {
        "command": "python " + " ".join(sys.argv),
        "mode": "quick" if args.quick else "full",
        "passed": passed,
        "machine": {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
                    "platform": platform.platform(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "config": {k: getattr(args, k) for k in ("steps", "save_steps", "eval_steps", "kills", "seed", "hidden_size",
                                                 "num_hidden_layers", "block_size", "batch_size", "vocab_size",
                                                 "train_flags")},
        "kills": interrupted["kills"],
        "kills_sent": sum(k["killed"] for k in interrupted["kills"]),
        "kills_mid_save": sum(bool(k["partial_saves_left"]) for k in interrupted["kills"]),
        "process_starts": interrupted["starts"],
        "measured_s": {k: round(v, 3) for k, v in interrupted["timing"].items()},
        "checkpoint_problems": interrupted["problems"],
        **{k: v for k, v in comparison.items()},
        "interrupted_wall_s": round(interrupted["wall_s"], 1),
        "reference_wall_s": round(reference_wall, 1),
        "total_wall_s": round(time.perf_counter() - begin, 1),
    }
    if not args.work_dir:
        shutil.rmtree(work)
    summary = "\n".join([
        "| mode | steps | kills sent (mid-save) | starts | weights bit-identical | max abs diff | loss curves equal "
        "| checkpoint problems | interrupted run | reference run | total |",
        "|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|",
        f"| {result['mode']} | {args.steps} | {result['kills_sent']} ({result['kills_mid_save']}) "
        f"| {result['process_starts']} | {'yes' if result['bit_identical'] else 'NO'} | {result['max_abs_diff']:.3g} "
        f"| {'yes' if result['loss_curves_equal'] else 'NO'} | {len(result['checkpoint_problems'])} "
        f"| {result['interrupted_wall_s']:.0f} s | {result['reference_wall_s']:.0f} s | {result['total_wall_s']:.0f} s |",
    ])
    print(summary)
    if not args.no_results:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak_kill_resume.json").write_text(json.dumps(result, indent=2) + "\n")
        kills = "\n".join(
            f"| {i} | {k['aim']} | checkpoint-{k['after_checkpoint']} + {k['delay_s']:.2f} s "
            f"| {'yes' if k['killed'] else 'finished first'} "
            f"| {k['resumed_from_step']} | {', '.join(k['partial_saves_left']) or '-'} | {'yes' if k['latest_whole'] else 'NO'} |"
            for i, k in enumerate(result["kills"], 1)
        )
        (RESULTS / "soak_kill_resume.md").write_text(
            f"# Kill-and-resume soak ({result['mode']})\n\nCommand: `{result['command']}` ({result['machine']['date']}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s))\n\n"
            f"{summary}\n\n| kill | aimed at | when | SIGKILL sent | resumed from step | partial saves left "
            f"| newest checkpoint whole |\n|---:|---|---|---|---:|---|---|\n{kills}\n"
            + (f"\nProblems:\n\n" + "\n".join(f"- {p}" for p in result["checkpoint_problems"]) + "\n"
               if result["checkpoint_problems"] else "")
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
