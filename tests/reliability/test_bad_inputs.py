"""Bad inputs, each refused with an error of ours that names the problem (never a library's raw error).

Python API: the exception's exact type (ValueError, FileNotFoundError, ... or DiskFullError, not a
UnicodeDecodeError, JSONDecodeError, SafetensorError, KeyError or a tokenizers error that happens to subclass
one) and a message naming the file, line, field or value. CLI: exit status 2, exactly one line
"postformer CMD: error: ..." on stderr, no traceback. Commands run in this process (`cli.main`), which is what
`python -m postformer` calls; one case also runs as a real process.

Inputs covered: data files (malformed JSON lines and CSV rows, bytes that are not UTF-8, empty files, empty
posts, posts that are not text, missing fields), config values, model folders (missing parts, config.json that
is not JSON, truncated or random safetensors, weights that do not fit the config, tokenizers larger than the
embedding), generation and sampling values, over-long prompts and posts, output folders (holding a model, not
writable, disk full while saving) and CLI option values.
"""

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import TINY_POSTS

from postformer.cli import main as cli
from postformer.data import SkippedLinesWarning, load_posts, load_posts_split
from postformer.generation import generate_posts
from postformer.model_files import UnknownConfigFieldsWarning, load_model
from postformer.saving import DiskFullError


@pytest.fixture(scope="module")
def posts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("posts") / "posts.txt"
    path.write_text("\n".join(TINY_POSTS[:12]) + "\n", encoding="utf-8")
    return path


@contextmanager
def clear_error(kind, *fragments):
    """The block raises exactly `kind` (not a subclass: a UnicodeDecodeError is a ValueError too), with every
    fragment in its message."""
    with pytest.raises(Exception) as caught:
        yield caught
    assert type(caught.value) is kind, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def one_line_error(capsys, argv, command, *fragments):
    """Run the CLI; assert status 2 and exactly one 'postformer COMMAND: error:' line holding every fragment."""
    code = cli([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1 and errors[0].startswith(f"postformer {command}: error: "), err
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return err


def broken_copy(model_dir, tmp_path, change) -> Path:
    """A copy of the tiny model folder with `change(folder)` applied."""
    folder = tmp_path / "broken"
    shutil.copytree(model_dir, folder)
    change(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Data files: load_posts / load_posts_split

LATIN1 = "caf\xe9".encode("latin-1")  # "café" in Latin-1: 0xe9 is not UTF-8 on its own

DATA_CASES = [
    # id, file name, content, exception, message fragments
    ("jsonl-malformed-line", "posts.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n',
     ValueError, ["posts.jsonl, line 3", "not valid JSON", "on_bad_lines='skip'"]),
    ("jsonl-line-not-an-object", "posts.jsonl", b'{"text": "a"}\n[1, 2]\n{"text": "d"}\n',
     ValueError, ["line 2", "expected a JSON object", "got list"]),
    ("jsonl-bare-numbers", "posts.jsonl", b"5\n6\n", ValueError, ["line 1", "expected a JSON object", "got int"]),
    ("jsonl-post-not-text", "posts.jsonl", b'{"text": "a"}\n{"text": 5}\n{"text": "d"}\n',
     ValueError, ["'text'", "is not text in 1 record", "record 2: 5 (int)"]),
    ("jsonl-escaped-lone-surrogate", "posts.jsonl", b'{"text": "ok"}\n{"text": "cut \\ud83d emoji"}\n',
     ValueError, ["line 2", "\\ud83d, a lone surrogate (half of an emoji cut in two)"]),
    ("jsonl-nested-too-deeply", "posts.jsonl", b'{"text": "a"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n",
     ValueError, ["line 2: JSON nested too deeply to read"]),
    ("jsonl-not-utf8", "posts.jsonl", b'{"text": "a"}\n{"text": "' + LATIN1 + b'"}\n',
     ValueError, ["posts.jsonl is not UTF-8 text", "byte 0xe9 at byte offset 27 (line 2)"]),
    ("csv-row-with-extra-field", "posts.csv", b"text,label\na,1\nb,2,3\nc,4\n",
     ValueError, ["posts.csv: malformed CSV", "line 3"]),
    ("csv-unclosed-quote", "posts.csv", b'text,label\na,1\n"b,2\nc,4\n',
     ValueError, ["posts.csv: malformed CSV", "EOF inside string"]),
    ("tsv-row-with-extra-field", "posts.tsv", b"text\tlabel\na\t1\nb\t2\t3\nc\t4\n",
     ValueError, ["posts.tsv: malformed TSV", "line 3"]),
    ("csv-not-utf8", "posts.csv", b"text\na\n" + LATIN1 + b"\n",
     ValueError, ["posts.csv is not UTF-8 text", "byte 0xe9 at byte offset 10 (line 3)"]),
    ("csv-header-only", "posts.csv", b"text,label\n", ValueError, ["no posts in", "header row but no posts"]),
    ("txt-not-utf8", "posts.txt", b"a\nb\n" + LATIN1 + b"\n",
     ValueError, ["posts.txt is not UTF-8 text", "byte 0xe9 at byte offset 7 (line 3)"]),
    ("txt-utf16", "posts.txt", "one\ntwo\n".encode("utf-16"), ValueError, ["not UTF-8 text", "UTF-16"]),
    ("empty-file", "posts.jsonl", b"", ValueError, ["no posts in", "the file is empty"]),
    ("only-empty-posts", "posts.jsonl", b'{"text": ""}\n{"text": "   "}\n{"text": null}\n',
     ValueError, ["no posts in", "is empty"]),
    ("only-blank-lines", "posts.txt", b"\n  \n\n", ValueError, ["no posts in", "is empty"]),
    ("missing-text-field", "posts.jsonl", b'{"body": "a"}\n{"body": "b"}\n',
     ValueError, ["text field 'text' not found", "['body']"]),
]


@pytest.mark.parametrize("loader", [load_posts, load_posts_split], ids=["load_posts", "load_posts_split"])
@pytest.mark.parametrize("name, content, kind, fragments", [case[1:] for case in DATA_CASES],
                         ids=[case[0] for case in DATA_CASES])
def test_bad_data_file_is_a_clear_error(tmp_path, loader, name, content, kind, fragments):
    path = tmp_path / name
    path.write_bytes(content)
    with clear_error(kind, *fragments):
        loader(path)


STREAMED_CASES = ["jsonl-malformed-line", "jsonl-not-utf8", "csv-row-with-extra-field", "txt-not-utf8", "empty-file",
                  "only-empty-posts", "missing-text-field"]


@pytest.mark.parametrize("name, content, kind, fragments", [c[1:] for c in DATA_CASES if c[0] in STREAMED_CASES],
                         ids=[c[0] for c in DATA_CASES if c[0] in STREAMED_CASES])
def test_bad_data_file_is_a_clear_error_when_streamed(tmp_path, name, content, kind, fragments):
    path = tmp_path / name
    path.write_bytes(content)
    with clear_error(kind, *fragments):
        load_posts(path, streaming=True)


@pytest.mark.parametrize("data, kind, fragments", [
    ("missing.jsonl", FileNotFoundError, ["posts data not found", "missing.jsonl"]),
    ("folder-without-splits", FileNotFoundError, ["no posts files in folder", "train/validation/test"]),
], ids=["missing-file", "folder-without-split-files"])
def test_missing_data_is_a_clear_error(tmp_path, data, kind, fragments):
    (tmp_path / "folder-without-splits").mkdir()
    (tmp_path / "folder-without-splits" / "notes.md").write_text("no posts here")
    with clear_error(kind, *fragments):
        load_posts(tmp_path / data)


def test_unknown_on_bad_lines_mode_is_refused(posts_file):
    with clear_error(ValueError, "on_bad_lines must be one of", "'ignore'"):
        load_posts(posts_file, on_bad_lines="ignore")


@pytest.mark.parametrize("name, content, kept, skipped", [
    ("posts.jsonl", b'{"text": "a"}\n{"text": "b"\n\n[3]\n{"text": "c"}\n{"text": 7}\n', ["a", "c"],
     ["skipped 2 malformed line(s)", "line 2: not valid JSON", "line 4: expected a JSON object",
      "skipped 1 record(s)", "is not text, the first: 7 (int)"]),
    ("posts.csv", b"text,label\na,1\nb,2,3\nc,3\n", ["a", "c"], ["skipped 1 malformed line(s)", "line 3: 3 field(s)"]),
], ids=["jsonl", "csv"])
def test_skip_mode_skips_malformed_lines_and_reports_them(tmp_path, name, content, kept, skipped):
    path = tmp_path / name
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_posts_split(path, on_bad_lines="skip") == kept
    messages = " | ".join(str(w.message) for w in caught if w.category is SkippedLinesWarning)
    for fragment in skipped:
        assert fragment in messages, messages
    with clear_error(ValueError, "line"):  # only when asked for: the default still stops at the first
        load_posts_split(path)


def test_skip_mode_with_nothing_well_formed_is_an_error(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b"not json\n[1]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedLinesWarning)
        with clear_error(ValueError, "no posts in", "none of its 2 line(s) is a well-formed record"):
            load_posts(path, on_bad_lines="skip")


# ----------------------------------------------------------------------------------------------------------------
# Data through the CLI


def test_cli_reports_the_malformed_line_and_skips_only_when_asked(model_dir, tmp_path, capsys):
    data = tmp_path / "posts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_POSTS[:6]) + '{"text": "cut\n', "utf-8")
    one_line_error(capsys, ["evaluate", "--model", model_dir, "--data", data], "evaluate", "posts.jsonl, line 7",
                   "not valid JSON", "--skip-bad-lines")
    assert cli(["evaluate", "--model", str(model_dir), "--data", str(data), "--skip-bad-lines"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["posts"] == 6
    assert "postformer evaluate: warning: skipped 1 malformed line(s)" in err and "line 7" in err


@pytest.mark.parametrize("command, make_argv, fragments", [
    ("train-tokenizer", lambda m, f, o: ["--data", f, "--output-dir", o, "--vocab-size", 300, "--quiet"],
     ["posts.csv is not UTF-8 text", "(line 3)"]),
    ("score", lambda m, f, o: ["--model", m, "--data", f], ["posts.csv is not UTF-8 text"]),
    ("compress", lambda m, f, o: ["--model", m, "--output-dir", o, "--prune", 0.5, "--data", f],
     ["posts.csv is not UTF-8 text"]),
], ids=["train-tokenizer", "score", "compress"])
def test_cli_names_the_file_that_is_not_utf8(model_dir, tmp_path, capsys, command, make_argv, fragments):
    data = tmp_path / "posts.csv"
    data.write_bytes(b"text\nfine post\n" + LATIN1 + b"\n")
    one_line_error(capsys, [command, *make_argv(model_dir, data, tmp_path / "out")], command, *fragments)


def test_cli_prompts_file_that_is_not_utf8(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"hello\n\xff\xfe broken\n")
    one_line_error(capsys, ["generate", "--model", model_dir, "--prompts-file", prompts], "generate",
                   "prompts.txt is not UTF-8 text", "byte 0xff at byte offset 6 (line 2)")


def test_cli_classify_file_that_does_not_exist(model_dir, tmp_path, capsys):
    one_line_error(capsys, ["classify", "--model", model_dir, "--file", tmp_path / "nope.txt"], "classify",
                   "posts file not found", "nope.txt")


def test_cli_classify_train_without_a_label_column(model_dir, tmp_path, capsys):
    data = tmp_path / "labelled.csv"
    data.write_text("text,topic\n" + "".join(f"{t},x\n" for t in ("a b", "c d", "e f", "g h")), "utf-8")
    one_line_error(capsys, ["classify-train", "--model", model_dir, "--data", data, "--output-dir", tmp_path / "out"],
                   "classify-train", "label column 'label' not found", "['text', 'topic']", "--label-field")


# ----------------------------------------------------------------------------------------------------------------
# Config values

CONFIG_CASES = [
    ("string-for-int", dict(vocab_size="96"), "vocab_size must be an integer, got '96' (str)"),
    ("float-for-int", dict(num_hidden_layers=2.5), "num_hidden_layers must be an integer, got 2.5"),
    ("negative-size", dict(hidden_size=-32), "hidden_size must be positive, got -32"),
    ("zero-layers", dict(num_hidden_layers=0), "num_hidden_layers must be positive, got 0"),
    ("heads-do-not-divide-hidden", dict(num_attention_heads=5),
     "hidden_size (32) must be divisible by num_attention_heads (5)"),
    ("kv-heads-do-not-divide-heads", dict(num_key_value_heads=3),
     "num_attention_heads (4) must be divisible by num_key_value_heads (3)"),
    ("unknown-position-type", dict(position_embedding_type="alibi"), "position_embedding_type must be one of"),
    ("dropout-one", dict(hidden_dropout=1.0), "hidden_dropout must be a number in [0, 1), got 1.0"),
    ("dropout-negative", dict(attention_dropout=-0.1), "attention_dropout must be a number in [0, 1), got -0.1"),
    ("odd-rope-head-dim", dict(hidden_size=36, num_attention_heads=4),
     "must be even with position_embedding_type='rope'"),
    ("unknown-activation", dict(hidden_act="swish2"), "hidden_act must be one of"),
    ("token-id-outside-vocab", dict(eos_token_id=500), "eos_token_id must be None or an id in [0, vocab_size=96)"),
]


@pytest.mark.parametrize("overrides, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value_is_a_clear_error(make_config, overrides, message):
    with clear_error(ValueError, message):
        make_config(**overrides)


def test_bad_value_in_a_saved_config_names_the_file(model_dir, tmp_path, capsys):
    def negative_layers(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": -2}))

    folder = broken_copy(model_dir, tmp_path, negative_layers)
    with clear_error(ValueError, "config.json", "num_hidden_layers must be positive, got -2"):
        load_model(folder)
    one_line_error(capsys, ["generate", "--model", folder, "hi"], "generate", "config.json", "num_hidden_layers")


def test_config_from_a_newer_version_loads_and_names_its_unknown_fields(model_dir, tmp_path, capsys):
    def newer(folder):
        config = json.loads((folder / "config.json").read_text())
        config.update(moe_top_k=2, moe_experts=4, transformers_version="9.0.0")
        (folder / "config.json").write_text(json.dumps(config))

    folder = broken_copy(model_dir, tmp_path, newer)
    with pytest.warns(UnknownConfigFieldsWarning, match="does not know: moe_experts, moe_top_k") as caught:
        model, _ = load_model(folder)
    assert "transformers 9.0.0" in str(caught[0].message)
    assert model.config.moe_top_k == 2  # kept, as transformers keeps unknown keys
    assert cli(["generate", "--model", str(folder), "hi", "--max-new-tokens", "2", "--seed", "0", "--no-stream"]) == 0
    err = capsys.readouterr().err
    assert "postformer generate: warning: " in err and "moe_experts, moe_top_k" in err and "error:" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownConfigFieldsWarning)
        load_model(model_dir)  # a folder of this version: no warning


# ----------------------------------------------------------------------------------------------------------------
# Model folders


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_config(**values):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **values}))
    return change


def _drop_tensor(folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _grow_tokenizer(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["#brandnew1", "#brandnew2", "#brandnew3"])
    tokenizer.save_pretrained(folder)


FOLDER_CASES = [
    ("missing-weights", lambda f: (f / "model.safetensors").unlink(), FileNotFoundError, ["missing model weights"]),
    ("missing-tokenizer", lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
     FileNotFoundError, ["missing tokenizer files"]),
    ("missing-config", lambda f: (f / "config.json").unlink(), FileNotFoundError, ["missing config.json"]),
    ("config-not-json", lambda f: (f / "config.json").write_text("{'vocab_size': 300,"), ValueError,
     ["config.json", "is not a readable JSON config"]),
    ("config-not-an-object", lambda f: (f / "config.json").write_text("[300]"), ValueError,
     ["config.json", "not a model config"]),
    ("truncated-safetensors", lambda f: _truncate(f / "model.safetensors"), ValueError,
     ["model.safetensors' is not a readable safetensors file", "truncated or corrupted"]),
    ("random-bytes-safetensors", lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096)), ValueError,
     ["model.safetensors' is not a readable safetensors file", "truncated or corrupted"]),
    ("empty-safetensors", lambda f: (f / "model.safetensors").write_bytes(b""), ValueError,
     ["model.safetensors' is not a readable safetensors file"]),
    ("weights-missing-a-tensor", _drop_tensor, ValueError, ["lack 1 tensor(s) the model needs: model.norm.weight"]),
    ("config-vocab-differs-from-weights", _set_config(vocab_size=200), ValueError,
     ["do not fit its config.json", "model.embed_tokens.weight is [300, 32] in model.safetensors but [200, 32]"]),
    ("config-hidden-differs-from-weights", _set_config(hidden_size=64, intermediate_size=64), ValueError,
     ["do not fit its config.json", "and 30 more"]),
    ("tokenizer-larger-than-embedding", _grow_tokenizer, ValueError,
     ["has 303 tokens", "vocabulary has 300", "resize_token_embeddings"]),
    ("tokenizer-json-not-json", lambda f: (f / "tokenizer.json").write_text('{"model": '), ValueError,
     ["tokenizer.json' is not a readable JSON file", "the tokenizer is damaged"]),
    ("tokenizer-json-wrong-structure", lambda f: (f / "tokenizer.json").write_text('{"model": {"type": "Nope"}}'),
     ValueError, ["the tokenizer in", "cannot be loaded from tokenizer.json"]),
]


@pytest.mark.parametrize("change, kind, fragments", [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_damaged_model_folder_is_a_clear_error(model_dir, tmp_path, capsys, change, kind, fragments):
    folder = broken_copy(model_dir, tmp_path, change)
    with clear_error(kind, str(folder), *fragments):
        load_model(folder)
    one_line_error(capsys, ["generate", "--model", folder, "hello", "--max-new-tokens", 2], "generate", *fragments)


@pytest.mark.parametrize("where, kind, fragment", [
    ("nowhere", FileNotFoundError, "does not exist"),
    ("a-file", NotADirectoryError, "is not a folder"),
], ids=["model-folder-missing", "model-folder-is-a-file"])
def test_model_path_that_is_not_a_folder(tmp_path, where, kind, fragment):
    (tmp_path / "a-file").write_text("x")
    with clear_error(kind, fragment):
        load_model(tmp_path / where)


@pytest.mark.slow
def test_truncated_weights_in_a_real_process_print_one_line(model_dir, tmp_path):
    folder = broken_copy(model_dir, tmp_path, lambda f: _truncate(f / "model.safetensors"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "postformer", "generate", "--model", str(folder), "hi"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "error:" in line] == [
        f"postformer generate: error: {str(folder / 'model.safetensors')!r} is not a readable safetensors file "
        "(Error while deserializing header: incomplete metadata, file not fully covered): it is truncated or "
        "corrupted; copy or save the model again"
    ]


# ----------------------------------------------------------------------------------------------------------------
# Generation: sampling values and prompts longer than the context

GENERATION_CASES = [
    ("temperature-zero", dict(temperature=0), "temperature must be a number > 0, got 0"),
    ("temperature-negative", dict(temperature=-1.0), "temperature must be a number > 0, got -1.0"),
    ("temperature-nan", dict(temperature=float("nan")), "temperature must be a number > 0, got nan"),
    ("top-p-zero", dict(top_p=0.0), "top_p must be a number in (0, 1], got 0.0"),
    ("top-p-above-one", dict(top_p=1.5), "top_p must be a number in (0, 1], got 1.5"),
    ("top-k-negative", dict(top_k=-1), "top_k must be an integer >= 0"),
    ("max-new-tokens-zero", dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
    ("num-return-sequences-zero", dict(num_return_sequences=0), "num_return_sequences must be an integer >= 1, got 0"),
    ("repetition-penalty-zero", dict(repetition_penalty=0.0), "repetition_penalty must be a number > 0"),
    ("batch-size-zero", dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    ("prompt-longer-than-context", dict(prompts=["lol " * 80]), "prompt 1 is too long"),
    ("prompt-plus-new-tokens-over-context", dict(prompts=["lol " * 30], max_new_tokens=40),
     "exceeds the model's limit of 64"),
    ("prompts-a-string", dict(prompts="just watched"), "prompts must be a list of strings"),
    ("prompt-not-a-string", dict(prompts=["ok", 7]), "prompt 2 must be a string, got int"),
    ("prompt-with-lone-surrogate", dict(prompts=["ok", "caf\udce9"]), "prompt 2 is not valid text: it holds the lone "
     "surrogate U+DCE9 at character 3"),
]


@pytest.mark.parametrize("options, message", [c[1:] for c in GENERATION_CASES], ids=[c[0] for c in GENERATION_CASES])
def test_bad_generation_value_is_a_clear_error(loaded, options, message):
    options = {"prompts": ["just watched"], "max_new_tokens": 4, **options}
    with clear_error(ValueError, message):
        generate_posts(*loaded, options.pop("prompts"), **options)


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0"], "temperature must be a number > 0"),
    (["--temperature", "nan"], "temperature must be a number > 0, got nan"),
    (["--top-p", "1.5"], "top_p must be a number in (0, 1]"),
    (["--top-k", "-3"], "top_k must be an integer >= 0"),
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["--num-return-sequences", "0"], "num_return_sequences must be an integer >= 1"),
    (["--max-new-tokens", "60", "--", "lol " * 20], "prompt 1 is too long"),
], ids=["temperature-zero", "temperature-nan", "top-p-above-one", "top-k-negative", "max-new-tokens-zero",
        "num-return-sequences-zero", "prompt-too-long"])
def test_cli_generate_bad_values(model_dir, capsys, flags, message):
    prompt = [] if "--" in flags else ["hello"]
    one_line_error(capsys, ["generate", "--model", model_dir, *prompt, *flags], "generate", message)


def test_text_that_is_not_utf8_on_the_command_line_or_stdin(model_dir, tmp_path, monkeypatch, capsys):
    """On POSIX, argv and stdin bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)."""
    from postformer.evaluation import evaluate_posts

    with clear_error(ValueError, "post 1 is not valid text", "U+DCFF"):
        evaluate_posts(*load_model(model_dir), ["fine", "bad \udcff byte"])
    one_line_error(capsys, ["generate", "--model", model_dir, "caf\udce9"], "generate",
                   "prompt 1 is not valid text", "U+DCE9")
    one_line_error(capsys, ["score", "--model", model_dir, "ok", "caf\udce9"], "score", "post 1 is not valid text")
    one_line_error(capsys, ["attention", "--model", model_dir, "--text", "caf\udce9", "--output", tmp_path / "a.png"],
                   "attention", "text is not valid text")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\ncaf\xe9\n"), errors="surrogateescape"))
    one_line_error(capsys, ["generate", "--model", model_dir], "generate", "prompt 2 is not valid text")


def test_posts_longer_than_the_context_are_scored_with_a_sliding_window(loaded, tmp_path, capsys, model_dir):
    """Documented behaviour, not an error: evaluate and score slide a window over a post longer than the context."""
    from postformer.evaluation import evaluate_posts

    long_post = " ".join(TINY_POSTS) * 2  # several times the 64-position context
    assert len(loaded[1](long_post)["input_ids"]) > 4 * 64
    metrics = evaluate_posts(*loaded, [long_post, "short one"])
    assert metrics["posts"] == 2 and metrics["tokens"] > 4 * 64
    data = tmp_path / "long.txt"
    data.write_text(long_post + "\n" + "short one\n", "utf-8")
    assert cli(["evaluate", "--model", str(model_dir), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == metrics["tokens"]


def test_attention_on_a_post_longer_than_the_context(loaded, model_dir, tmp_path, capsys):
    from postformer.attention_maps import attention_weights

    with clear_error(ValueError, "text is too long", "the model's context is 64 positions"):
        attention_weights(*loaded, "lol " * 100)
    one_line_error(capsys, ["attention", "--model", model_dir, "--text", "lol " * 100, "--output", tmp_path / "a.png"],
                   "attention", "text is too long")


# ----------------------------------------------------------------------------------------------------------------
# Output folders: holding a model, not writable, disk full while saving


@pytest.mark.parametrize("command, argv, fragment", [
    ("train", lambda m, o, d: ["--output-dir", o, "--max-steps", 1], "already holds a model or checkpoints"),
    ("compress", lambda m, o, d: ["--model", m, "--output-dir", o, "--prune", 0.5], "already holds a model"),
    ("classify-train", lambda m, o, d: ["--model", m, "--data", d, "--output-dir", o], "already holds a model"),
    ("finetune", lambda m, o, d: ["--model", m, "--data", d, "--output-dir", o, "--max-steps", 1],
     "already holds a model"),
    ("finetune", lambda m, o, d: ["--model", m, "--data", d, "--output-dir", m, "--max-steps", 1],
     "is the base model's folder"),
], ids=["train", "compress", "classify-train", "finetune", "finetune-into-its-base"])
def test_output_folder_holding_a_model_is_refused(model_dir, tmp_path, capsys, command, argv, fragment):
    out = shutil.copytree(model_dir, tmp_path / "other-model")
    before = (out / "model.safetensors").read_bytes()
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TINY_POSTS[:8])), "utf-8")
    one_line_error(capsys, [command, *argv(model_dir, out, data)], command, fragment)
    assert (out / "model.safetensors").read_bytes() == before


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder this process cannot write to: made read-only with chmod, or, as root (whom chmod does not stop),
    reported not writable by os.access, which the output checks ask."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    access = os.access

    def denied(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve() == folder.resolve():
            return False
        return access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", denied)
    yield folder


@pytest.mark.parametrize("command, argv", [
    ("train-tokenizer", lambda m, o, d: ["--data", d, "--output-dir", o, "--vocab-size", 300, "--quiet"]),
    ("compress", lambda m, o, d: ["--model", m, "--output-dir", o, "--prune", 0.5]),
    ("classify-train", lambda m, o, d: ["--model", m, "--data", d, "--output-dir", o]),
    ("finetune", lambda m, o, d: ["--model", m, "--data", d, "--output-dir", o, "--max-steps", 1]),
], ids=["train-tokenizer", "compress", "classify-train", "finetune"])
@pytest.mark.parametrize("inside", [False, True], ids=["the-folder", "a-new-folder-inside-it"])
def test_output_folder_that_is_not_writable_is_refused_before_any_work(model_dir, read_only_folder, tmp_path,
                                                                       capsys, command, argv, inside):
    out = read_only_folder / "new" if inside else read_only_folder
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TINY_POSTS[:8])), "utf-8")
    one_line_error(capsys, [command, *argv(model_dir, out, data)], command, "cannot write to output folder",
                   str(out), "not writable")


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_saving_a_compressed_model_keeps_the_folder(model_dir, posts_file, tmp_path, monkeypatch):
    from postformer.compression import compress_model

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", _no_space)
    with clear_error(DiskFullError, "no space left on device while saving the compressed model to", str(out),
                     "free some space"):
        compress_model(model_dir, out, prune=0.5, data=posts_file, max_posts=4, new_tokens=2, speed_repeats=1)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no half model, no temporary folder
    assert (out / "notes.txt").read_text() == "mine"
    monkeypatch.undo()
    compress_model(model_dir, out, prune=0.5, data=posts_file, max_posts=4, new_tokens=2, speed_repeats=1)
    assert (out / "model.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"  # a rerun works


def test_disk_full_reported_by_safetensors_itself(model_dir, posts_file, tmp_path, monkeypatch, capsys):
    """A real full disk reaches us as safetensors' own error, not as an OSError."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)
    out = tmp_path / "out"
    one_line_error(capsys, ["compress", "--model", model_dir, "--output-dir", out, "--prune", 0.5, "--data",
                            posts_file, "--max-posts", 4], "compress",
                   "no space left on device while saving the compressed model to", "os error 28")
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    Exception("No space left on device (os error 28)"),  # how tokenizers (Rust) reports it: a bare Exception
], ids=["oserror", "rust-library-error"])
def test_disk_full_while_saving_a_tokenizer_keeps_the_previous_one(tmp_path, posts_file, monkeypatch, capsys, error):
    out = tmp_path / "tok"
    argv = ["train-tokenizer", "--data", posts_file, "--output-dir", out, "--vocab-size", 270, "--quiet"]
    assert cli([str(a) for a in argv]) == 0
    capsys.readouterr()
    previous = {p.name: p.read_bytes() for p in out.iterdir()}
    write_text = Path.write_text

    def full_at_report(self, *args, **kwargs):
        if self.name == "tokenizer_report.json":
            raise error
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_report)
    argv[argv.index(270)] = 300
    one_line_error(capsys, argv, "train-tokenizer", "no space left on device while saving the tokenizer to",
                   str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous  # the old tokenizer, whole


def test_disk_full_anywhere_else_is_one_line_too(model_dir, tmp_path, monkeypatch, capsys):
    """A write outside the staged saves (here: score --output) that hits a full disk is still one line."""
    def full_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith("scores.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    real_open = open
    monkeypatch.setattr("builtins.open", full_open)
    one_line_error(capsys, ["score", "--model", model_dir, "--max-posts", 2, "--output", tmp_path / "scores.jsonl"],
                   "score", "no space left on device while writing", "scores.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# Other CLI values


@pytest.mark.parametrize("argv, command, fragments", [
    (["evaluate", "--model", "{model}", "--max-posts", "-5"], "evaluate", ["--max-posts must be at least 1, got -5"]),
    (["score", "--model", "{model}", "--stride", "0"], "score", ["stride must be an integer in [1, 63]"]),
    (["compress", "--model", "{model}", "--output-dir", "{tmp}/c", "--prune", "1.5"], "compress",
     ["prune ratio must be a number in [0, 1)", "1.5"]),
    (["compress", "--model", "{model}", "--output-dir", "{tmp}/c"], "compress", ["nothing to do"]),
    (["train", "--output-dir", "{tmp}/t", "--max-steps", "0"], "train", ["max_steps must be at least 1, got 0"]),
    (["classify-train", "--model", "{model}", "--data", "{tmp}/x.csv", "--output-dir", "{tmp}/o", "--epochs", "0"],
     "classify-train", ["epochs must be a number > 0, got 0.0"]),
    (["finetune", "--model", "{model}", "--data", "{tmp}/x.csv", "--output-dir", "{tmp}/o", "--lora-dropout", "1"],
     "finetune", ["lora_dropout must be in [0, 1)"]),
    (["attention", "--model", "{model}", "--text", "hi", "--output", "{tmp}/a.png", "--layer", "7"], "attention",
     ["layer 7 is out of range", "numbered 0 to 1"]),
], ids=["negative-max-posts", "stride-zero", "prune-above-one", "compress-without-a-step",
        "zero-max-steps", "zero-epochs", "lora-dropout-one", "layer-out-of-range"])
def test_cli_bad_option_value(model_dir, tmp_path, capsys, argv, command, fragments):
    one_line_error(capsys, [a.format(model=model_dir, tmp=tmp_path) for a in argv], command, *fragments)


@pytest.mark.parametrize("argv, fragment", [
    (["compress", "--model", "m", "--output-dir", "o", "--dtype", "int4"], "argument --dtype: invalid choice: 'int4'"),
    (["evaluate", "--model", "m", "--max-posts", "many"], "argument --max-posts: invalid int value: 'many'"),
    (["generate", "--model", "m", "--temperature", "hot"], "argument --temperature: invalid float value: 'hot'"),
    (["train", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8' (choose from 'fp32', 'bf16', 'fp16')"),
], ids=["unknown-dtype", "max-posts-not-a-number", "temperature-not-a-number", "unknown-precision"])
def test_cli_value_of_the_wrong_kind_is_a_usage_error(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [f"postformer {argv[0]}: error: {fragment}"
                                                                      + err.split(fragment, 1)[1].splitlines()[0]]
