#!/usr/bin/env bash
# Set up (see setup.sh), train the "small" preset and its tokenizer on the bundled posts sample on the CPU,
# then generate a few posts from the trained model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/small}
.venv/bin/postformer train --output-dir "$OUT" "$@"
.venv/bin/postformer generate --model "$OUT" --max-new-tokens 60 --seed 0 \
    "Breaking news:" "Happy birthday to" "We are proud to announce" "Tonight on" "Thank you to everyone who"
