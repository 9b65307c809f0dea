"""The posts tokenizer: round trips, special tokens, padding, loading without the package, bad input."""

import json
import re

import pytest
import torch
from conftest import run_without_postformer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from postformer import PostformerConfig, PostformerForCausalLM
from postformer.cli import main as cli
from postformer.data import load_posts
from postformer.tokenization import (
    ENTITY_PATTERNS,
    config_token_ids,
    fertility_report,
    posts_generation_config,
    train_posts_tokenizer,
    train_tokenizer,
)

EMOJI = ["😂", "👍", "❤️", "🔥", "⚽", "👩\u200d👩\u200d👧", "👍🏽", "🙌🏿", "🇪🇸", "🇫🇷", "🏳️\u200d🌈", "1️⃣", "🧑\u200d💻"]


@pytest.fixture(scope="module")
def posts():
    return load_posts()


@pytest.fixture(scope="module")
def tokenizer(posts):
    return train_tokenizer(posts["train"]["text"][:2000], vocab_size=2048, show_progress=False)


@pytest.fixture(scope="module")
def normalizing_tokenizer(posts):
    return train_tokenizer(posts["train"]["text"][:2000], vocab_size=2048, normalize=True, show_progress=False)


def round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False)


# ----------------------------------------------------------------------------------------------------------------
# Round trips (property tests)

# Derandomized, as in tests/reliability/test_fuzz.py: the same examples on every run, so the suite is stable.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
words = st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=12)
urls = st.builds(
    lambda scheme, host, path, query: f"{scheme}{host}.com/{path}{query}",
    st.sampled_from(["http://", "https://", "www.", "https://www."]),
    st.from_regex(r"[a-z0-9\-]{1,12}", fullmatch=True),
    # a path never ends in ".": a full stop after a URL ends the sentence, and the pre-tokenizer splits it off
    st.from_regex(r"(?:[A-Za-z0-9_/\-\.]{0,19}[A-Za-z0-9_/\-])?", fullmatch=True),
    st.sampled_from(["", "?x=1", "?utm_source=fb&id=99", "#frag"]),
)
mentions = st.builds(lambda name: "@" + name, st.from_regex(r"\w{1,15}", fullmatch=True))
hashtags = st.builds(lambda name: "#" + name, words)
emoji = st.sampled_from(EMOJI)
post_pieces = st.one_of(words, urls, mentions, hashtags, emoji, st.sampled_from(["!!!", "?!", "...", "\n", "  ", " "]))
posts_like = st.lists(post_pieces, min_size=1, max_size=20).map(" ".join)


@PROPERTY
@given(text=st.text())
def test_round_trip_of_arbitrary_unicode(tokenizer, text):
    assert round_trip(tokenizer, text) == text


@PROPERTY
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>")))
def test_round_trip_with_special_tokens_added_and_skipped(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@PROPERTY
@given(text=posts_like)
def test_round_trip_of_posts_with_emoji_urls_mentions_and_hashtags(tokenizer, text):
    assert round_trip(tokenizer, text) == text


@PROPERTY
@given(pieces=st.lists(emoji, min_size=1, max_size=8))
def test_emoji_sequences_round_trip_and_stay_whole_pre_tokens(tokenizer, pieces):
    text = "".join(pieces)
    assert round_trip(tokenizer, text) == text
    split = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(" ".join(pieces))
    # Byte-level pieces are opaque; their offsets show each emoji (ZWJ family, skin tone, flag) is one piece.
    spans = [" ".join(pieces)[start:end].strip() for _, (start, end) in split]
    assert spans == pieces


@PROPERTY
@given(url=urls, mention=mentions, tag=hashtags)
def test_urls_mentions_and_hashtags_are_single_pre_tokens(tokenizer, url, mention, tag):
    text = f"see {url} with {mention} {tag}"
    spans = [text[start:end].strip() for _, (start, end) in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    assert url in spans and mention in spans and tag in spans


@PROPERTY
@given(text=posts_like)
def test_normalisation_replaces_urls_and_mentions_with_placeholders(normalizing_tokenizer, text):
    ids = normalizing_tokenizer(text, add_special_tokens=False)["input_ids"]
    url_id, user_id = normalizing_tokenizer.convert_tokens_to_ids(["<url>", "<user>"])
    assert ids.count(url_id) == len(ENTITY_PATTERNS["url"].findall(text))
    decoded = normalizing_tokenizer.decode(ids)
    assert not ENTITY_PATTERNS["url"].search(decoded)
    assert decoded.count("<user>") == ids.count(user_id)


def test_normalisation_is_off_by_default(tokenizer):
    assert tokenizer.backend_tokenizer.normalizer is None
    assert "<url>" not in tokenizer.get_vocab()


# ----------------------------------------------------------------------------------------------------------------
# Special tokens, padding, truncation, model config


def test_special_token_ids_and_templates(tokenizer):
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.sep_token) == ("<pad>", "<s>", "</s>", "<sep>")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id) == (0, 1, 2, 3)
    single = tokenizer("hello world")["input_ids"]
    assert single[0] == 1 and 2 not in single
    pair = tokenizer("first post", "second post")["input_ids"]
    assert pair[0] == 1 and pair.count(3) == 1
    assert len(tokenizer) == 2048


def test_config_token_ids_make_a_matching_model(tokenizer):
    ids = config_token_ids(tokenizer)
    assert ids == dict(vocab_size=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=3)
    config = PostformerConfig.from_preset("small", **ids)
    model = PostformerForCausalLM(config)
    assert posts_generation_config(tokenizer).eos_token_id == [2, 3]
    batch = tokenizer(["a post", "a longer post with more words"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, batch["input_ids"].shape[1], 2048)


def test_batch_padding_is_on_the_left_with_mask(tokenizer):
    batch = tokenizer(["short", "a much longer post with #hashtags 🔥"], padding=True, return_tensors="pt")
    assert tokenizer.padding_side == "left"
    assert isinstance(batch["input_ids"], torch.Tensor) and batch["input_ids"].shape == batch["attention_mask"].shape
    first = batch["input_ids"][0]
    n_pad = int((batch["attention_mask"][0] == 0).sum())
    assert n_pad > 0 and torch.all(first[:n_pad] == 0) and first[n_pad] == 1
    assert torch.all(batch["attention_mask"][1] == 1)


def test_truncation_to_max_length(tokenizer):
    long_post = "word " * 2000
    assert len(tokenizer(long_post, truncation=True, max_length=16)["input_ids"]) == 16
    assert len(tokenizer(long_post, truncation=True)["input_ids"]) == tokenizer.model_max_length == 512


@pytest.mark.slow
def test_saved_tokenizer_loads_with_auto_tokenizer_in_a_clean_process(tmp_path, tokenizer, normalizing_tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    normalizing_tokenizer.save_pretrained(tmp_path / "norm")
    text = "Watch 👩\u200d👩\u200d👧 live at https://cnn.com/live?x=1 with @nasa #Mars2020!!!"
    expected = {"tok": tokenizer(text)["input_ids"], "norm": normalizing_tokenizer(text)["input_ids"]}
    (tmp_path / "expected.json").write_text(json.dumps({"text": text, "ids": expected}))
    out = run_without_postformer(
        """
import json
from transformers import AutoTokenizer
expected = json.load(open("expected.json"))
for name in ("tok", "norm"):
    tok = AutoTokenizer.from_pretrained(name)
    assert tok(expected["text"])["input_ids"] == expected["ids"][name], name
    assert tok.padding_side == "left" and tok.pad_token_id == 0 and tok.sep_token == "<sep>"
    batch = tok([expected["text"], "hi"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, 0] == tok.pad_token_id
plain = AutoTokenizer.from_pretrained("tok")
assert plain.decode(plain(expected["text"])["input_ids"], skip_special_tokens=True) == expected["text"]
assert "<url>" in AutoTokenizer.from_pretrained("norm").decode(expected["ids"]["norm"])
print("OK")
""",
        cwd=tmp_path,
    )
    assert out.strip().endswith("OK")
    assert AutoTokenizer.from_pretrained(tmp_path / "tok")(text)["input_ids"] == expected["tok"]


@pytest.mark.slow
def test_model_folder_tokenizer_loads_without_postformer_as_the_readme_says(model_dir, tmp_path):
    """README, Publishing: beside a model, AutoTokenizer asks whether to run the model's code unless
    trust_remote_code is given (and, unanswered, loads anyway); with True, or False without running any of the
    folder's code, or as a PreTrainedTokenizerFast, it loads the posts tokenizer without asking."""
    text = "loving the match #football 😂 https://example.com/x"
    reference = AutoTokenizer.from_pretrained(model_dir)  # postformer is imported here: no question
    expected = [reference(text)["input_ids"], "left", 0]
    out = run_without_postformer(f"""
import json, sys
from transformers import AutoTokenizer, PreTrainedTokenizerFast
folder, text = {str(model_dir)!r}, {text!r}
loads = {{
    "trust_remote_code=False": lambda: AutoTokenizer.from_pretrained(folder, trust_remote_code=False),
    "PreTrainedTokenizerFast": lambda: PreTrainedTokenizerFast.from_pretrained(folder),
    "no argument": lambda: AutoTokenizer.from_pretrained(folder),
    "trust_remote_code=True": lambda: AutoTokenizer.from_pretrained(folder, trust_remote_code=True),
}}
for name, load in loads.items():
    print("\\n=== " + name, flush=True)
    tokenizer = load()
    ran_code = any(module.startswith("transformers_modules") for module in sys.modules)
    print("RESULT", json.dumps([tokenizer(text)["input_ids"], tokenizer.padding_side, tokenizer.pad_token_id, ran_code]))
""", cwd=tmp_path, timeout=120)  # stdin is empty: an unanswered question fails at once
    sections = dict(re.findall(r"^=== ([^\n]+)\n(.*?)(?=^=== |\Z)", out, re.M | re.S))
    assert list(sections) == ["trust_remote_code=False", "PreTrainedTokenizerFast", "no argument",
                              "trust_remote_code=True"]
    for name, printed in sections.items():
        [result] = re.findall(r"RESULT (.*)", printed)
        assert json.loads(result) == [*expected, name == "trust_remote_code=True"], name  # the model's code ran
        assert ("Do you wish to run the custom code? [y/N]" in printed) == (name == "no argument"), name


# ----------------------------------------------------------------------------------------------------------------
# Training from every format, the report, the CLI


def test_training_reads_jsonl_csv_text_and_dataset_folders(tmp_path):
    texts = [f"post number {i} about #topic{i % 7} with @user{i % 5} 🔥" for i in range(60)]
    (tmp_path / "posts.jsonl").write_text("\n".join(json.dumps({"message": t, "n": i}) for i, t in enumerate(texts)))
    (tmp_path / "posts.csv").write_text("id,message\n" + "\n".join(f'{i},"{t}"' for i, t in enumerate(texts)))
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "paragraphs.txt").write_text("\n\n".join(t.replace(" with ", "\nwith ") for t in texts))
    load_posts(tmp_path / "posts.jsonl", text_field="message")["train"].save_to_disk(str(tmp_path / "saved"))
    for data, field, n_posts in [
        ("posts.jsonl", "message", 60),
        ("posts.csv", "message", 60),
        ("lines.txt", "text", 60),
        ("paragraphs.txt", "text", 60),
        ("saved", "text", 57),  # the train split of the jsonl (3 posts held out for validation)
    ]:
        posts = load_posts(tmp_path / data, text_field=field)
        assert len(posts["train"]) + len(posts["validation"]) == n_posts, data
        tokenizer, report = train_posts_tokenizer(
            tmp_path / f"out-{data}", data=tmp_path / data, text_field=field, vocab_size=300, show_progress=False
        )
        assert len(tokenizer) == 300 and report["posts"] == len(posts["validation"])
    multi_line = load_posts(tmp_path / "paragraphs.txt")["train"]["text"]
    assert all("\nwith " in t for t in multi_line)


def test_validation_split_is_deterministic(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(f"post {i}" for i in range(100)))
    first, second = load_posts(tmp_path / "p.txt"), load_posts(tmp_path / "p.txt")
    assert first["validation"]["text"] == second["validation"]["text"] and len(first["validation"]) == 5
    assert set(first["train"]["text"]).isdisjoint(first["validation"]["text"])
    assert load_posts(tmp_path / "p.txt", seed=1)["validation"]["text"] != first["validation"]["text"]


def test_fertility_report_counts_match_a_hand_count(tokenizer):
    texts = ["I love #python 🔥", "see https://example.com/a now", "plain words only"]
    report = fertility_report(tokenizer, texts)
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert report["posts"] == 3 and report["tokens"] == sum(counts)
    assert report["tokens_per_post"] == pytest.approx(sum(counts) / 3)
    assert report["chars_per_token"] == pytest.approx(sum(map(len, texts)) / sum(counts))
    assert report["entities"]["hashtag"]["posts_with"] == 1 and report["entities"]["url"]["posts_with"] == 1
    assert report["entities"]["emoji"]["roundtrip_intact_share"] == 1.0
    assert report["entities"]["mention"] == {"posts_with": 0, "roundtrip_intact_share": None, "tokens_per_entity": None}
    url_tokens = tokenizer.tokenize("https://example.com/a")
    assert report["entities"]["url"]["tokens_per_entity"] == len(url_tokens)


def test_cli_trains_saves_and_reports(tmp_path, capsys):
    assert cli(["train-tokenizer", "--vocab-size", "512", "--output-dir", str(tmp_path / "tok"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "characters / token" in printed and "round-trip intact" in printed
    report = json.loads((tmp_path / "tok" / "tokenizer_report.json").read_text())
    assert report["vocab_size"] == 512 and report["posts"] == 500 and report["data"] == "bundled sample"
    assert report["entities"]["url"]["roundtrip_intact_share"] == 1.0
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tok")) == 512


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="posts data not found: .*nope.jsonl"):
        train_posts_tokenizer(tmp_path / "out", data=tmp_path / "nope.jsonl")
    assert cli(["train-tokenizer", "--data", str(tmp_path / "nope.jsonl"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "error: posts data not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.jsonl", "", "no posts in .*empty.jsonl: the file is empty"),
        ("blank.txt", "\n   \n\n", "no posts in .*blank.txt"),
        ("empty-texts.jsonl", '{"text": ""}\n{"text": "   "}\n', "every post of the train split is empty"),
    ],
)
def test_empty_corpus_is_a_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        train_posts_tokenizer(tmp_path / "out", data=tmp_path / name, show_progress=False)


def test_unknown_text_field_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"message": "hello"}\n{"message": "world"}\n')
    with pytest.raises(ValueError, match=r"text field 'body' not found in .*p.jsonl .*columns are \['message'\]"):
        train_posts_tokenizer(tmp_path / "out", data=tmp_path / "p.jsonl", text_field="body")
    assert cli(["train-tokenizer", "--data", str(tmp_path / "p.jsonl"), "--text-field", "body", "--output-dir", str(tmp_path / "o")]) == 2
    assert "text field 'body' not found" in capsys.readouterr().err


@pytest.mark.parametrize("vocab_size,normalize,minimum", [(100, False, 260), (259, False, 260), (261, True, 262)])
def test_vocab_smaller_than_bytes_plus_specials_is_a_clear_error(vocab_size, normalize, minimum):
    with pytest.raises(ValueError, match=f"vocab_size {vocab_size} is too small: .*at least {minimum}"):
        train_tokenizer(["some text"], vocab_size=vocab_size, normalize=normalize, show_progress=False)


def test_smallest_vocab_works():
    tokenizer = train_tokenizer(["tiny corpus", "of two posts"], vocab_size=260, show_progress=False)
    assert len(tokenizer) == 260 and round_trip(tokenizer, "ünïcode ✓") == "ünïcode ✓"



def test_training_on_no_posts_is_a_clear_error():
    with pytest.raises(ValueError, match="no posts to train the tokenizer on: the corpus is empty"):
        train_tokenizer(["", "   "], vocab_size=300, show_progress=False)
