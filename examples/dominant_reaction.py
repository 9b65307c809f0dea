"""Dominant reaction: fine-tune a trained Postformer language model to predict a post's strongest reaction.

Every post of the bundled Facebook sample carries its reaction counts. The label here is the reaction other
than "like" (love, wow, haha, sad, angry) with the largest count; posts with none of them, or with a tie for
the largest, have no dominant reaction and are left out. The labelled posts are written as
OUT/data/{train,validation,test}.jsonl (text, label), from the sample's own splits, then
`postformer classify-train` fine-tunes the language model on them into OUT/classifier.

    postformer train --output-dir /tmp/pf_default          # a language model (about a minute on a CPU)
    python examples/dominant_reaction.py --model /tmp/pf_default --output-dir /tmp/pf_reaction

Flags after the known ones go to classify-train unchanged (e.g. --epochs 5 --learning-rate 1e-3).
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from postformer.cli import main as postformer
from postformer.data import BUNDLED_POSTS

REACTIONS = {"loves": "love", "wows": "wow", "hahas": "haha", "sads": "sad", "angrys": "angry"}


def dominant_reaction(post: dict) -> str | None:
    """The non-like reaction with the most votes, or None when there are none or two share the most."""
    counts = {name: post.get(field) or 0 for field, name in REACTIONS.items()}
    best = max(counts.values())
    leaders = [name for name, count in counts.items() if count == best]
    return leaders[0] if best > 0 and len(leaders) == 1 else None


def write_labelled_posts(folder: Path) -> dict[str, Counter]:
    """Write folder/{split}.jsonl of {"text", "label"} for every split of the bundled sample; return the label
    counts per split."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "validation", "test"):
        counts[split] = Counter()
        with open(BUNDLED_POSTS / f"{split}.jsonl", encoding="utf-8") as source, \
                open(folder / f"{split}.jsonl", "w", encoding="utf-8") as target:
            for line in source:
                post = json.loads(line)
                label = dominant_reaction(post)
                if label is None or not (post.get("text") or "").strip():
                    continue
                target.write(json.dumps({"text": post["text"], "label": label}, ensure_ascii=False) + "\n")
                counts[split][label] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained language model folder (postformer train)")
    parser.add_argument("--output-dir", default="runs/dominant_reaction",
                        help="writes data/ and classifier/ here (default: runs/dominant_reaction)")
    args, classify_train_flags = parser.parse_known_args(argv)

    data = Path(args.output_dir) / "data"
    for split, counts in write_labelled_posts(data).items():
        print(f"{split}: {sum(counts.values())} posts, " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    return postformer([
        "classify-train", "--model", args.model, "--data", str(data),
        "--output-dir", str(Path(args.output_dir) / "classifier"), *classify_train_flags,
    ])


if __name__ == "__main__":
    sys.exit(main())
