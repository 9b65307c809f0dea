"""Corpus-scale processing (`postformer.processing`): inputs read as streams of records that a rerun can continue
from, one output line per input record in input order, resuming after a crash (a real SIGKILL), refusing to mix
runs, and one merged output from several processes under `torchrun`; `evaluate` streamed gives the metrics of the
in-memory implementation it replaced."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_POSTS

from postformer.cli import main as cli
from postformer.data import load_posts_split
from postformer.evaluation import ScoreJob, evaluate_posts, evaluate_source, score_posts, score_to_file
from postformer.processing import BLANK, EMPTY, Lines, Texts, open_posts, progress_folder
from postformer.processing.runs import Counts, _interleave, run_to_file, windows

LONG_POST = " ".join(TINY_POSTS[:7])  # longer than the tiny model's 64 positions: scored with a sliding window


def corpus(count: int = 300) -> list[str]:
    """Posts of varied lengths (a few longer than the context), with an empty one every 50."""
    posts = []
    for i in range(count):
        if i % 50 == 7:
            posts.append("")
        elif i % 97 == 3:
            posts.append(LONG_POST)
        else:
            posts.append(TINY_POSTS[i % len(TINY_POSTS)] + " lol" * (i % 5))
    return posts


def write_jsonl(path: Path, posts) -> Path:
    path.write_text("".join(json.dumps({"text": p}, ensure_ascii=False) + "\n" for p in posts), encoding="utf-8")
    return path


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def assert_same_lines(got: list[dict], expected: list[dict], atol: float = 1e-5) -> None:
    """Output lines equal, floats within `atol` (other batches: float rounding), everything else exactly."""
    assert len(got) == len(expected)
    for number, (a, b) in enumerate(zip(got, expected)):
        assert a.keys() == b.keys(), number
        for key in a:
            if key in ("loss", "perplexity", "score"):
                assert a[key] == pytest.approx(b[key], rel=atol, abs=atol), (number, key)
            elif key == "scores":
                assert a[key] == pytest.approx(b[key], abs=atol), number
            elif key == "token_losses":
                assert [t for t, _ in a[key]] == [t for t, _ in b[key]], number
                assert [v for _, v in a[key]] == pytest.approx([v for _, v in b[key]], abs=2e-4), number
            else:
                assert a[key] == b[key], (number, key)


# ----------------------------------------------------------------------------------------------------------------
# Sources: the loaders' posts, a record at a time, continued from any record


SOURCE_FILES = {
    "bom-blanks-nulls.jsonl": '\ufeff{"text": "one"}\n\n{"text": ""}\n{"text": null}\n{"other": 1}\n'
                              '{"text": "two\\nlines"}\n{"text": "no newline at the end"}',
    "quoted.csv": 'text,label\n"multi\nline",1\nplain,2\n\n,3\n"with, comma",4\n',
    "columns.tsv": "label\ttext\n1\ta\n2\tb\n",
    "lines.txt": "l1\r\nl2\rl3\n\xa0\nl4",
    "paragraphs.txt": "p1 a\np1 b\n\n\n\np2\r\n\r\np3\rmid\r\r p4 \n",
}


@pytest.mark.parametrize("name", list(SOURCE_FILES))
def test_a_file_streams_the_posts_the_loader_reads_and_continues_from_any_record(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(SOURCE_FILES[name].encode("utf-8"))
    source = open_posts(path)
    records = list(source.records())
    assert [r.index for r in records] == list(range(len(records)))
    assert [r.text for r in records if r.problem is None] == load_posts_split(path)
    assert all(r.problem in (None, EMPTY) for r in records)
    for k, record in enumerate(records):  # a rerun reads on from where any record left off
        assert [(r.index, r.text, r.problem) for r in source.records(record.position)] == [
            (r.index, r.text, r.problem) for r in records[k + 1 :]
        ], k


def test_a_file_of_one_post_per_line_keeps_its_blank_lines_as_records(tmp_path):
    path = tmp_path / "posts.txt"
    path.write_text("first\n\n  \nsecond\u2028third\n", encoding="utf-8")  # str.splitlines breaks at U+2028 too
    records = list(Lines(path).records())
    assert [(r.text, r.problem) for r in records] == [
        ("first", None), ("", BLANK), ("  ", BLANK), ("second", None), ("third", None)
    ]
    assert [r.text for r in Lines(path).records(records[3].position)] == ["third"]


def test_the_bundled_split_streams_as_loaded():
    assert [r.text for r in open_posts(None, split="test").records() if r.problem is None] == load_posts_split(
        None, split="test")


@pytest.mark.parametrize("name, content, fragments", [
    ("posts.jsonl", b'{"text": "a"}\n{"text": "b"\n', ["posts.jsonl, line 2", "not valid JSON", "--skip-bad-lines"]),
    ("posts.jsonl", b'{"text": "a"}\n{"text": 5}\n', ["posts.jsonl, line 2: text field 'text' is not text: 5 (int)"]),
    ("posts.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n', ["is not UTF-8 text", "byte 0xe9 at byte offset 27 (line 2)"]),
    ("posts.jsonl", b'{"body": "a"}\n', ["text field 'text' not found", "['body']"]),
    ("posts.csv", b"text,label\na,1\nb,2,3\n", ["posts.csv, line 3", "3 field(s) where the header has 2"]),
    ("posts.csv", b'text,label\na,1\n"b,2\n', ["line 3", "a quote left open"]),
    ("posts.csv", b"text,label\n", ["no posts in", "header row but no posts"]),
    ("posts.txt", b"a\n\xff\n", ["posts.txt is not UTF-8 text", "byte offset 2 (line 2)"]),
    ("posts.txt", b"", ["no posts in", "the file is empty"]),
], ids=["jsonl-bad-json", "jsonl-not-text", "jsonl-not-utf8", "jsonl-no-field", "csv-extra-field",
        "csv-open-quote", "csv-header-only", "txt-not-utf8", "empty-file"])
def test_a_bad_record_is_the_loaders_error(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as raised:
        list(open_posts(path).records())
    for fragment in fragments:
        assert fragment in str(raised.value), str(raised.value)


def test_skipped_malformed_records_are_records_that_say_what_was_wrong(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b"\n\n[3]\n{"text": "c"}\n{"text": 7}\n')
    records = list(open_posts(path, on_bad_lines="skip").records())
    assert [(r.text, r.malformed) for r in records] == [("a", False), (None, True), (None, True), ("c", False),
                                                        (None, True)]
    assert [r.problem.split(":")[0] for r in records if r.malformed] == ["line 2", "line 4", "line 6"]
    assert records[-1].problem == "line 6: text field 'text' is not text: 7 (int)"


def test_windows_stop_after_max_posts_and_count_what_was_read():
    records = list(Texts(["a", "b", "c", "d", "e"]).records())
    counts = Counts()
    assert [(n, [r.text for r in w]) for n, w in windows(iter(records), 2, counts, max_posts=3)] == [
        (0, ["a", "b"]), (1, ["c"])]
    assert (counts.next_index, counts.posts) == (3, 3)


def test_interleaving_the_parts_of_two_processes_gives_the_input_order(tmp_path):
    lines = [f"{i}\n".encode() for i in range(23)]  # windows of 4: the last one short
    parts = [tmp_path / "rank-0.jsonl", tmp_path / "rank-1.jsonl"]
    for rank, part in enumerate(parts):
        part.write_bytes(b"".join(line for i, line in enumerate(lines) if (i // 4) % 2 == rank))
    _interleave(parts, tmp_path / "out.jsonl", 4, 23)
    assert (tmp_path / "out.jsonl").read_bytes() == b"".join(lines)
    with pytest.raises(RuntimeError, match="do not interleave"):
        _interleave(parts, tmp_path / "out.jsonl", 4, 24)


# ----------------------------------------------------------------------------------------------------------------
# Runs with an output file: one line per record, resumed after a crash, never mixed with another run


def test_score_to_file_writes_score_posts_records_one_line_per_input_record(model_dir, loaded, tmp_path):
    posts = corpus(120)
    data = write_jsonl(tmp_path / "posts.jsonl", posts)
    summary = score_to_file(model_dir, open_posts(data), tmp_path / "scores.jsonl", window=16)
    assert summary == {"output": str(tmp_path / "scores.jsonl"), "lines": 120, "posts": 117, "malformed": 0,
                       "done_before": 0, "already_complete": False}
    got = lines_of(tmp_path / "scores.jsonl")
    kept = [i for i, p in enumerate(posts) if p]
    expected = score_posts(*loaded, [posts[i] for i in kept])
    for index, record in zip(kept, expected):
        record["index"] = index  # the post's number in the input, empty posts counted
    assert_same_lines([got[i] for i in kept], expected)
    assert [got[i] for i in range(120) if not posts[i]] == [{"index": i, "text": "", "error": EMPTY}
                                                             for i in range(120) if not posts[i]]
    assert json.loads((progress_folder(tmp_path / "scores.jsonl") / "run.json").read_text())["complete"] is True
    assert sorted(p.name for p in progress_folder(tmp_path / "scores.jsonl").iterdir()) == ["run.json"]


class Crash(Exception):
    pass


def crashing_after(job, windows_done: int, calls: list):
    """`job`, raising Crash when asked for window number `windows_done` + 1 (the process dies mid-run)."""

    class Crashing:
        command, failed = job.command, job.failed

        def process(self, number, records):
            if len(calls) == windows_done:
                raise Crash
            calls.append(number)
            return job.process(number, records)

    return Crashing()


def test_a_run_killed_mid_window_resumes_where_it_committed(loaded, tmp_path):
    model, tokenizer = loaded
    data = write_jsonl(tmp_path / "posts.jsonl", corpus(100))
    output = tmp_path / "scores.jsonl"
    options = {"model": "tiny"}
    run_to_file("score", open_posts(data), tmp_path / "whole.jsonl", options, lambda: ScoreJob(model, tokenizer),
                window=8)
    calls = []
    with pytest.raises(Crash):
        run_to_file("score", open_posts(data), output, options,
                    lambda: crashing_after(ScoreJob(model, tokenizer), 5, calls), window=8)
    assert calls == [0, 1, 2, 3, 4] and len(lines_of(output)) == 40
    with open(output, "ab") as file:  # half a window written when the process died
        file.write(b'{"index": 40, "text": "cut sho')
    calls = []
    summary = run_to_file("score", open_posts(data), output, options,
                          lambda: crashing_after(ScoreJob(model, tokenizer), 99, calls), window=8)
    assert calls == list(range(5, 13)), "committed windows were done again, or some were skipped"
    assert summary["done_before"] == 40 and summary["lines"] == 100
    assert output.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_an_output_cut_below_its_committed_windows_is_refused(loaded, tmp_path):
    model, tokenizer = loaded
    data = write_jsonl(tmp_path / "posts.jsonl", corpus(40))
    output = tmp_path / "scores.jsonl"
    with pytest.raises(Crash):
        run_to_file("score", open_posts(data), output, {}, lambda: crashing_after(ScoreJob(model, tokenizer), 2, []),
                    window=8)
    output.write_bytes(output.read_bytes()[:100])  # someone edited it
    with pytest.raises(ValueError, match=r"is shorter \(100 bytes\) than the .* bytes its progress records"):
        run_to_file("score", open_posts(data), output, {}, lambda: ScoreJob(model, tokenizer), window=8)


def test_a_finished_run_is_not_redone_and_other_runs_are_refused(loaded, tmp_path):
    model, tokenizer = loaded
    data = write_jsonl(tmp_path / "posts.jsonl", corpus(30))
    output, made = tmp_path / "scores.jsonl", []

    def job():
        made.append(1)
        return ScoreJob(model, tokenizer)

    run_to_file("score", open_posts(data), output, {"stride": None}, job, window=8)
    before = output.read_bytes()
    summary = run_to_file("score", open_posts(data), output, {"stride": None}, job, window=8)
    assert summary["already_complete"] and summary["lines"] == 30 and summary["posts"] == 30 - 1 and len(made) == 1
    with pytest.raises(FileExistsError, match=r"belongs to another run .*stride \(None, now 16\).*--overwrite"):
        run_to_file("score", open_posts(data), output, {"stride": 16}, job, window=8)
    with pytest.raises(FileExistsError, match=r"window \(8, now 4\)"):
        run_to_file("score", open_posts(data), output, {"stride": None}, job, window=4)
    write_jsonl(data, corpus(31))  # the input changed
    with pytest.raises(FileExistsError, match=r"input \(head_sha256, mtime_ns, size\)"):
        run_to_file("score", open_posts(data), output, {"stride": None}, job, window=8)
    assert output.read_bytes() == before  # nothing was touched
    summary = run_to_file("score", open_posts(data), output, {"stride": None}, job, window=8, overwrite=True)
    assert summary["lines"] == 31 and len(lines_of(output)) == 31


def test_an_output_no_run_wrote_is_refused_but_a_run_that_did_nothing_starts_again(loaded, tmp_path):
    model, tokenizer = loaded
    data = write_jsonl(tmp_path / "posts.jsonl", corpus(10))
    output = tmp_path / "mine.jsonl"
    output.write_text("precious\n")
    with pytest.raises(FileExistsError, match="exists and no run of postformer records it"):
        run_to_file("score", open_posts(data), output, {}, lambda: ScoreJob(model, tokenizer))
    assert output.read_text() == "precious\n"
    output.unlink()

    def broken():
        raise ValueError("the model did not load")

    with pytest.raises(ValueError, match="did not load"):
        run_to_file("score", open_posts(data), output, {"stride": 3}, broken)
    summary = run_to_file("score", open_posts(data), output, {"stride": None}, lambda: ScoreJob(model, tokenizer))
    assert summary["lines"] == 10 and not summary["already_complete"]


def test_cli_score_with_output_resumes_reports_and_refuses_in_one_line(model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "posts.jsonl", corpus(40))
    argv = ["score", "--model", str(model_dir), "--data", str(data), "--output", str(tmp_path / "s.jsonl"),
            "--window-posts", "8", "--top", "2"]
    assert cli(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("39 posts scored; the 2 most unusual")
    assert cli(argv) == 0
    out, err = capsys.readouterr()
    assert out == first and "is complete already (40 lines): nothing was recomputed" in err
    assert cli([*argv, "--stride", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("postformer score: error: ") and "stride (None, now 8)" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert cli([*argv, "--stride", "8", "--overwrite"]) == 0


def test_cli_skip_bad_lines_gives_a_malformed_line_its_error_line(model_dir, tmp_path, capsys):
    data = tmp_path / "posts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_POSTS[:6]) + '{"text": "cut\n', "utf-8")
    output = tmp_path / "s.jsonl"
    argv = ["score", "--model", str(model_dir), "--data", str(data), "--output", str(output)]
    assert cli(argv) == 2
    assert "posts.jsonl, line 7: not valid JSON" in capsys.readouterr().err
    assert cli([*argv, "--skip-bad-lines", "--overwrite"]) == 0
    assert "warning: skipped 1 malformed line(s)" in capsys.readouterr().err
    records = lines_of(output)
    assert len(records) == 7 and records[6]["error"].startswith("line 7: not valid JSON")


def test_cli_classify_and_generate_write_one_line_per_input_line(model_dir, classifier_dir, loaded, tmp_path, capsys):
    from postformer.classification import classify_posts
    from postformer.generation import generate_posts

    posts = ["just watched the match #football", "", "loving the weather lol", "   ", LONG_POST]
    (tmp_path / "posts.txt").write_text("\n".join(posts) + "\n", encoding="utf-8")
    texts = [p for p in posts if p.strip()]
    assert cli(["classify", "--model", str(classifier_dir), "--file", str(tmp_path / "posts.txt"), "--output",
                str(tmp_path / "labels.jsonl")]) == 0
    assert "3 post(s) classified: 5 line(s)" in capsys.readouterr().out
    got = lines_of(tmp_path / "labels.jsonl")
    assert [got[1], got[3]] == [{"text": "", "error": BLANK}, {"text": "   ", "error": BLANK}]
    assert_same_lines([got[0], got[2], got[4]], [{"text": t, **r} for t, r in zip(texts, classify_posts(
        classifier_dir, texts))])

    (tmp_path / "prompts.txt").write_text("\n".join(posts[:4]) + "\n", encoding="utf-8")
    assert cli(["generate", "--model", str(model_dir), "--prompts-file", str(tmp_path / "prompts.txt"), "--greedy",
                "--max-new-tokens", "4", "--output", str(tmp_path / "generated.jsonl")]) == 0
    assert "2 prompt(s) continued: 4 line(s)" in capsys.readouterr().out
    got = lines_of(tmp_path / "generated.jsonl")
    assert [got[1], got[3]] == [{"prompt": "", "error": BLANK}, {"prompt": "   ", "error": BLANK}]
    expected = generate_posts(*loaded, texts[:2], max_new_tokens=4, do_sample=False)
    assert [got[0], got[2]] == [{"prompt": p, "generations": g} for p, g in zip(texts[:2], expected)]
    # a prompt that is too long stops the run with the error naming it, as before
    assert cli(["generate", "--model", str(model_dir), "--prompts-file", str(tmp_path / "posts.txt"), "--greedy",
                "--max-new-tokens", "4", "--output", str(tmp_path / "g2.jsonl")]) == 2
    assert "the prompt on line 5 of" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# evaluate, streamed: the numbers of the implementation it replaced


@torch.no_grad()
def reference_evaluate(model, tokenizer, texts, batch_size=8, stride=None):
    """The in-memory `evaluate_posts` of Postformer 0.3.0, kept verbatim in substance: every post's windows sorted
    by length over the whole input, batched, losses summed per post in input order."""
    context = model.config.max_position_embeddings
    stride = context // 2 if stride is None else stride
    encoded = [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    windows_ = []
    for post, ids in enumerate(encoded):
        if len(ids) <= context:
            windows_.append((post, ids, 1))
            continue
        begin, scored_to = 0, 1
        while scored_to < len(ids):
            end = min(begin + context, len(ids))
            windows_.append((post, ids[begin:end], scored_to - begin))
            scored_to, begin = end, end - (context - stride)
    order = sorted(range(len(windows_)), key=lambda i: len(windows_[i][1]))
    found = [None] * len(windows_)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        batch = [windows_[i] for i in order[start : start + batch_size]]
        width = max(len(w[1]) for w in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")
        for row, (index, (_, ids, first)) in enumerate(zip(order[start : start + batch_size], batch)):
            found[index] = losses[row, first - 1 : len(ids) - 1]
    per_post = [[] for _ in encoded]
    for (post, _, _), losses in zip(windows_, found):
        per_post[post].append(losses)
    total = sum(float(torch.cat(parts).double().sum()) for parts in per_post)
    tokens = sum(len(torch.cat(parts)) for parts in per_post)
    characters = sum(len(text) + 1 for text in texts)
    return {"loss": total / tokens, "perplexity": math.exp(total / tokens),
            "bits_per_character": total / math.log(2) / characters, "posts": len(texts), "tokens": tokens,
            "characters": characters}


def assert_same_metrics(got: dict, expected: dict) -> None:
    assert {k: got[k] for k in ("posts", "tokens", "characters")} == {
        k: expected[k] for k in ("posts", "tokens", "characters")}
    for key in ("loss", "perplexity", "bits_per_character"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key


def test_evaluate_streamed_gives_the_metrics_of_the_in_memory_implementation(loaded, tmp_path):
    posts = corpus(150)
    data = write_jsonl(tmp_path / "posts.jsonl", posts)
    expected = reference_evaluate(*loaded, [p for p in posts if p])
    for window in (7, 1024):
        assert_same_metrics(evaluate_source(*loaded, open_posts(data), window=window), expected)
    assert_same_metrics(evaluate_posts(*loaded, [p for p in posts if p]), expected)
    assert_same_metrics(evaluate_source(*loaded, open_posts(data), max_posts=20),
                        reference_evaluate(*loaded, [p for p in posts if p][:20]))


def test_cli_evaluate_on_the_bundled_split_gives_the_old_numbers(model_dir, loaded, capsys):
    expected = reference_evaluate(*loaded, load_posts_split(None, split="validation")[:200])
    assert cli(["evaluate", "--model", str(model_dir), "--max-posts", "200", "--window-posts", "64"]) == 0
    assert_same_metrics(json.loads(capsys.readouterr().out), expected)


# ----------------------------------------------------------------------------------------------------------------
# Real processes: SIGKILL mid-run, then the same command again; two processes under torchrun


@pytest.fixture(scope="module")
def classifier_dir(model_dir, tmp_path_factory):
    """A classifier on the tiny model's body (a random head: labels need not be right to be reproducible)."""
    from postformer.classification import init_classifier

    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    model, tokenizer = init_classifier(model_dir, ["news", "fun", "rant"])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "TORCHELASTIC_"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK"):
        env.pop(name, None)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep), **extra)
    return env


def _start(command: list[str], tmp_path: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(process: subprocess.Popen, timeout: int = 300) -> str:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        out, err = process.stdout.read(), process.stderr.read()
        pytest.fail(f"timed out (a hang?)\n{out[-2000:]}\n{err[-4000:]}")
    assert process.returncode == 0, f"exit status {process.returncode}\n{out[-2000:]}\n{err[-6000:]}"
    return err


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the process and every process under it (torchrun starts its workers in sessions of their own)."""
    import psutil

    try:
        victims = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    psutil.wait_procs(victims, timeout=30)


def _kill_after(process: subprocess.Popen, progress: Path, windows: int, timeout: float = 240) -> None:
    """SIGKILL the process (and its children) once its progress files record `windows` committed windows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = 0
        for state in progress.glob("rank-*.json"):
            try:
                done += json.loads(state.read_text())["windows"]
            except (OSError, ValueError):
                pass  # between the rename and the read: try again
        if done >= windows:
            _kill(process)
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.communicate()}")
        time.sleep(0.05)
    _kill(process)
    pytest.fail("no progress recorded in time")


POSTFORMER = [sys.executable, "-m", "postformer"]


def _command(name: str, model_dir, classifier_dir, data_jsonl: Path, data_txt: Path, output: Path) -> list[str]:
    common = ["--output", str(output), "--window-posts", "16", "--quiet"]
    if name == "score":
        return ["score", "--model", str(model_dir), "--data", str(data_jsonl), "--top", "3", *common]
    if name == "classify":
        return ["classify", "--model", str(classifier_dir), "--file", str(data_txt), *common]
    return ["generate", "--model", str(model_dir), "--prompts-file", str(data_txt), "--greedy", "--max-new-tokens",
            "6", *common]


def _inputs(tmp_path: Path, count: int) -> tuple[Path, Path]:
    posts = [p if p != LONG_POST else p[:60] for p in corpus(count)]  # prompts must leave room to generate
    data_txt = tmp_path / "posts.txt"
    data_txt.write_text("\n".join(posts) + "\n", encoding="utf-8")
    return write_jsonl(tmp_path / "posts.jsonl", posts), data_txt


@pytest.mark.slow
@pytest.mark.parametrize("name", ["score", "classify", "generate"])
def test_a_run_killed_with_sigkill_resumes_to_the_output_of_an_uninterrupted_run(model_dir, classifier_dir, tmp_path,
                                                                                 name):
    data_jsonl, data_txt = _inputs(tmp_path, 300)
    whole, killed = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    assert cli(_command(name, model_dir, classifier_dir, data_jsonl, data_txt, whole)) == 0
    # 19 windows of 16 posts; slowed down to 0.3 s a window so that the kill lands mid-run
    process = _start(POSTFORMER + _command(name, model_dir, classifier_dir, data_jsonl, data_txt, killed), tmp_path,
                     POSTFORMER_TEST_WINDOW_DELAY="0.3")
    _kill_after(process, progress_folder(killed), windows=3)
    state = json.loads((progress_folder(killed) / "rank-0.json").read_text())
    run = json.loads((progress_folder(killed) / "run.json").read_text())
    assert not state["finished"] and not run["complete"] and 48 <= state["lines"] < 300
    assert killed.stat().st_size >= state["bytes"]  # perhaps a window written after the last commit
    err = _finish(_start(POSTFORMER + _command(name, model_dir, classifier_dir, data_jsonl, data_txt, killed),
                         tmp_path))
    assert f"resumed {killed} after the {state['lines']} line(s)" in err
    assert_same_lines(lines_of(killed), lines_of(whole))


TORCHRUN_SCRIPT = """
import sys
from postformer.cli import main
for argv in map(str.split, sys.argv[1:]):
    code = main(argv)
    if code:
        sys.exit(code)
"""


@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_one_process_output_and_resume_after_sigkill(
        model_dir, classifier_dir, loaded, tmp_path):
    data_jsonl, data_txt = _inputs(tmp_path, 200)
    (tmp_path / "script.py").write_text(TORCHRUN_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    launch = ([str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--standalone", "--nproc_per_node", "2"]
    names = ["score", "classify", "generate"]
    for name in names:
        assert cli(_command(name, model_dir, classifier_dir, data_jsonl, data_txt, tmp_path / f"{name}-1.jsonl")) == 0
    runs = [" ".join(_command(name, model_dir, classifier_dir, data_jsonl, data_txt, tmp_path / f"{name}-2.jsonl"))
            for name in names]
    runs.append(f"evaluate --model {model_dir} --data {data_jsonl} --window-posts 16 --output {tmp_path}/metrics.json "
                "--quiet")
    _finish(_start(launch + [str(tmp_path / "script.py"), *runs], tmp_path))
    for name in names:
        assert_same_lines(lines_of(tmp_path / f"{name}-2.jsonl"), lines_of(tmp_path / f"{name}-1.jsonl"))
        assert sorted(p.name for p in progress_folder(tmp_path / f"{name}-2.jsonl").iterdir()) == ["run.json"]
    posts = [r.text for r in open_posts(data_jsonl).records() if r.problem is None]
    assert_same_metrics(json.loads((tmp_path / "metrics.json").read_text()), reference_evaluate(*loaded, posts))

    # Killed with SIGKILL mid-run (torchrun and both processes), then launched again: the 1-process output.
    killed = tmp_path / "score-killed.jsonl"
    run = " ".join(_command("score", model_dir, classifier_dir, data_jsonl, data_txt, killed))
    process = _start(launch + [str(tmp_path / "script.py"), run], tmp_path, POSTFORMER_TEST_WINDOW_DELAY="0.3")
    _kill_after(process, progress_folder(killed), windows=3)
    progress = {p.name: p.read_bytes() for p in progress_folder(killed).iterdir()}
    time.sleep(1)
    assert {p.name: p.read_bytes() for p in progress_folder(killed).iterdir()} == progress, "a process lived on"
    assert not killed.exists() and "rank-1.jsonl" in progress  # the parts are merged only at the end
    err = _finish(_start(launch + [str(tmp_path / "script.py"), run], tmp_path))
    assert f"resumed {killed} after the" in err
    assert_same_lines(lines_of(killed), lines_of(tmp_path / "score-1.jsonl"))
