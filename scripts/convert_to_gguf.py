"""Run llama.cpp's convert_hf_to_gguf.py, unchanged, on a `postformer export --to starcoder2` folder.

The script names a BPE tokenizer's pre-tokenizer by the hash of its tokens on a test string, and stops at the
posts tokenizer's (GPT-2's byte-level regex plus URLs, hashtags/mentions and emoji sequences kept whole), which
llama.cpp does not implement. This declares llama.cpp's closest, "gpt-2", instead; see the README's llama.cpp
section for what that costs. Usage:

    python scripts/convert_to_gguf.py LLAMA_CPP_DIR MODEL_DIR --outfile model.gguf --outtype f32

LLAMA_CPP_DIR: a llama.cpp checkout (or the vendor/llama.cpp folder of the llama-cpp-python source distribution);
the arguments after it are convert_hf_to_gguf.py's.
"""

import runpy
import sys
from pathlib import Path

llama_cpp = Path(sys.argv.pop(1))
sys.path[:0] = [str(llama_cpp / "gguf-py"), str(llama_cpp)]
from conversion.base import TextModel  # noqa: E402  (llama.cpp's own modules, found through the path above)

TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv[0] = str(llama_cpp / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
