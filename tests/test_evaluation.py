"""Evaluation and scoring: perplexity as exp of the mean token loss, the sliding window, bits per character,
the `evaluate` and `score` commands."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_POSTS

from postformer.cli import main as cli
from postformer.data import load_posts_split
from postformer.evaluation import evaluate_posts, score_posts, token_losses

LONG_POST = " ".join(TINY_POSTS[:7])  # about 150 tokens: more than the tiny model's 64 positions


def _post_ids(tokenizer, text):
    return tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]


def test_perplexity_is_exp_of_the_mean_token_loss_computed_by_hand(loaded):
    model, tokenizer = loaded
    posts = TINY_POSTS[:10]
    total, count = 0.0, 0
    with torch.no_grad():
        for post in posts:  # one post at a time, no padding: the model's own shifted loss is the mean over it
            ids = torch.tensor([_post_ids(tokenizer, post)])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    metrics = evaluate_posts(model, tokenizer, posts, batch_size=4)
    assert metrics["tokens"] == count
    assert metrics["posts"] == 10
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    characters = sum(len(p) + 1 for p in posts)
    assert metrics["characters"] == characters
    assert metrics["bits_per_character"] == pytest.approx(total / math.log(2) / characters, rel=1e-5)


def test_batching_does_not_change_the_result(loaded):
    model, tokenizer = loaded
    posts = TINY_POSTS[:9] + [LONG_POST]
    one = evaluate_posts(model, tokenizer, posts, batch_size=1)
    many = evaluate_posts(model, tokenizer, posts, batch_size=8)
    assert many["tokens"] == one["tokens"]
    assert many["loss"] == pytest.approx(one["loss"], abs=1e-5)


def test_a_long_post_is_scored_with_a_sliding_window(loaded):
    model, tokenizer = loaded
    ids = _post_ids(tokenizer, LONG_POST)
    assert 160 < len(ids) <= 192  # the windows below assume this length
    [(scored_ids, losses)] = token_losses(model, tokenizer, [LONG_POST], stride=32)
    assert scored_ids == ids and len(losses) == len(ids) - 1  # every token after <s> predicted exactly once

    def loss_of(position, begin):  # predicting ids[position] from ids[begin:position]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[begin:position]])).logits[0, -1]
        return F.cross_entropy(logits, torch.tensor(ids[position])).item()

    # Context 64, stride 32: windows [0, 64) score 1..63, [32, 96) score 64..95, [64, 128) 96..127, [96, 160)
    # 128..159, [128, n) the rest.
    windows = [(1, 0), (63, 0), (64, 32), (95, 32), (96, 64), (127, 64), (128, 96), (159, 96), (160, 128)]
    for position, begin in windows + [(len(ids) - 1, 128)]:
        assert losses[position - 1].item() == pytest.approx(loss_of(position, begin), abs=1e-4), position
    # Another stride changes the context of later tokens, not of the first window's.
    [(_, other)] = token_losses(model, tokenizer, [LONG_POST], stride=16)
    assert torch.allclose(other[:63], losses[:63], atol=1e-5)
    assert not torch.allclose(other[63:], losses[63:], atol=1e-4)


def test_score_gives_each_post_its_token_losses(loaded):
    model, tokenizer = loaded
    posts = ["just watched the match #football lol", "zzzz qqqq xxxx"]
    scored = score_posts(model, tokenizer, posts)
    for record, (ids, losses) in zip(scored, token_losses(model, tokenizer, posts)):
        assert record["tokens"] == len(ids) - 1 == len(record["token_losses"])
        assert record["loss"] == pytest.approx(losses.double().mean().item(), rel=1e-6)
        assert record["perplexity"] == pytest.approx(math.exp(record["loss"]))
        assert "".join(token for token, _ in record["token_losses"][:-1]) == record["text"]
        assert record["token_losses"][-1][0] == tokenizer.eos_token


@pytest.mark.parametrize(
    "texts, options, message",
    [
        ([], {}, "no posts to evaluate"),
        (["fine", "  "], {}, "1 empty post"),
        ("a string", {}, "list of strings"),
        (["fine"], {"stride": 0}, "stride must be an integer in"),
        (["fine"], {"stride": 64}, "stride must be an integer in"),
        (["fine"], {"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_input_is_refused(loaded, texts, options, message):
    with pytest.raises(ValueError, match=message):
        evaluate_posts(*loaded, texts, **options)


def test_posts_of_a_file_or_of_a_split(tmp_path):
    file = tmp_path / "posts.jsonl"
    file.write_text("".join(json.dumps({"body": p}) + "\n" for p in ["one", "", "two", "three"]))
    assert load_posts_split(file, text_field="body") == ["one", "two", "three"]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        load_posts_split(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="no 'dev2' split"):
        load_posts_split(None, split="dev2")
    assert len(load_posts_split(None, split="test")) == 500


def test_evaluate_command_prints_and_writes_json(model_dir, loaded, tmp_path, capsys):
    data = tmp_path / "posts.txt"
    data.write_text("\n".join(TINY_POSTS[:20]) + "\n")
    assert cli(["evaluate", "--model", str(model_dir), "--data", str(data), "--output", str(tmp_path / "m.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "m.json").read_text())
    expected = evaluate_posts(*loaded, TINY_POSTS[:20])
    assert printed["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert printed["posts"] == 20


def test_score_command_ranks_posts_and_writes_every_one(model_dir, tmp_path, capsys):
    output = tmp_path / "scores.jsonl"
    texts = TINY_POSTS[:5]
    assert cli(["score", "--model", str(model_dir), *texts, "--top", "3", "--json", "--output", str(output)]) == 0
    ranked = json.loads(capsys.readouterr().out)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["text"] for r in records] == texts
    assert len(ranked) == 3
    assert [r["loss"] for r in ranked] == sorted((r["loss"] for r in records), reverse=True)[:3]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["evaluate", "--model", "{tmp}"], "is not a model folder"),
        (["evaluate", "--model", "{model}", "--data", "{tmp}/missing.jsonl"], "posts data not found"),
        (["evaluate", "--model", "{model}", "--max-posts", "0"], "--max-posts must be at least 1"),
        (["score", "--model", "{model}", "a post", "--data", "x.txt"], "not both"),
    ],
)
def test_commands_report_bad_input_in_one_line(model_dir, tmp_path, capsys, arguments, message):
    arguments = [a.format(tmp=tmp_path, model=model_dir) for a in arguments]
    assert cli(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
