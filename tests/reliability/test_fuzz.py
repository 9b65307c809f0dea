"""Fuzzing with hypothesis: arbitrary text to the tokenizer, arbitrary bytes to the data loaders, arbitrary prompts
to generation, arbitrary posts to evaluation.

The contract each test checks:

- tokenizer (the posts tokenizer as a saved model folder loads it): any Unicode string without surrogates
  (control characters, NUL, emoji ZWJ sequences, right-to-left text, bidi controls, combining marks, literal
  special-token text) encodes, every id is inside the vocabulary, and decoding gives the string back exactly
  (byte-level BPE is lossless; the normalising variant, which maps URLs and mentions to placeholders, is lossy by
  design and is only checked not to fail);
- data loaders (`load_posts_split`, and `load_posts` also skipping bad lines and streamed, on .jsonl, .csv and
  .txt files of arbitrary bytes): either posts come back (non-empty strings) or a ValueError or
  FileNotFoundError of ours, naming the file, is raised; exactly those types: no UnicodeDecodeError,
  JSONDecodeError, pyarrow, pandas or datasets error;
- generation (`generate_posts` and `postformer generate`): any prompt gives one continuation (a string), or,
  when its tokens plus max_new_tokens exceed the context, the ValueError "prompt 1 is too long", or, when it
  holds a lone surrogate (bytes that were not UTF-8, half an emoji), the ValueError "prompt 1 is not valid text";
- evaluation (`evaluate_posts`): any post with some non-space text is scored (long ones with a sliding window).

The examples are derandomized (the same on every run) so that the suite is stable; set POSTFORMER_FUZZ_EXAMPLES
(e.g. 2000) for a longer, random run. No example database is written.
"""

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from postformer.cli import main as cli
from postformer.data import load_posts, load_posts_split
from postformer.evaluation import evaluate_posts
from postformer.generation import generate_posts

pytestmark = pytest.mark.slow  # hypothesis fuzzing over many generated inputs

EXAMPLES = int(os.environ.get("POSTFORMER_FUZZ_EXAMPLES", "0"))


def fuzz(default: int):
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=not EXAMPLES, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_own_datasets_cache(tmp_path_factory):
    """One thread (a tiny model gains nothing from more); a datasets cache of its own, so that the many small
    files read here leave nothing in the user's cache."""
    import datasets

    threads, cache = torch.get_num_threads(), datasets.config.HF_DATASETS_CACHE
    torch.set_num_threads(1)
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("datasets-cache")
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()
    datasets.config.HF_DATASETS_CACHE = cache
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# Strategies

TRICKY = [
    "👩‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🇺🇦", "1️⃣", "🧑🏿‍🚀",  # ZWJ families, flags, skin tones, keycaps
    "שלום עולם", "مرحبا بالعالم", "\u202eevil\u202c", "\u200f", "\u2066x\u2069",  # right-to-left, bidi controls
    "e\u0301", "\u0915\u094d\u0937", "ｆｕｌｌ", "ß", "İ",  # combining marks, conjuncts, width, case traps
    "\x00", "\x07", "\x1b[31m", "\r\n", "\r", "\t", "\x0b", "\x0c", "\u2028", "\x85",  # controls, line breaks
    "\ufeff", "\u200b", "\u00a0", "\U0010fffd", "\uffff",  # BOM, zero-width, private use, noncharacter
    "<s>", "</s>", "<pad>", "<sep>", "<url>", "<user>", " <s> ",  # special-token text
    "#tag", "@user", "https://example.com/a?b=c", "www.x.org", "lol", " ", "  ",
]
code_points = st.characters(exclude_categories=["Cs"])  # every code point except surrogates (not encodable)
texts = st.one_of(
    st.text(code_points, max_size=60),
    st.lists(st.one_of(st.sampled_from(TRICKY), st.text(code_points, max_size=5)), max_size=12).map("".join),
)
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)  # bytes that were not UTF-8, half emoji
prompts = st.one_of(texts, texts, st.lists(st.one_of(texts, surrogates), min_size=1, max_size=4).map("".join))


def _json_line(draw_text):
    return json.dumps({"text": draw_text}, ensure_ascii=False).encode("utf-8")


def _csv_row(text, label):
    import csv
    import io

    row = io.StringIO()
    csv.writer(row).writerow([text, label])
    return row.getvalue().rstrip("\r\n").encode("utf-8")


good_json_lines = texts.map(_json_line)
plain_lines = texts.map(lambda t: t.encode("utf-8"))  # CSV / TXT rows, or JSON lines that are not JSON
lines = st.one_of(
    good_json_lines, good_json_lines, plain_lines, plain_lines,
    st.builds(_csv_row, texts, st.sampled_from(["a", "b", "1", ""])),  # a well-formed CSV row
    st.builds(lambda t, k: json.dumps({k: t}).encode(), prompts, st.sampled_from(["text", "body", ""])),  # escapes
    st.sampled_from([b'{"text": 5}', b'{"text": null}', b'{"text": ["a"]}', b"[1, 2]", b'"just a string"', b"7",
                     b'{"text": "cut', b"{", b"}", b'{"text": "a"} trailing', b"", b"  ", b"\xff\xfe", b"caf\xe9",
                     b'"unclosed, quote', b'a,"b""c",d', b"a,b,c", b"a\tb", b"\x00", b"\r", b"\xef\xbb\xbf"]),
    st.binary(max_size=24),  # anything
)
headers = st.sampled_from([b"", b"text\n", b"text,label\n", b"label,text\n", b"body\n", b"\xef\xbb\xbftext\n"])
files = st.builds(lambda header, ls: header + b"\n".join(ls), headers, st.lists(lines, max_size=12))


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer


@fuzz(300)
@given(text=texts)
def test_tokenizer_round_trips_any_text(loaded, text):
    tokenizer = loaded[1]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text
    with_bos = tokenizer(text)["input_ids"]  # as posts are encoded: <s> then the text
    assert with_bos[0] == tokenizer.bos_token_id and with_bos[1:] == ids


@fuzz(60)
@given(batch=st.lists(texts, min_size=1, max_size=4))
def test_tokenizer_batches_like_single_texts(loaded, batch):
    tokenizer = loaded[1]
    assert tokenizer(batch)["input_ids"] == [tokenizer(t)["input_ids"] for t in batch]


@pytest.fixture(scope="module")
def normalizing_tokenizer():
    from conftest import TINY_POSTS

    from postformer.tokenization import train_tokenizer

    return train_tokenizer(TINY_POSTS, vocab_size=300, normalize=True, show_progress=False)


@fuzz(100)
@given(text=texts)
def test_normalizing_tokenizer_never_fails(normalizing_tokenizer, text):
    ids = normalizing_tokenizer(text)["input_ids"]
    assert all(0 <= i < len(normalizing_tokenizer) for i in ids)
    assert isinstance(normalizing_tokenizer.decode(ids, skip_special_tokens=True), str)


# ----------------------------------------------------------------------------------------------------------------
# Data loaders

DOCUMENTED_ERRORS = (ValueError, FileNotFoundError)  # exactly these types; not their subclasses


def _load_or_documented_error(load, content: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"posts{suffix}"
        path.write_bytes(content)
        try:
            posts = load(path)
        except Exception as error:  # noqa: BLE001 - the point: which exceptions escape
            assert type(error) in DOCUMENTED_ERRORS, f"{type(error).__module__}.{type(error).__name__}: {error}"
            assert str(path) in str(error), str(error)  # the file is named
            message = str(error).replace(str(path), "FILE")
            kind = message.split(":")[0] if message.startswith("FILE") else message[:24]
            event(f"{suffix} {type(error).__name__}: {kind}")  # shown by --hypothesis-show-statistics
            return None
        event(f"{suffix} posts")
        return posts


@fuzz(40)
@given(content=files, suffix=st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_load_posts_split_gives_posts_or_a_documented_error(content, suffix):
    posts = _load_or_documented_error(load_posts_split, content, suffix)
    if posts is not None:
        assert posts and all(isinstance(p, str) and p.strip() for p in posts)


@fuzz(25)
@given(content=files, suffix=st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_load_posts_gives_splits_or_a_documented_error(content, suffix):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SkippedLinesWarning: checked in test_bad_inputs
        for mode in ("error", "skip"):
            posts = _load_or_documented_error(lambda p: load_posts(p, on_bad_lines=mode), content, suffix)
            if posts is not None:
                assert len(posts["train"]) >= 1 and len(posts["validation"]) >= 1
                assert all(isinstance(p, str) and p.strip() for p in posts["train"]["text"])
        streamed = _load_or_documented_error(lambda p: load_posts(p, streaming=True), content, suffix)
        if streamed is not None:  # the validation split (the first posts) is read; the rest is not
            assert all(isinstance(p, str) and p.strip() for p in streamed["validation"]["text"])


@fuzz(30)
@given(good=st.lists(texts.filter(lambda t: t.strip()), min_size=1, max_size=5))
def test_well_formed_json_lines_come_back_exactly(good):
    """Any text survives JSON lines: a post is never altered on the way in (only empty ones are dropped)."""
    content = b"\n".join(json.dumps({"text": t}, ensure_ascii=False).encode("utf-8") for t in good) + b"\n"
    assert _load_or_documented_error(load_posts_split, content, ".jsonl") == good


# ----------------------------------------------------------------------------------------------------------------
# Generation and evaluation


def _fits(tokenizer, prompt, max_new_tokens, context=64):
    return len(tokenizer(prompt)["input_ids"]) + max_new_tokens <= context


@fuzz(40)
@given(prompt=prompts, max_new_tokens=st.integers(1, 4), greedy=st.booleans())
def test_generation_continues_any_prompt_or_says_it_is_too_long(loaded, prompt, max_new_tokens, greedy):
    model, tokenizer = loaded
    options = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, seed=0)
    if any("\ud800" <= c <= "\udfff" for c in prompt):
        with pytest.raises(ValueError, match="prompt 1 is not valid text: it holds the lone surrogate") as caught:
            generate_posts(model, tokenizer, [prompt], **options)
        assert type(caught.value) is ValueError
    elif _fits(tokenizer, prompt, max_new_tokens):
        [[continuation]] = generate_posts(model, tokenizer, [prompt], **options)
        assert isinstance(continuation, str)
    else:
        with pytest.raises(ValueError, match="prompt 1 is too long") as caught:
            generate_posts(model, tokenizer, [prompt], **options)
        assert type(caught.value) is ValueError


@fuzz(15)
@given(prompt=texts.map(lambda t: t * 12))  # often longer than the context
def test_generate_command_prints_a_continuation_or_one_error_line(model_dir, loaded, capsys, prompt):
    assume("\x00" not in prompt)  # a real command line cannot carry NUL; in-process it could
    code = cli(["generate", "--model", str(model_dir), "--max-new-tokens", "2", "--greedy", "--json", "--", prompt])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if _fits(loaded[1], prompt, 2):
        assert code == 0
        [record] = json.loads(out)
        assert record["prompt"] == prompt and isinstance(record["generations"][0], str)
    else:
        assert code == 2
        assert [line for line in err.splitlines() if "error:" in line][0].startswith(
            "postformer generate: error: prompt 1 is too long")


@fuzz(20)
@given(post=texts.filter(lambda t: t.strip()).map(lambda t: t * 8))
def test_evaluation_scores_any_post(loaded, post):
    metrics = evaluate_posts(*loaded, [post])
    assert metrics["posts"] == 1 and metrics["tokens"] >= 1
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0
