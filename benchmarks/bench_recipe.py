"""Recipe benchmark: how much a training recipe learns per CPU-minute, on posts.

Each row trains one configuration of `postformer train` (the arguments of `command_arguments("train", ...)`)
for a fixed wall-clock budget on this machine and reports validation bits per character (per post, "<s> post
</s>", `postformer.evaluation.evaluate_posts`): on the bundled validation split (500 posts) and, when
`../shared/data/posts` exists, on the full corpus's validation split (1,491 posts from 66 pages). Budgets are
wall-clock minutes of training on a quiet machine; each result also records the tokens seen and the steps, so
runs on a noisy or faster machine can be compared by tokens.

A budget becomes a step count before the run, so the learning-rate schedule completes inside it: a short
calibration run of the configuration measures seconds per step (the mean over 40 steps after 5 of warm-up), and
the run gets `max_steps = budget / seconds per step`. Calibrations of separate rows vary by 10-15% on a shared
machine, so the 2-minute ablations are all sized from the baseline row's steps instead: a row that changes
nothing a step costs (learning rate, schedule, initialisation) trains for the same steps; the others for the
baseline's steps times the ratio of the two step times, measured back to back. Runs are never cut short (a
schedule cut before its end measures nothing); each records its training seconds.

Rows: today's recipe first, then ablations at the 2-minute budget (each the baseline with one change; median of
3 seeds), then the preset trade-off and the final recipe at 2, 10 and 30 minutes (one seed beyond 2 minutes). Each
row is written to recipe.json (and recipe.md) as soon as it finishes, with its wall-clock seconds; a rerun skips
rows already there (`--force` reruns them), `--only NAME ...` runs the named rows, `--list` lists them.

The full run (no `--only`) is the rows that decide the recipe, about 3 hours of a quiet 2-core machine: the main job
before and now, the baseline, each change the recipe kept and each architecture switch alone, the recipe, and the
preset trade-off (10 two-minute rows of 3 seeds at about 8 minutes each, calibrations and evaluations included; the
main job's two rows about 12 minutes; the 10- and 30-minute rows about 1.6 hours). The sweeps that found nothing to
change (learning rate, batch size, block length, vocabulary size, other combinations) and the large preset at 30
minutes (third at 10 and at 30 minutes) are in the table too; `--all` adds them to a run (about 2 hours more).

    python benchmarks/bench_recipe.py --list
    python benchmarks/bench_recipe.py --only baseline muon      # ~15 minutes
    python benchmarks/bench_recipe.py                           # the full run: about 3 hours on 2 cores
    python benchmarks/bench_recipe.py --all                     # every row: about 5 hours

Rows that train on the full corpus are skipped when `../shared/data/posts` is absent. The bundled sample's 4,000
training posts come from the same corpus, so the full-corpus rows are judged on the full corpus's own
validation split (its posts are not in its train split); their bundled-split figure may include posts they
trained on and is reported for reference only.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

from postformer.data import load_posts_split
from postformer.evaluation import evaluate_posts
from postformer.model_files import load_model
from postformer.progress import progress_bars
from results_file import open_results
from postformer.training import train
from postformer.training.arguments import command_arguments

RESULTS = Path(__file__).resolve().parent / "results"
FULL_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "posts"
CALIBRATION_STEPS, CALIBRATION_WARMUP = 45, 5
SEEDS = (0, 1, 2)

# The documented 30-minute config, run as `postformer train --config` runs it (where the data and the output go
# is the benchmark's business).
EXAMPLE_30MIN = {k: v for k, v in yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "posts-30min.yaml")
                                                 .read_text()).items() if k not in ("data", "output_dir")}

# `postformer train`'s recipe before this benchmark (0.2.0): the ablations change one thing of it. RECIPE: what
# the benchmark found (the defaults since 0.3.0), which the preset trade-off uses.
BEFORE = dict(optimizer="adamw", lr_scheduler_type="cosine", hidden_dropout=0.1, attention_dropout=0.1)
RECIPE = dict(optimizer="muon", lr_scheduler_type="warmup_stable_decay", hidden_dropout=0.0, attention_dropout=0.0)


def before(**change) -> dict:
    return {**BEFORE, **change}


def recipe(**change) -> dict:
    return {**RECIPE, **change}


# name -> (budget in minutes, data: "bundled" or "full", seeds, options of `postformer train`, what it tests)
ROWS = {
    "main-job-300": (None, "bundled", SEEDS, before(max_steps=300),
                     "the main job before this benchmark: `postformer train` of 0.2.0, 300 steps (not budget-sized)"),
    "main-job": (None, "bundled", SEEDS, {}, "the main job now: `postformer train` with no flags (fixed steps)"),
    "baseline": (2, "bundled", SEEDS, before(), "the recipe before: AdamW, cosine, dropout 0.1"),
    "no-dropout": (2, "bundled", SEEDS, before(hidden_dropout=0.0, attention_dropout=0.0),
                   "no dropout (data is seen a few times)"),
    "muon": (2, "bundled", SEEDS, before(optimizer="muon"), "Muon for the hidden matrices, AdamW for the rest"),
    "lr-1e-3": (2, "bundled", SEEDS, before(learning_rate=1e-3), "half the peak learning rate"),
    "lr-4e-3": (2, "bundled", SEEDS, before(learning_rate=4e-3), "twice the peak learning rate"),
    "wsd": (2, "bundled", SEEDS, before(lr_scheduler_type="warmup_stable_decay"),
            "warm-up, stable, then decay over the last 20% (instead of cosine)"),
    "batch-8": (2, "bundled", SEEDS, before(batch_size=8), "8 blocks per step (more, smaller steps)"),
    "batch-32": (2, "bundled", SEEDS, before(batch_size=32), "32 blocks per step"),
    "block-64": (2, "bundled", SEEDS, before(block_size=64), "64-token blocks"),
    "block-256": (2, "bundled", SEEDS, before(block_size=256, max_position_embeddings=256), "256-token blocks"),
    "qk-norm": (2, "bundled", SEEDS, before(qk_norm=True), "QK-norm"),
    "relu2": (2, "bundled", SEEDS, before(hidden_act="relu2"), "ReLU-squared feed-forward"),
    "zero-init": (2, "bundled", SEEDS, before(zero_init_output_projections=True), "zero-initialised output projections"),
    "untied": (2, "bundled", SEEDS, before(tie_word_embeddings=False), "an LM head of its own"),
    "vocab-4096": (2, "bundled", SEEDS, before(vocab_size=4096), "tokenizer of 4,096 tokens"),
    "vocab-16384": (2, "bundled", SEEDS, before(vocab_size=16384), "tokenizer of 16,384 tokens"),
    "combined": (2, "bundled", SEEDS, before(optimizer="muon", hidden_dropout=0.0, attention_dropout=0.0,
                                             hidden_act="relu2"), "Muon + no dropout + ReLU-squared together"),
    "recipe": (2, "bundled", SEEDS, recipe(), "Muon + warm-up/stable/decay + no dropout together: the new defaults"),
    # The new defaults' 712 steps, not a step count of its own: an untied head costs a step what a tied one does
    # (the untied row's back-to-back timing gave it 662 steps to the baseline's 648, noise), and a calibration of
    # its own under other load than the recipe row's would give it more or fewer steps than the row it is compared to.
    "recipe-untied": (None, "bundled", SEEDS, recipe(tie_word_embeddings=False, max_steps=712),
                      "the new defaults with an LM head of its own, as untied found, for the new defaults' 712 steps"),
    "recipe-batch-8": (2, "bundled", SEEDS, recipe(batch_size=8),
                       "the new defaults with 8 blocks per step, as batch-8 found"),
    "recipe-block-64": (2, "bundled", SEEDS, recipe(block_size=64),
                        "the new defaults with 64-token blocks, as block-64 found"),
    "medium-2min": (2, "bundled", SEEDS, recipe(preset="medium"), "the medium preset at the same budget (new recipe)"),
    "posts-30min": (None, "full", (0,), EXAMPLE_30MIN, "examples/posts-30min.yaml: the final recipe, 30 minutes on "
                    "the full corpus (the medium preset: also the preset trade-off's medium row at 30 minutes)"),
    **{f"{preset}-{minutes}min": (minutes, "full", (0,), recipe(preset=preset),
                                  f"preset trade-off at {minutes} minutes (new recipe)")
       for minutes, presets in ((10, ("small", "medium", "large")), (30, ("small", "large"))) for preset in presets},
}

# Rows the full run leaves out (`--all` or `--only` runs them): sweeps whose finding changed nothing in the recipe,
# and the large preset at 30 minutes (see the module's docstring for the hours each takes).
EXTENDED = ("lr-1e-3", "lr-4e-3", "batch-8", "batch-32", "block-64", "block-256", "vocab-4096", "vocab-16384",
            "combined", "recipe-untied", "recipe-batch-8", "recipe-block-64", "large-30min")
FULL_RUN = [name for name in ROWS if name not in EXTENDED]


class TrainingClock(TrainerCallback):
    """Seconds of training (from the first step on: the tokenizer and data preparation are not in the budget)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def options_for(data: str, seed: int, output_dir: Path, row_options: dict, **more) -> dict:
    options = dict(output_dir=str(output_dir), seed=seed, quiet=True, sample_prompts=[], eval_strategy="no",
                   save_strategy="no", logging_steps=50, report_to="none", **row_options, **more)
    if data == "full":
        options["data"] = str(FULL_CORPUS)
    return options


def seconds_per_step(data: str, row_options: dict, workdir: Path) -> float:
    """Mean seconds per optimisation step of this configuration, after warm-up."""
    timer = StepTimer()
    job, args = command_arguments("train", **options_for(data, 0, Path(tempfile.mkdtemp(dir=workdir)), row_options,
                                                         max_steps=CALIBRATION_STEPS, warmup_steps=0))
    train(job, args, callbacks=[timer])
    times = timer.times[CALIBRATION_WARMUP - 1:]
    return (times[-1] - times[0]) / (len(times) - 1)


# Options that leave the cost of a step unchanged: such a row trains for the baseline's steps.
COST_NEUTRAL = {"learning_rate", "lr_scheduler_type", "decay_fraction", "warmup_steps", "muon_learning_rate",
                "zero_init_output_projections"}


def planned_steps(name: str, workdir: Path, baseline_steps: int | None, scale: float) -> tuple[int, float | None]:
    """(steps, seconds per step) for row `name`. A 2-minute ablation gets the baseline's steps times the ratio of
    the two configurations' step times, measured back to back (baseline, row, baseline, row: a slow spell of the
    machine shifts both), or the baseline's steps unchanged when it changes nothing a step costs; other rows are
    sized from their own step time."""
    budget, data, _, row_options, _ = ROWS[name]
    if budget is None:  # a fixed step count: the row's, else the default job's
        steps = row_options.get("max_steps") or command_arguments("train")[1].max_steps
        return max(10, int(steps * scale)), None
    budget *= scale
    if name != "baseline" and baseline_steps is not None and budget == ROWS["baseline"][0] * scale:
        changed = {k for k, v in row_options.items() if ROWS["baseline"][3].get(k, object()) != v}
        if changed <= COST_NEUTRAL:
            return baseline_steps, None
        times = [seconds_per_step(data, options, workdir) for options in (ROWS["baseline"][3], row_options) * 2]
        ratio = statistics.mean(times[0::2]) / statistics.mean(times[1::2])
        return max(10, round(baseline_steps * ratio)), statistics.mean(times[1::2])
    per_step = seconds_per_step(data, row_options, workdir)
    return max(10, int(budget * 60 / per_step)), per_step


def run_row(name: str, workdir: Path, baseline_steps: int | None, scale: float = 1.0, keep: Path | None = None) -> dict:
    budget, data, seeds, row_options, what = ROWS[name]
    steps, per_step = planned_steps(name, workdir, baseline_steps, scale)
    if scale != 1.0:  # --quick: a smoke run of every code path
        budget, seeds = (budget and budget * scale), seeds[:1]
    row_options = {k: v for k, v in row_options.items() if k != "max_steps"}
    runs = []
    for seed in seeds:
        output = (keep or workdir) / f"{name}-{seed}"
        job, args = command_arguments("train", **options_for(data, seed, output, row_options, max_steps=steps))
        clock = TrainingClock()
        train(job, args, callbacks=[clock])
        seconds = clock.seconds
        state = json.loads((output / "trainer_state.json").read_text())
        model, tokenizer = load_model(output)
        run = {"seed": seed, "steps": state["global_step"], "tokens": state["num_input_tokens_seen"],
               "train_seconds": seconds, "bpc_bundled": bits_per_character(model, tokenizer, None)}
        if FULL_CORPUS.is_dir():
            run["bpc_full"] = bits_per_character(model, tokenizer, FULL_CORPUS)
        runs.append(run)
        print(f"  {name} seed {seed}: {json.dumps(run)}", flush=True)
    result = {"budget_minutes": budget, "data": data, "options": ROWS[name][3], "what": what,
              "seconds_per_step": per_step, "planned_steps": steps, "runs": runs}
    for key in ("bpc_bundled", "bpc_full", "tokens", "train_seconds"):
        values = [run[key] for run in runs if key in run]
        if values:
            result[f"median_{key}"] = statistics.median(values)
    return result


def bits_per_character(model, tokenizer, data) -> float:
    texts = load_posts_split(None if data is None else str(data), "text", "validation")
    with torch.inference_mode():
        return evaluate_posts(model, tokenizer, texts, batch_size=16)["bits_per_character"]


def write_markdown(results: dict, path: Path) -> None:
    rows = results["rows"]
    baseline = rows.get("baseline", {}).get("median_bpc_bundled")
    lines = [
        "# Recipe benchmark: validation bits per character per CPU budget",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']}",
        "",
        "Medians over the seeds of each row (2-minute rows: 3 seeds). bpc: bits per character on the bundled "
        "validation split (500 posts) and on the full corpus's validation split (1,491 posts; — when "
        "../shared/data/posts is absent). Change: against the baseline row, bundled split (negative is better). "
        "Steps: the median run's; \"N of M\" when runs stopped before the planned M (the first rows, measured "
        "with a stop at 1.15x the budget since removed; their schedule did not finish, and their train time "
        "includes the tokenizer and data preparation). Train time: the median "
        "run's seconds of training; a run made while other work shared the machine took longer (each row's "
        "machine and threads are in recipe.json), which changes no bpc: a row's steps are fixed before it runs.",
        "",
        "| row | budget | data | what | steps | tokens | bpc bundled | change | bpc full | train time |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ROWS:
        if name not in rows:
            continue
        row = rows[name]
        bpc = row.get("median_bpc_bundled")
        change = f"{(bpc / baseline - 1) * 100:+.1f}%" if baseline and bpc and name != "baseline" else ""
        full = f"{row['median_bpc_full']:.3f}" if "median_bpc_full" in row else "—"
        steps = statistics.median(run["steps"] for run in row["runs"])
        steps = f"{steps:.0f}" if steps == row["planned_steps"] else f"{steps:.0f} of {row['planned_steps']}"
        budget = "—" if row["budget_minutes"] is None else f"{row['budget_minutes']} min"
        lines.append(f"| {name} | {budget} | {row['data']} | {ROWS[name][4]} | "
                     f"{steps} | {row['median_tokens']:,.0f} | {bpc:.3f} | {change} | {full} | "
                     f"{row['median_train_seconds']:.0f} s |")
    if "main-job-300" in rows and "main-job" in rows:
        before_bpc, now_bpc = rows["main-job-300"]["median_bpc_bundled"], rows["main-job"]["median_bpc_bundled"]
        lines += ["", f"The main job (`postformer train`, no flags), bundled validation split: {before_bpc:.3f} bits "
                  f"per character before (0.2.0, 300 steps), {now_bpc:.3f} now ({(now_bpc / before_bpc - 1) * 100:+.1f}%)."]
    for label, names in (("Not run yet", FULL_RUN), ("Not run yet (`--all` rows)", EXTENDED)):
        missing = [name for name in names if name not in rows]
        if missing:
            lines += ["", f"{label}: {', '.join(missing)}."]
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="run these rows only")
    parser.add_argument("--all", action="store_true", help="also run the rows the full run leaves out: "
                        + ", ".join(EXTENDED))
    parser.add_argument("--force", action="store_true", help="rerun rows that already have results")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--output-dir", type=Path, help=f"where recipe.json/.md go (default: {RESULTS})")
    parser.add_argument("--keep-models", type=Path, metavar="DIR", help="keep each run's model folder in DIR "
                        "(as NAME-SEED), e.g. to classify or sample with it")
    parser.add_argument("--quick", action="store_true", help="smoke run: budgets x 0.05, one seed, results in a "
                        "temporary folder unless --output-dir is given (numbers mean nothing)")
    cli = parser.parse_args()
    if cli.output_dir is None:
        cli.output_dir = Path(tempfile.mkdtemp(prefix="recipe-quick-")) if cli.quick else RESULTS
    if cli.list:
        for name, (budget, data, seeds, options, what) in ROWS.items():
            run = "--all" if name in EXTENDED else "full run"
            print(f"{name:14} {budget or '-':>3} min  {data:7}  seeds {list(seeds)}  {run:8}  {what}  {options}")
        return
    json_path, md_path = cli.output_dir / "recipe.json", cli.output_dir / "recipe.md"
    results = open_results(json_path)
    for name in cli.only or (list(ROWS) if cli.all else FULL_RUN):
        if name in results["rows"] and not cli.force:
            print(f"{name}: done already (--force reruns it)")
            continue
        if ROWS[name][1] == "full" and not FULL_CORPUS.is_dir():
            print(f"{name}: skipped, {FULL_CORPUS} is absent")
            continue
        print(f"{name}: {ROWS[name][4]} ...", flush=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp, progress_bars(False):
            baseline_steps = results["rows"].get("baseline", {}).get("planned_steps")
            results["rows"][name] = run_row(name, Path(tmp), baseline_steps, 0.05 if cli.quick else 1.0,
                                            cli.keep_models)
            results["rows"][name]["machine"] = results["machine"]  # threads and date of this row's run
        # The whole row: calibrations, tokenizers, data preparation, training and evaluations.
        results["rows"][name]["wall_seconds"] = time.perf_counter() - start
        cli.output_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, md_path)
    print(md_path.read_text() if md_path.is_file() else "no results")


if __name__ == "__main__":
    main()
