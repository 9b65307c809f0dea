"""Run llama.cpp's convert_hf_to_gguf.py, unchanged, on a `postformer export --to starcoder2` (or gpt2) folder.

The script names a BPE tokenizer's pre-tokenizer by the hash of its tokens on a test string, and stops at the
posts tokenizer's (GPT-2's byte-level regex plus URLs, hashtags/mentions and emoji sequences kept whole), which
llama.cpp does not implement. This declares llama.cpp's closest, "gpt-2", instead; see the README's llama.cpp
section for what that costs. It first refuses, in one line, the models llama.cpp would compute otherwise. Usage:

    python scripts/convert_to_gguf.py LLAMA_CPP_DIR MODEL_DIR [convert_hf_to_gguf.py options, e.g. --outfile
        model.gguf --outtype f32]

LLAMA_CPP_DIR: a llama.cpp checkout (or the vendor/llama.cpp folder of the llama-cpp-python source distribution).
"""

import json
import runpy
import sys
from pathlib import Path

if len(sys.argv) < 3:
    sys.exit(__doc__.split("\n\n")[2])
llama_cpp = Path(sys.argv.pop(1))
config = json.loads((Path(sys.argv[1]) / "config.json").read_text(encoding="utf-8"))
# llama.cpp's Starcoder2 and GPT-2 compute GELU (tanh approximation) whatever the config says, and its GPT-2
# converter writes a feed-forward size of 4 x n_embd.
activation = config.get("hidden_act") or config.get("activation_function")
if activation not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    sys.exit(f"error: llama.cpp computes GELU in {config['model_type']} whatever the config says; this model's "
             f"{activation!r} would give other logits")
if config["model_type"] == "gpt2" and config.get("n_inner") not in (None, 4 * config["n_embd"]):
    sys.exit(f"error: llama.cpp's GPT-2 has a feed-forward size of 4 x n_embd = {4 * config['n_embd']}; this "
             f"model's is {config['n_inner']} (the presets have 4 x hidden_size)")

sys.path[:0] = [str(llama_cpp / "gguf-py"), str(llama_cpp)]
from conversion.base import TextModel  # noqa: E402  (llama.cpp's own modules, found through the path above)

TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv[0] = str(llama_cpp / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
