import os

import pytest
import torch

# Tiny test models gain nothing from threads, and on 2 shared cores threads contend.
torch.set_num_threads(1)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config(**overrides):
    """A 2-layer, hidden-32 Postformer: big enough to exercise every path, small enough for 2 CPU cores."""
    from postformer import PostformerConfig

    values = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        max_relative_position=8,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_relative_position=False,
    )
    values.update(overrides)
    return PostformerConfig(**values)


# Short posts with the features the tokenizer cares about: hashtags, mentions, emoji, URLs.
TINY_POSTS = [
    f"{opening} {topic} {ending}"
    for opening in ("just watched", "can't believe", "loving the", "who else saw", "so tired of", "finally got")
    for topic in ("the match #football", "@maria's new song", "this weather", "the election debate", "my new phone")
    for ending in ("!!!", "😂😂", "https://example.com/x", "lol")
][:60]


def save_tiny_model(folder, **overrides):
    """Save a tiny, randomly initialised PostformerForCausalLM and a 300-token posts tokenizer (trained on
    TINY_POSTS) side by side in `folder`, as training does; return the folder."""
    from postformer import PostformerForCausalLM
    from postformer.tokenization import config_token_ids, posts_generation_config, train_tokenizer

    tokenizer = train_tokenizer(TINY_POSTS, vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    model = PostformerForCausalLM(tiny_config(**{"initializer_range": 0.1, **config_token_ids(tokenizer), **overrides}))
    model.generation_config = posts_generation_config(tokenizer)  # as training writes it
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model folder (`save_tiny_model`: context 64 positions, vocabulary 300), one per test module."""
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    """The model and tokenizer of `model_dir`, loaded as the commands load them."""
    from postformer.model_files import load_model

    return load_model(model_dir)


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Prepended to code run by `run_without_postformer`: any import of the package fails, as on a machine that
# only has transformers and the files saved beside a model.
_BLOCK_POSTFORMER = """
import sys
class _NoPostformer:
    def find_spec(self, name, path=None, target=None):
        if name == "postformer" or name.startswith("postformer."):
            raise ImportError("postformer is blocked in this process")
sys.meta_path.insert(0, _NoPostformer())
try:
    import postformer
    raise SystemExit("postformer was importable")
except ImportError:
    pass
"""


def run_without_postformer(code: str, cwd, timeout: int = 300) -> str:
    """Run `code` in a fresh Python process that cannot import `postformer`; return its stdout. Its stdin is
    empty, as in a script or a CI job: transformers' "run the custom code? [y/N]" prompt gets no answer and fails
    at once, where a terminal would wait 15 seconds for one."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # One thread, as in this process: exact comparisons of logits need the same reduction order.
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_HOME=str(cwd) + "/hf_home", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_POSTFORMER + code], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout
