"""Classification benchmark: `postformer classify-train` against classical baselines, on two posts tasks.

Both tasks are built from the full posts corpus in `../shared/data/posts` (its train / validation / test splits):
- reaction: the dominant non-like reaction (love, wow, haha, sad, angry; the first on a tie) of the posts with
  at least one of them (5 classes, imbalanced: love is ~45%);
- page: the page that published the post (66 classes).

Each row fine-tunes a language model into a classifier with `train_classifier` (what `postformer classify-train`
runs) and reports macro-F1 on the test split (the validation split is the one training sees, for its epoch
reports), beside the majority baseline and TF-IDF + logistic regression (scikit-learn: word 1-2-grams and
character 2-5-grams, sublinear tf, at most 200k + 300k features, class-balanced, C = 10) in one table.

Language models the rows start from (trained here, once, into `--work-dir`, and reused by later runs):
- step-1: `postformer train` stopped after 1 step (pretraining's contribution is measured against it);
- main-job: the default `postformer train` (the README's main job, about 2 minutes);
- any other given as `--lm NAME=FOLDER` (e.g. `posts-30min=runs/posts-30min`, written by
  `postformer train --config examples/posts-30min.yaml`); rows starting from a model not given are skipped.

Rows: name -> task, language model, classify-train options, seeds, what it tests; `lm_epochs` first continues
the language model's training on the task's own train texts (`postformer finetune`) for that many epochs.
Each row is saved to classify.json / classify.md as it finishes; a rerun skips finished rows (`--force` reruns),
`--only` picks rows, `--list` lists them.

    python benchmarks/bench_classify.py --list
    python benchmarks/bench_classify.py --only baselines reaction-default
"""

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import tempfile
from pathlib import Path


from postformer.classification import macro_f1, train_classifier
from postformer.progress import progress_bars
from results_file import open_results
from postformer.training import train
from postformer.training.arguments import command_arguments
from postformer.training.finetune import finetune

RESULTS = Path(__file__).resolve().parent / "results"
FULL_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "posts"
REACTIONS = {"loves": "love", "wows": "wow", "hahas": "haha", "sads": "sad", "angrys": "angry"}
SEEDS = (0, 1, 2)
TASKS = ("reaction", "page")
TFIDF_C = 10.0  # logistic regression's inverse regularisation

# name -> (task, language model, classify-train options, seeds, what it tests). Options are changes from
# classify-train's defaults (the mean plus the last token's state, class-balanced loss, AdamW 3e-4, 3 epochs,
# batches by length). The rows that change one thing of the mean pooling measured them against the mean, the
# default until 0.4.0 (MEAN).
MEAN = dict(pooling="mean")
ROWS = {}
for task in TASKS:
    ROWS.update({
        f"{task}-default": (task, "main-job", {}, SEEDS, "classify-train's defaults (the mean plus the last token)"),
        f"{task}-step-1": (task, "step-1", {}, SEEDS, "the same from a language model trained 1 step"),
        f"{task}-30min": (task, "posts-30min", {}, SEEDS, "the same from the 30-minute model "
                          "(examples/posts-30min.yaml)"),
        f"{task}-mean": (task, "main-job", MEAN, SEEDS, "the mean over the tokens (the default of 0.4.0)"),
        f"{task}-step-1-mean": (task, "step-1", MEAN, SEEDS, "the mean, from a language model trained 1 step"),
        f"{task}-30min-mean": (task, "posts-30min", MEAN, SEEDS, "the mean, from the 30-minute model"),
        f"{task}-0.3": (task, "main-job", dict(pooling="last", class_weighting=False, learning_rate=1e-3), SEEDS,
                        "0.3's defaults (last token, unweighted loss, lr 1e-3; batches by length as now)"),
        f"{task}-random-batches": (task, "main-job", dict(train_sampling_strategy="random"), SEEDS,
                                   "random batches instead of batches by length"),
        f"{task}-last": (task, "main-job", dict(pooling="last"), SEEDS, "the last token alone"),
        f"{task}-step-1-last": (task, "step-1", dict(pooling="last"), SEEDS,
                                "the last token, from a language model trained 1 step"),
        f"{task}-weighted-mean": (task, "main-job", dict(pooling="weighted_mean"), SEEDS,
                                  "the position-weighted mean (the i-th token weighted by i)"),
        f"{task}-step-1-weighted-mean": (task, "step-1", dict(pooling="weighted_mean"), SEEDS,
                                         "the position-weighted mean, from a language model trained 1 step"),
        f"{task}-unweighted": (task, "main-job", dict(MEAN, class_weighting=False), SEEDS, "the mean, unweighted loss"),
        f"{task}-lr-1e-4": (task, "main-job", dict(learning_rate=1e-4), SEEDS, "learning rate 1e-4"),
        f"{task}-epochs-2": (task, "main-job", dict(epochs=2), SEEDS, "2 epochs"),
        f"{task}-dropout-0.1": (task, "main-job", dict(dropout=0.1), SEEDS, "dropout 0.1 while fine-tuning"),
        f"{task}-step-1-dropout-0.1": (task, "step-1", dict(dropout=0.1), SEEDS,
                                       "dropout 0.1, from a language model trained 1 step"),
        f"{task}-label-smoothing-0.1": (task, "main-job", dict(label_smoothing_factor=0.1), SEEDS,
                                        "label smoothing 0.1"),
        f"{task}-dropout-0.1-epochs-5": (task, "main-job", dict(dropout=0.1, epochs=5), SEEDS,
                                         "dropout 0.1 while fine-tuning, 5 epochs"),
        f"{task}-30min-dropout-0.1": (task, "posts-30min", dict(dropout=0.1), SEEDS,
                                      "the 30-minute model, dropout 0.1 while fine-tuning"),
        f"{task}-30min-dropout-0.1-epochs-5": (task, "posts-30min", dict(dropout=0.1, epochs=5), SEEDS,
                                               "the 30-minute model, dropout 0.1 while fine-tuning, 5 epochs"),
        f"{task}-lr-1e-3": (task, "main-job", dict(MEAN, learning_rate=1e-3), SEEDS, "the mean, learning rate 1e-3"),
        f"{task}-epochs-6": (task, "main-job", dict(MEAN, epochs=6), SEEDS, "the mean, 6 epochs"),
        f"{task}-llrd-0.5": (task, "main-job", dict(MEAN, learning_rate=1e-3, layer_lr_decay=0.5), SEEDS,
                             "the mean, layer-wise learning-rate decay 0.5 from 1e-3 at the head"),
        f"{task}-probe": (task, "main-job", dict(MEAN, learning_rate=1e-2, layer_lr_decay=0.0), SEEDS,
                          "the mean, head only at 1e-2 (frozen body: a linear probe)"),
        f"{task}-continued-lm": (task, "main-job", dict(MEAN, lm_epochs=1), SEEDS, "the mean, after 1 epoch of "
                                 "language-model training on the task's train texts"),
        f"{task}-30min-lr-1e-3": (task, "posts-30min", dict(MEAN, learning_rate=1e-3), SEEDS,
                                  "the 30-minute model, the mean, learning rate 1e-3"),
        f"{task}-30min-last": (task, "posts-30min", dict(pooling="last"), SEEDS,
                               "the 30-minute model, the last token alone"),
        f"{task}-30min-last-lr-1e-3": (task, "posts-30min", dict(pooling="last", learning_rate=1e-3), SEEDS,
                                       "the 30-minute model, the last token alone, learning rate 1e-3"),
        f"{task}-step-1-lr-1e-3": (task, "step-1", dict(MEAN, learning_rate=1e-3), SEEDS,
                                   "a language model trained 1 step, the mean, learning rate 1e-3"),
    })


def build_tasks(folder: Path) -> dict[str, Path]:
    """Write each task's train/validation/test.jsonl ({"text", "label"}) under `folder`, from the full corpus."""
    paths = {}
    for task in TASKS:
        paths[task] = folder / task
        if (paths[task] / "test.jsonl").is_file():
            continue
        paths[task].mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation", "test"):
            rows = []
            for line in (FULL_CORPUS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                post = json.loads(line)
                if task == "page":
                    rows.append({"text": post["text"], "label": post["page"]})
                elif sum(post[key] for key in REACTIONS) > 0:
                    label = max(REACTIONS, key=lambda key: post[key])  # the first of the largest
                    rows.append({"text": post["text"], "label": REACTIONS[label]})
            with open(paths[task] / f"{split}.jsonl", "w", encoding="utf-8") as file:
                file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return paths


def read_split(task_dir: Path, split: str) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (task_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row["text"] for row in rows], [row["label"] for row in rows]


def baselines(task_dir: Path) -> dict:
    """Majority class and TF-IDF + logistic regression, test macro-F1 (label ids in sorted order)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_union

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (read_split(task_dir, s) for s in
                                                             ("train", "validation", "test"))
    labels = sorted(set(train_y))
    ids = {label: i for i, label in enumerate(labels)}
    train_i, val_i, test_i = ([ids[y] for y in ys] for ys in (train_y, val_y, test_y))
    majority = max(set(train_i), key=train_i.count)
    result = {"labels": len(labels), "train_posts": len(train_x), "test_posts": len(test_x),
              "majority_test_macro_f1": macro_f1(test_i, [majority] * len(test_i), len(labels))}
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, max_features=300_000),
    ).fit(train_x)
    model = LogisticRegression(C=TFIDF_C, class_weight="balanced", max_iter=1000)
    model.fit(features.transform(train_x), train_i)
    result.update(tfidf_validation_macro_f1=macro_f1(val_i, model.predict(features.transform(val_x)), len(labels)),
                  tfidf_test_macro_f1=macro_f1(test_i, model.predict(features.transform(test_x)), len(labels)))
    return result


def language_model(name: str, work_dir: Path, given: dict[str, Path]) -> Path | None:
    """The folder of the language model `name`: given on the command line, or trained here once."""
    if name in given:
        return given[name]
    if name not in ("step-1", "main-job"):
        return None
    options = dict(seed=0, quiet=True, sample_prompts=[], save_strategy="no", report_to="none",
                   **(dict(max_steps=1, warmup_steps=0, eval_strategy="no") if name == "step-1" else {}))
    # Kept under a digest of the run's options: a changed default recipe trains a new one.
    job, args = command_arguments("train", output_dir="lm", **options)
    recipe = json.dumps([dataclasses.asdict(job), args.to_dict()], sort_keys=True, default=str)
    folder = work_dir / "lm" / f"{name}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"
    if not (folder / "model.safetensors").is_file():
        train(*command_arguments("train", output_dir=str(folder), **options))
    return folder


def run_row(name: str, task_dir: Path, lm: Path, work_dir: Path, max_seeds: int,
            done: list[dict] | None = None) -> dict:
    """Row `name`'s result over its first `max_seeds` seeds; the seeds of `done` (earlier runs) are kept, not rerun."""
    task, _, options, seeds, what = ROWS[name]
    seeds = seeds[:max_seeds]
    runs = [run for run in done or [] if run["seed"] in seeds]
    finished = {run["seed"] for run in runs}
    options = dict(options)
    lm_epochs = options.pop("lm_epochs", None)
    for seed in [seed for seed in seeds if seed not in finished]:
        start = lm
        with tempfile.TemporaryDirectory(prefix=f"bench-classify-{name}-", dir=work_dir) as tmp:
            if lm_epochs:  # continued language-model training on the task's train texts
                start = Path(tmp) / "lm"
                finetune(lm, task_dir, start, epochs=lm_epochs, seed=seed, quiet=True, report_to="none")
            metrics = train_classifier(start, task_dir, Path(tmp) / "classifier", seed=seed, quiet=True,
                                       report_to="none", **options)
        run = {"seed": seed, "validation_macro_f1": metrics["eval_macro_f1"], "test_macro_f1": metrics["test_macro_f1"],
               "test_accuracy": metrics["test_accuracy"], "train_seconds": metrics["train_runtime"]}
        runs.append(run)
        print(f"  {name} seed {seed}: {json.dumps(run)}", flush=True)
    runs.sort(key=lambda run: run["seed"])
    result = {"task": task, "lm": ROWS[name][1], "options": ROWS[name][2], "what": what, "runs": runs}
    for key in ("validation_macro_f1", "test_macro_f1", "train_seconds"):
        values = [run[key] for run in runs]
        result[f"mean_{key}"] = statistics.mean(values)
        result[f"std_{key}"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return result


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# Classification benchmark: macro-F1 on the test split of two posts tasks",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']}",
        "",
        "Tasks from the full corpus (../shared/data/posts): reaction = the dominant non-like reaction (5 labels), "
        "page = the publishing page (66 labels). TF-IDF + LR: word 1-2-grams + char 2-5-grams, class-balanced "
        f"logistic regression, C = {TFIDF_C:g}. Rows: mean ± standard deviation over seeds.",
        "",
        "| task | labels | train posts | test posts | majority | TF-IDF + LR |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task, base in results.get("baselines", {}).items():
        lines.append(f"| {task} | {base['labels']} | {base['train_posts']:,} | {base['test_posts']:,} | "
                     f"{base['majority_test_macro_f1']:.3f} | {base['tfidf_test_macro_f1']:.3f} |")
    lines += ["", "| row | task | starts from | what | seeds | validation macro-F1 | test macro-F1 | vs TF-IDF | "
              "train time |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for name in ROWS:
        row = results["rows"].get(name)
        if row is None:
            continue
        tfidf = results.get("baselines", {}).get(row["task"], {}).get("tfidf_test_macro_f1")
        versus = f"{row['mean_test_macro_f1'] - tfidf:+.3f}" if tfidf is not None else ""
        lines.append(f"| {name} | {row['task']} | {row['lm']} | {row['what']} | {len(row['runs'])} | "
                     f"{row['mean_validation_macro_f1']:.3f} | {row['mean_test_macro_f1']:.3f} ± "
                     f"{row['std_test_macro_f1']:.3f} | {versus} | {row['mean_train_seconds'] / 60:.1f} min |")
    if results.get("notes"):  # what a reader needs to know about how the rows were run
        lines += ["", *(f"- {note}" for note in results["notes"])]
    missing = [name for name in ROWS if name not in results["rows"]]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=["baselines", *ROWS], help="run these rows only")
    parser.add_argument("--force", action="store_true", help="rerun rows that already have results (without it, "
                        "a row with fewer seeds than asked runs the missing seeds only)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help=f"seeds per row, at most {len(SEEDS)} "
                        "(fewer for a first pass; the table gives each row's count)")
    parser.add_argument("--lm", nargs="+", default=[], metavar="NAME=FOLDER", help="language models to start from")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-classify",
                        help="where the tasks and the language models trained here are kept between runs")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where classify.json/.md go")
    cli = parser.parse_args()
    if cli.list:
        for name, (task, lm, options, seeds, what) in ROWS.items():
            print(f"{name:28} {task:9} {lm:12} seeds {list(seeds)}  {what}  {options}")
        return
    if not FULL_CORPUS.is_dir():
        sys.exit(f"error: the tasks are built from {FULL_CORPUS}, which is absent")
    given = {}
    for item in cli.lm:
        name, _, folder = item.partition("=")
        given[name] = Path(folder)
    cli.work_dir.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks(cli.work_dir / "tasks")
    json_path, md_path = cli.output_dir / "classify.json", cli.output_dir / "classify.md"
    results = open_results(json_path)

    def save():
        cli.output_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, md_path)

    selected = cli.only or ["baselines", *ROWS]
    if "baselines" in selected and (cli.force or "baselines" not in results):
        results["baselines"] = {task: baselines(tasks[task]) for task in TASKS}
        save()
    for name in [n for n in selected if n in ROWS]:
        if name in results["rows"] and len(results["rows"][name]["runs"]) >= cli.seeds and not cli.force:
            print(f"{name}: done already (--force reruns it)")
            continue
        task, lm_name = ROWS[name][:2]
        with progress_bars(False):
            lm = language_model(lm_name, cli.work_dir, given)
            if lm is None:
                print(f"{name}: skipped, no language model {lm_name!r} (give it with --lm {lm_name}=FOLDER)")
                continue
            print(f"{name}: {ROWS[name][4]} ...", flush=True)
            done = [] if cli.force or name not in results["rows"] else results["rows"][name]["runs"]
            results["rows"][name] = run_row(name, tasks[task], lm, cli.work_dir, cli.seeds, done)
        save()
    print(md_path.read_text() if md_path.is_file() else "no results")


if __name__ == "__main__":
    main()
