"""Sampling benchmark: which decoding settings make a trained model's posts read like posts.

Prompts are the first 3 words of validation posts (the bundled split's first 100 with at least 8 words). Each
setting continues every prompt (60 new tokens at most, seed 0) with the model under test, and the samples are
measured against the real posts' own continuations:
- rep-4: the share of a sample's word 4-grams that repeat an earlier 4-gram of the same sample (loops, stutter);
- distinct-2: distinct word bigrams / all bigrams, over all samples together (variety);
- loops: the share of samples that end in a token loop (`postformer.generation.find_loop`);
- judge bpc: bits per character of prompt + sample under a judge model (`--judge`: the best model there is,
  e.g. the 30-minute one; default: the model under test), lower = more plausible text.

The recommended setting has the lowest judge bpc among those whose rep-4 is at most the real posts' + 0.02 and
whose distinct-2 is at least 90% of theirs (plausible, yet no more repetitive and not much blander than people).

    python benchmarks/bench_sampling.py --model runs/small --judge runs/posts-30min
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from postformer.data import load_posts_split
from postformer.evaluation import evaluate_posts
from postformer.generation import find_loop, generate_token_ids
from postformer.model_files import load_model
from results_file import machine

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT_WORDS, MAX_NEW_TOKENS = 3, 60

# name -> generate options (on top of do_sample=True, top_k=0, seed 0)
SETTINGS = {
    "greedy": dict(do_sample=False),
    "greedy, repetition penalty 1.3": dict(do_sample=False, repetition_penalty=1.3),
    "greedy, no repeated 3-grams": dict(do_sample=False, no_repeat_ngram_size=3),
    "t=1.0, top-k 50, top-p 0.95 (generate's defaults until now)": dict(temperature=1.0, top_k=50, top_p=0.95),
    "t=1.0": dict(temperature=1.0),
    "t=0.9, top-p 0.95": dict(temperature=0.9, top_p=0.95),
    "t=0.8, top-p 0.95": dict(temperature=0.8, top_p=0.95),
    "t=0.7, top-p 0.9": dict(temperature=0.7, top_p=0.9),
    "t=0.8, top-p 0.95, repetition penalty 1.1": dict(temperature=0.8, top_p=0.95, repetition_penalty=1.1),
    "t=0.8, top-p 0.95, repetition penalty 1.2": dict(temperature=0.8, top_p=0.95, repetition_penalty=1.2),
    "t=0.8, top-p 0.95, no repeated 3-grams": dict(temperature=0.8, top_p=0.95, no_repeat_ngram_size=3),
    "t=0.7, top-p 0.9, repetition penalty 1.2": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.2),
}


def ngrams(words: list[str], n: int) -> list[tuple]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repeated_4gram_share(texts: list[str]) -> float:
    repeated = total = 0
    for text in texts:
        grams = ngrams(text.lower().split(), 4)
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return repeated / max(total, 1)


def distinct_2(texts: list[str]) -> float:
    grams = [gram for text in texts for gram in ngrams(text.lower().split(), 2)]
    return len(set(grams)) / max(len(grams), 1)


def measure(prompts: list[str], continuations: list[str], judge, judge_tokenizer, loops: float | None = None) -> dict:
    posts = [prompt + continuation for prompt, continuation in zip(prompts, continuations)]
    return {
        "rep4": repeated_4gram_share(continuations),
        "distinct2": distinct_2(continuations),
        "loops": loops,
        "judge_bpc": evaluate_posts(judge, judge_tokenizer, posts, batch_size=16)["bits_per_character"],
        "mean_chars": sum(map(len, continuations)) / len(continuations),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the trained model folder to sample from")
    parser.add_argument("--judge", help="model folder whose bits per character judge the samples (default: --model)")
    parser.add_argument("--prompts", type=int, default=100, help="validation prompts (default: 100)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where sampling.json/.md go")
    cli = parser.parse_args()

    model, tokenizer = load_model(cli.model)
    judge, judge_tokenizer = (model, tokenizer) if cli.judge is None else load_model(cli.judge)
    posts = [text for text in load_posts_split(None, "text", "validation") if len(text.split()) >= 8][:cli.prompts]
    prompts = [" ".join(text.split()[:PROMPT_WORDS]) for text in posts]
    # The real continuation, cut to about the samples' length in tokens.
    real = []
    for prompt, text in zip(prompts, posts):
        rest = text.split(None, PROMPT_WORDS)[-1]
        ids = tokenizer(" " + rest, add_special_tokens=False)["input_ids"][:MAX_NEW_TOKENS]
        real.append(tokenizer.decode(ids))
    with torch.inference_mode():
        results = {"real posts": measure(prompts, real, judge, judge_tokenizer)}
        for name, options in SETTINGS.items():
            options = {"top_k": 0, "top_p": 1.0, **options}
            ids = generate_token_ids(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, seed=0, batch_size=16,
                                     **options)
            continuations = [tokenizer.decode(seqs[0], skip_special_tokens=True) for seqs in ids]
            loops = sum(find_loop(seqs[0]) is not None for seqs in ids) / len(ids)
            results[name] = measure(prompts, continuations, judge, judge_tokenizer, loops)
            results[name]["options"] = options
            results[name]["examples"] = [prompt + text for prompt, text in zip(prompts[:5], continuations[:5])]
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "examples"}), flush=True)

    reference = results["real posts"]
    allowed = [name for name in SETTINGS if results[name]["rep4"] <= reference["rep4"] + 0.02
               and results[name]["distinct2"] >= 0.9 * reference["distinct2"] and "greedy" not in name]
    best = min(allowed, key=lambda name: results[name]["judge_bpc"]) if allowed else None
    record = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "model": cli.model, "judge": cli.judge or cli.model, "prompts": len(prompts), "recommended": best,
        "results": results,
    }
    cli.output_dir.mkdir(parents=True, exist_ok=True)
    (cli.output_dir / "sampling.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    lines = [
        "# Sampling benchmark: decoding settings against the real posts",
        "",
        f"Command: `{record['command']}`", "", f"Machine: {record['machine']}", "",
        f"{len(prompts)} prompts (the first {PROMPT_WORDS} words of bundled validation posts), {MAX_NEW_TOKENS} new "
        "tokens at most, seed 0. rep-4: share of a sample's word 4-grams repeating an earlier one; distinct-2: "
        "distinct word bigrams / all; loops: share of samples ending in a token loop; judge bpc: bits per "
        f"character of prompt + sample under {record['judge']}. Recommended: the lowest judge bpc with rep-4 <= "
        "the real posts' + 0.02 and distinct-2 >= 90% of theirs.",
        "",
        "| setting | rep-4 | distinct-2 | loops | judge bpc | mean chars |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        loops = "" if row["loops"] is None else f"{row['loops']:.0%}"
        mark = " **(recommended)**" if name == best else ""
        lines.append(f"| {name}{mark} | {row['rep4']:.3f} | {row['distinct2']:.3f} | {loops} | "
                     f"{row['judge_bpc']:.3f} | {row['mean_chars']:.0f} |")
    if best:
        lines += ["", f"Samples with the recommended setting ({best}):", ""]
        lines += [f"- {text!r}" for text in results[best]["examples"]]
    lines += ["", "Greedy samples:", ""] + [f"- {text!r}" for text in results["greedy"]["examples"]]
    (cli.output_dir / "sampling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
