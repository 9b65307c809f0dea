"""Corpus-scale processing: posts per second of `postformer score` and `postformer classify` on the full corpus,
against the plain way of running the same model, under 1 and 2 processes, with model-FLOP utilisation.

Corpus: `../shared/data/posts/train.jsonl` (27,223 posts) when it is there, else the bundled sample's posts repeated
to as many; empty posts left out; `--limit N` keeps the first N (smoke runs). Both ways read the same posts:
`corpus.jsonl` for score, and for classify `corpus.txt`, one post per line (a post's line breaks as spaces).

Models, made once in --work-dir and reused: a posts tokenizer trained on the corpus and a language model of
`--preset` (small by default) with random weights (speed does not depend on them), and a classifier on its body
(`init_classifier`, 5 labels, a new head); `--model` / `--classifier` give trained folders instead.

Rows (each saved to processing.json / processing.md as it finishes; a rerun skips finished rows, `--force` reruns,
`--only` picks rows; rows of other settings are dropped when the settings change):
  score-plain        the plain way: the model on batches of --batch-size posts in input order, each batch padded to
                     its longest post (cut at the context), no bucketing; each post's mean loss and per-token losses
  score-1            `postformer score --data corpus.jsonl --output ...`: windows sorted by length, sliding windows
                     for posts longer than the context, JSONL with every token's loss, fsynced window by window
  score-2            the same under `torchrun --nproc_per_node 2` (one merged output)
  classify-pipeline  `transformers.pipeline("text-classification")` on the classifier, batch --batch-size, top_k=None
  classify-1         `postformer classify --file corpus.txt --output ...`
  classify-2         the same under torchrun, 2 processes
The plain rows run in this process, timed after their model is loaded and a warm-up batch; the command rows run in
a fresh process (2 under torchrun), timed from `postformer.cli.main`'s call to its return in process 0 (after the
merge): model loading and the process group included, Python's imports not. 1-process rows use every core;
each of 2 processes gets half (OMP_NUM_THREADS). On a machine with one GPU the 2-process rows are skipped.

MFU: the useful forward FLOPs (every post's tokens up to the context, at `flops_per_token` / 3 per token, the
forward third of training's 6N + attention; the classifier has no LM head: its 2 x vocab x hidden per token is
left out) per second, over the best of the run's `measure_matmul_peak`s in the model's dtype on the device (each
row measures one; one measured on a busy machine reads low). Agreement: the share of posts
whose loss (posts within the context) or label is that of the plain way. Ratios: posts/s over the plain way's;
the target is 3x.

    python benchmarks/bench_processing.py                            # the full corpus, small preset
    python benchmarks/bench_processing.py --only score-plain score-1
    python benchmarks/bench_processing.py --preset tiny --limit 200 --output-dir /tmp/bench   # smoke run

Timings need a quiet machine: the load average before and after each row is recorded with it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from results_file import open_results

RESULTS = Path(__file__).resolve().parent / "results"
FULL_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "posts" / "train.jsonl"
CORPUS_POSTS = 27_223  # the full corpus's train split: the bundled sample is repeated to as many
LABELS = ["love", "wow", "haha", "sad", "angry"]
TARGET = 3.0
ROWS = {  # name: (command, processes, what)
    "score-plain": ("score", 0, "batches in input order, padded to the longest"),
    "score-1": ("score", 1, "postformer score --output, 1 process"),
    "score-2": ("score", 2, "postformer score --output, torchrun x2"),
    "classify-pipeline": ("classify", 0, "pipeline(\"text-classification\")"),
    "classify-1": ("classify", 1, "postformer classify --output, 1 process"),
    "classify-2": ("classify", 2, "postformer classify --output, torchrun x2"),
}
TINY = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)
DRIVER = """
import json, os, sys, time
import torch, transformers, postformer.cli  # imported before the clock starts
start = time.perf_counter()
code = postformer.cli.main(sys.argv[2:])
seconds = time.perf_counter() - start
if int(os.environ.get("RANK", "0")) == 0:
    with open(sys.argv[1], "w") as file:
        json.dump({"seconds": seconds, "code": code}, file)
sys.exit(code)
"""


# ----------------------------------------------------------------------------------------------------------------
# Inputs and models


def corpus_posts(limit: int | None) -> tuple[list[str], str]:
    """The posts to process (non-empty), and where they come from, in words."""
    if FULL_CORPUS.is_file():
        with open(FULL_CORPUS, encoding="utf-8") as file:
            posts = [t for t in (json.loads(line).get("text") for line in file) if isinstance(t, str) and t.strip()]
        source = f"{FULL_CORPUS} ({len(posts)} posts)"
    else:
        from postformer.data import load_posts_split

        sample = load_posts_split(None, split="train")
        posts = (sample * (CORPUS_POSTS // len(sample) + 1))[:CORPUS_POSTS]
        source = f"the bundled sample's train split, repeated to {CORPUS_POSTS} posts (no {FULL_CORPUS})"
    return posts[:limit], source + (f", first {limit}" if limit else "")


def write_inputs(posts: list[str], folder: Path) -> tuple[Path, Path, list[str]]:
    """corpus.jsonl (score) and corpus.txt (classify: one post per line), and classify's posts as written."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(p.splitlines()) for p in posts]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": p}, ensure_ascii=False) + "\n" for p in posts),
                                         encoding="utf-8")
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "corpus.jsonl", folder / "corpus.txt", lines


def make_models(posts: list[str], preset: str, folder: Path) -> tuple[Path, Path]:
    """A language model of `preset` (random weights) with a tokenizer trained on the posts, and a classifier on its
    body; made once per preset."""
    from postformer import PostformerConfig, PostformerForCausalLM
    from postformer.classification import init_classifier
    from postformer.tokenization import config_token_ids, posts_generation_config, train_tokenizer

    lm, classifier = folder / f"lm-{preset}", folder / f"classifier-{preset}"
    if (classifier / "config.json").is_file():
        return lm, classifier
    print(f"making the {preset} models in {folder} ...", flush=True)
    vocab = TINY["vocab_size"] if preset == "tiny" else 8192
    tokenizer = train_tokenizer(posts[:20_000], vocab_size=vocab, show_progress=False)
    torch.manual_seed(0)
    config = (PostformerConfig(**{**TINY, **config_token_ids(tokenizer)}) if preset == "tiny"
              else PostformerConfig.from_preset(preset, **config_token_ids(tokenizer)))
    model = PostformerForCausalLM(config)
    model.generation_config = posts_generation_config(tokenizer)
    model.save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    model, tokenizer = init_classifier(lm, LABELS)
    model.save_pretrained(classifier)
    tokenizer.save_pretrained(classifier)
    return lm, classifier


# ----------------------------------------------------------------------------------------------------------------
# The plain ways


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_score(model, tokenizer, posts: list[str], batch_size: int) -> tuple[float, list]:
    """Seconds to score `posts` the plain way, and each post's mean loss (None when it was cut at the context)."""
    context = model.config.max_position_embeddings
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = []

    def run(batch_posts):
        encoded = [ids + [tokenizer.eos_token_id] for ids in tokenizer(batch_posts, verbose=False)["input_ids"]]
        cut = [ids[:context] for ids in encoded]
        width = max(len(ids) for ids in cut)
        input_ids = torch.full((len(cut), width), pad, dtype=torch.long)
        mask = torch.zeros((len(cut), width), dtype=torch.long)
        for row, ids in enumerate(cut):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        token_losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:],
                                                         reduction="none").cpu()
        found = []
        for row, ids in enumerate(cut):
            values = token_losses[row, : len(ids) - 1]
            found.append((float(values.double().mean()) if len(ids) == len(encoded[row]) else None, values.tolist()))
        return found

    run(posts[:batch_size])  # warm-up
    _synchronize()
    start = time.perf_counter()
    for first in range(0, len(posts), batch_size):
        losses.extend(loss for loss, _ in run(posts[first : first + batch_size]))
    _synchronize()
    return time.perf_counter() - start, losses


def plain_classify(model, tokenizer, posts: list[str], batch_size: int) -> tuple[float, list]:
    """Seconds to classify `posts` with transformers' pipeline, and each post's label."""
    from transformers import pipeline

    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device=model.device)
    classifier(posts[:batch_size], batch_size=batch_size, top_k=None, truncation=True)  # warm-up
    _synchronize()
    start = time.perf_counter()
    results = classifier(posts, batch_size=batch_size, top_k=None, truncation=True)
    _synchronize()
    return time.perf_counter() - start, [max(r, key=lambda entry: entry["score"])["label"] for r in results]


# ----------------------------------------------------------------------------------------------------------------
# The commands


def run_command(argv: list[str], processes: int, work: Path) -> float:
    """Run `postformer ARGV` in a fresh process (or 2 under torchrun); the seconds process 0 spent in main."""
    driver, timing = work / "driver.py", work / "timing.json"
    driver.write_text(DRIVER)
    timing.unlink(missing_ok=True)
    cores = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(max(1, cores // processes)), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                           env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc_per_node", str(processes)]
    result = subprocess.run([*launch, str(driver), str(timing), *argv], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"postformer {' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(timing.read_text())["seconds"]


# ----------------------------------------------------------------------------------------------------------------
# Measures


def forward_flops_per_token(model, tokens_per_post: float, lm_head: bool) -> float:
    from postformer.training import flops_per_token

    flops = flops_per_token(model, round(tokens_per_post)) / 3
    if not lm_head:  # the classifier's embedding is a lookup, and it has no vocabulary-sized head
        flops -= 2 * model.config.vocab_size * model.config.hidden_size
    return flops


def post_tokens(tokenizer, posts: list[str], context: int, end: bool) -> list[int]:
    """Each post's tokens the model reads ("<s> post" and "</s>" when `end`), up to the context."""
    return [min(len(ids) + end, context) for ids in tokenizer(posts, verbose=False)["input_ids"]]


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_row(name: str, args, inputs: dict, models: dict, work: Path) -> dict:
    from postformer.model_files import load_model
    from postformer.training import measure_matmul_peak

    command, processes, what = ROWS[name]
    kind = "text-generation" if command == "score" else "text-classification"
    folder = models["lm"] if command == "score" else models["classifier"]
    model, tokenizer = load_model(folder, kind)
    model.to(_device())
    if command == "classify":
        from postformer.classification import _for_classification

        tokenizer = _for_classification(tokenizer, model.config)
    posts = inputs["score_posts"] if command == "score" else inputs["classify_posts"]
    context = model.config.max_position_embeddings
    tokens = post_tokens(tokenizer, posts, context, end=command == "score")
    row = {"command": command, "processes": processes or 1, "what": what, "posts": len(posts),
           "tokens": sum(tokens), "device": str(_device()), "load_before": load_average()}
    output = work / f"{name}.jsonl"
    if processes == 0:
        row["threads"] = torch.get_num_threads()
        if command == "score":
            seconds, found = plain_score(model, tokenizer, posts, args.batch_size)
        else:
            seconds, found = plain_classify(model, tokenizer, posts, args.batch_size)
        output.write_text("".join(json.dumps(value) + "\n" for value in found))
    else:
        if processes > 1 and torch.cuda.is_available() and torch.cuda.device_count() < processes:
            return {**row, "skipped": f"needs {processes} GPUs, has {torch.cuda.device_count()}"}
        row["threads"] = max(1, (os.cpu_count() or 1) // processes)
        common = ["--output", str(output), "--overwrite", "--batch-size", str(args.batch_size), "--quiet"]
        argv = (["score", "--model", str(folder), "--data", str(inputs["jsonl"]), "--top", "1", *common]
                if command == "score" else ["classify", "--model", str(folder), "--file", str(inputs["txt"]), *common])
        seconds = run_command(argv, processes, work)
    row.update(seconds=seconds, posts_per_second=len(posts) / seconds, tokens_per_second=sum(tokens) / seconds,
               load_after=load_average())
    dtype = next(model.parameters()).dtype
    peak = measure_matmul_peak(dtype)
    flops = forward_flops_per_token(model, sum(tokens) / len(tokens), lm_head=command == "score")
    row.update(dtype=str(dtype).removeprefix("torch."), matmul_peak_tflops=peak / 1e12, forward_flops_per_token=flops)
    row["agreement"] = agreement(command, work, name)
    return row


def agreement(command: str, work: Path, name: str) -> float | None:
    """The share of posts on which this row's output agrees with the plain way's (when that has run)."""
    plain = work / ("score-plain.jsonl" if command == "score" else "classify-pipeline.jsonl")
    mine = work / f"{name}.jsonl"
    if not plain.is_file() or not mine.is_file() or plain == mine:
        return None
    with open(plain, encoding="utf-8") as a, open(mine, encoding="utf-8") as b:
        pairs = [(json.loads(x), json.loads(y)) for x, y in zip(a, b)]
    if command == "score":
        pairs = [(x, y["loss"]) for x, y in pairs if x is not None]
        return sum(abs(x - y) <= 1e-3 * max(1.0, abs(x)) for x, y in pairs) / max(len(pairs), 1)
    return sum(x == y["label"] for x, y in pairs) / max(len(pairs), 1)


# ----------------------------------------------------------------------------------------------------------------
# Report


def mfu(row: dict, rows: dict) -> float:
    """The row's useful FLOP/s over the best matmul peak measured in the run (per dtype): one yardstick for every
    row, as a peak measured while the machine is busy (e.g. just after a torchrun row) reads low."""
    peak = max(r["matmul_peak_tflops"] for r in rows.values() if r.get("dtype") == row["dtype"])
    return row["tokens_per_second"] * row["forward_flops_per_token"] / (peak * 1e12)


def write_markdown(results: dict, path: Path) -> None:
    rows = results["rows"]
    lines = ["# Corpus-scale processing: posts/s of score and classify against the plain way", "",
             f"Command: `{results['command']}`", "", f"Machine: {results['machine']}", "",
             f"Corpus: {results['settings']['corpus']}. Models: {results['settings']['models']}.", "",
             "Plain ways: score = the model on batches in input order padded to the longest (posts cut at the "
             "context); classify = `pipeline(\"text-classification\")`. Command rows include model loading; "
             f"ratio = posts/s over the plain way's (target {TARGET:g}x). MFU: useful forward FLOPs over the measured "
             "matmul peak (the best of the run's measurements, one per row). Agreement: posts whose loss / label equals the plain way's.", "",
             "| row | what | processes | threads | posts | seconds | posts/s | ratio | MFU | agreement | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in ROWS:
        row = rows.get(name)
        if row is None:
            continue
        if "skipped" in row:
            lines.append(f"| {name} | {row['what']} | {row['processes']} | | | | | | | | skipped: {row['skipped']} |")
            continue
        plain = rows.get("score-plain" if row["command"] == "score" else "classify-pipeline")
        ratio = (f"{row['posts_per_second'] / plain['posts_per_second']:.2f}x"
                 if plain and "posts_per_second" in plain else "")
        if ratio and row is not plain:
            ratio += " (pass)" if row["posts_per_second"] / plain["posts_per_second"] >= TARGET else " (short)"
        agree = f"{row['agreement']:.1%}" if row.get("agreement") is not None else ""
        load = f"{row['load_before']:.1f} / {row['load_after']:.1f}" if row.get("load_before") is not None else ""
        lines.append(f"| {name} | {row['what']} | {row['processes']} | {row['threads']} | {row['posts']} | "
                     f"{row['seconds']:.1f} | {row['posts_per_second']:.1f} | {ratio} | {mfu(row, rows):.2%} | {agree} | "
                     f"{load} |")
    missing = [name for name in ROWS if name not in rows]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="run these rows only")
    parser.add_argument("--force", action="store_true", help="rerun rows that already have results")
    parser.add_argument("--limit", type=int, help="the first N posts only (smoke runs)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium", "large"],
                        help="the models made when --model / --classifier are not given (default: small)")
    parser.add_argument("--model", type=Path, help="a language model folder to score with")
    parser.add_argument("--classifier", type=Path, help="a classifier folder (classify-train's) to classify with")
    parser.add_argument("--batch-size", type=int, default=32, help="posts per batch, both ways (default: 32)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-processing",
                        help="inputs, models and outputs, kept between runs")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where processing.json/.md go")
    args = parser.parse_args(argv)

    posts, corpus = corpus_posts(args.limit)
    jsonl, txt, lines = write_inputs(posts, args.work_dir)
    if args.model is None or args.classifier is None:
        lm, classifier = make_models(posts, args.preset, args.work_dir)
    models = {"lm": args.model or lm, "classifier": args.classifier or classifier}
    inputs = {"jsonl": jsonl, "txt": txt, "score_posts": posts, "classify_posts": lines}
    settings = {"corpus": corpus, "models": f"{models['lm']} (score), {models['classifier']} (classify)",
                "batch_size": args.batch_size}

    json_path, md_path = args.output_dir / "processing.json", args.output_dir / "processing.md"
    results = open_results(json_path)
    if results.get("settings") != settings:
        if results["rows"]:
            print("other settings than the saved rows': starting a new table", flush=True)
        results["rows"] = {}
    results["settings"] = settings

    def save():
        args.output_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, md_path)

    for name in args.only or list(ROWS):
        if name in results["rows"] and not args.force:
            print(f"{name}: done already (--force reruns it)")
            continue
        print(f"{name}: {ROWS[name][2]} ...", flush=True)
        results["rows"][name] = run_row(name, args, inputs, models, args.work_dir)
        save()
    print(md_path.read_text() if md_path.is_file() else "no results")


if __name__ == "__main__":
    main()
