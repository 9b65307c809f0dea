"""One loader for every command: `postformer.model_files.load_model` with local folders and Hub repository ids.

The Hub is never contacted: a Hub model is put in a temporary Hugging Face cache, as a download leaves it, and
the hub library is in offline mode, so that `from_pretrained` finds it there (or says it cannot reach the Hub).
"""

import shutil
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import errors as hub_errors

from postformer import PostformerForCausalLM
from postformer.classification import classify_posts, init_classifier
from postformer.cli import main as cli
from postformer.compression import compress_model
from postformer.generation import generate_posts
from postformer.model_files import TASKS, check_model, is_hub_model_id, load_model

REPO_ID = "postformer-tests/tiny"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, the hub library offline, and a working folder holding no model folders."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return cache


def cache_as_hub_model(folder, cache, repo_id=REPO_ID):
    """Put the files of `folder` in the cache as the main revision of the Hub model `repo_id`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def one_line_error(capsys, argv, command, *fragments):
    assert cli([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"postformer {command}: error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_what_is_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_model_id("org/name") and is_hub_model_id("gpt2")
    assert not is_hub_model_id(str(tmp_path / "missing")) and not is_hub_model_id("./model")
    assert not is_hub_model_id("a/b/c") and not is_hub_model_id(tmp_path / "org")  # a Path is always a folder
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_model_id("org/name")  # an existing local folder wins, as in transformers


def test_a_hub_model_loads_through_from_pretrained_as_its_folder_does(model_dir, hub_cache, capsys):
    cache_as_hub_model(model_dir, hub_cache)
    model, tokenizer = load_model(REPO_ID)
    local, _ = load_model(model_dir)
    assert isinstance(model, PostformerForCausalLM) and not model.training
    assert model.name_or_path == REPO_ID and len(tokenizer) == 300
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local.state_dict().values()))
    greedy = dict(max_new_tokens=8, do_sample=False)
    assert generate_posts(model, tokenizer, ["just watched"], **greedy) == generate_posts(
        local, tokenizer, ["just watched"], **greedy)
    assert check_model(REPO_ID) == REPO_ID

    assert cli(["generate", "--model", REPO_ID, "just watched", "--greedy", "--max-new-tokens", "8", "--json"]) == 0
    assert '"just watched"' in capsys.readouterr().out
    # The kind of model is checked from the Hub config too; a classifier starts from it.
    with pytest.raises(ValueError, match="is a PostformerForCausalLM, not a sequence classifier"):
        classify_posts(REPO_ID, ["a post"])
    classifier, _ = init_classifier(REPO_ID, ["a", "b"])
    assert classifier.config.id2label == {0: "a", 1: "b"}


def test_a_hub_model_that_cannot_be_fetched_is_one_clear_line(hub_cache, capsys):
    message = ("cannot load model 'org/name': not a local folder, and the Hugging Face Hub could not be reached "
               "(HF_HUB_OFFLINE is set and the model is not in the local cache)")
    with pytest.raises(ConnectionError) as caught:
        load_model("org/name")
    assert str(caught.value) == message
    with pytest.raises(ConnectionError, match="could not be reached"):
        check_model("org/name", "text-classification", new_head=True)
    one_line_error(capsys, ["generate", "--model", "org/name", "hi"], "generate", message)
    one_line_error(capsys, ["score", "--model", "org/name", "a post"], "score", message)
    one_line_error(capsys, ["classify", "--model", "org/name", "a post"], "classify", message)


def test_hub_errors_are_named_for_what_went_wrong(hub_cache, monkeypatch):
    import transformers

    def failing(error):
        def from_pretrained(*args, **kwargs):
            try:
                raise error
            except OSError as cause:  # as transformers re-raises the hub's errors
                raise OSError("org/name is not a local folder and is not a valid model identifier") from cause
        return from_pretrained

    response = SimpleNamespace(headers={}, request=None)  # what the hub's errors read of an HTTP response
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        failing(hub_errors.RepositoryNotFoundError("404 Repository Not Found", response=response)))
    with pytest.raises(FileNotFoundError, match="'org/name': not a local folder, and no model repository of that "
                                                "name on the Hugging Face Hub"):
        load_model("org/name")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        failing(hub_errors.GatedRepoError("403 gated", response=response)))
    with pytest.raises(PermissionError, match="gated"):
        load_model("org/name")


def test_a_local_folder_named_like_a_hub_id_is_loaded_from_disk(model_dir, hub_cache):
    shutil.copytree(model_dir, "org/name")
    model, _ = load_model("org/name")
    assert isinstance(model, PostformerForCausalLM)


def test_compress_needs_a_local_folder_and_says_how_to_get_one(hub_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'org/name' does not exist; .*hf download org/name --local-dir"):
        compress_model("org/name", tmp_path / "out", dtype="bf16")


def test_the_tasks_and_their_checks(model_dir):
    assert set(TASKS) == {"text-generation", "text-classification"}
    with pytest.raises(ValueError, match="task must be one of text-generation, text-classification"):
        load_model(model_dir, "summarization")
    with pytest.raises(ValueError, match="new_head=True"):
        load_model(model_dir, new_head=True)
    with pytest.raises(ValueError, match="is a PostformerForCausalLM, not a sequence classifier"):
        check_model(model_dir, "text-classification")
    assert check_model(model_dir, "text-classification", new_head=True) == model_dir
