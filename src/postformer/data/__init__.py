"""Posts corpora: the bundled sample and `load_posts`, which reads JSONL, CSV, plain text or a saved
`datasets` folder into a `datasets.DatasetDict` with one "text" column and a validation split."""

import codecs
import csv
import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError
from pandas.errors import ParserError
from pyarrow import ArrowException

BUNDLED_POSTS = Path(__file__).resolve().parent / "posts"
ON_BAD_LINES = ("error", "skip")


class SkippedLinesWarning(UserWarning):
    """Issued when `load_posts(..., on_bad_lines="skip")` skipped malformed records; the message names the file,
    how many were skipped and the first few line numbers with what was wrong."""


_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".txt": "text", ".text": "text"}
STREAMING_VALIDATION_POSTS = 200
_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation", "test": "test"}


def _format_of(path: Path) -> str:
    return _FORMATS.get(path.suffix.lower(), "text")


def _load_files(files: dict[str, Path], streaming: bool = False, on_bad_lines: str = "error"):
    """Load data files of one format, one per split. A file that cannot be read raises ValueError naming the
    file and what is wrong (the line of malformed JSON or CSV, the byte offset of text that is not UTF-8);
    on_bad_lines="skip" skips malformed JSON lines / CSV rows instead, with a SkippedLinesWarning."""
    _check_on_bad_lines(on_bad_lines)
    formats = {_format_of(p) for p in files.values()}
    if len(formats) > 1:
        raise ValueError(f"data files mix formats {sorted(formats)}: {sorted(map(str, files.values()))}")
    builder = formats.pop()
    kwargs = {}
    if builder == "csv" and all(p.suffix.lower() == ".tsv" for p in files.values()):
        kwargs["sep"] = "\t"
    if builder == "text":
        # One post per line, or posts separated by blank lines when the file has any.
        blank_lines = any("\n\n" in p.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n") for p in files.values())
        kwargs["sample_by"] = "paragraph" if blank_lines else "line"
    if on_bad_lines == "skip" and builder in ("json", "csv"):
        return _load_skipping_bad_records(files, builder, kwargs.get("sep", ","), streaming)
    if builder == "json":  # pyarrow's JSON reader lets bytes that are not UTF-8 through, to fail when read
        for path in files.values():
            problem = _undecodable(path)
            if problem:
                raise ValueError(problem)
    data_files = {split: str(path) for split, path in files.items()}
    try:
        return datasets.load_dataset(builder, data_files=data_files, streaming=streaming, **kwargs)
    except (DatasetGenerationError, ValueError, ArrowException, RecursionError) as error:  # no file, no line
        for path in files.values():
            _diagnose(path, builder, kwargs.get("sep", ","), error)
        raise ValueError(f"cannot read posts from {', '.join(map(str, files.values()))}: {_cause(error)}") from error


# What the loaders raise on a malformed file (our own errors are plain ValueErrors, never these).
_PARSER_ERRORS = (DatasetGenerationError, ArrowException, UnicodeDecodeError, ParserError, json.JSONDecodeError,
                  RecursionError)


@contextmanager
def _explaining_stream_errors(files: dict[str, Path]):
    """Turn a parser's error raised while a streamed file is read into the ValueError `_load_files` gives."""
    try:
        yield
    except _PARSER_ERRORS as error:
        if not files:
            raise
        builder = _format_of(next(iter(files.values())))
        sep = "\t" if all(p.suffix.lower() == ".tsv" for p in files.values()) else ","
        for path in files.values():
            _diagnose(path, builder, sep, error)
        raise ValueError(f"cannot read posts from {', '.join(map(str, files.values()))}: {_cause(error)}") from error


def _check_on_bad_lines(on_bad_lines) -> None:
    if on_bad_lines not in ON_BAD_LINES:
        raise ValueError(f"on_bad_lines must be one of {ON_BAD_LINES}, got {on_bad_lines!r}")


def _cause(error: BaseException) -> str:
    """The innermost message of a chained error (datasets wraps the parser's error in its own)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    if isinstance(error, RecursionError):
        return f"a record is nested too deeply to read ({error})"
    return " ".join(str(error).split()) or type(error).__name__


def _undecodable(path: Path, chunk_size: int = 1 << 20) -> str | None:
    """None when the file is UTF-8 text; else a sentence naming the first undecodable byte, its offset and line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with open(path, "rb") as file:
        while True:
            chunk = file.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                data = error.object  # bytes held back from the previous chunk (never a newline), then this chunk
                bad = offset - (len(data) - len(chunk)) + error.start
                line = lines + data[: error.start].count(b"\n")
                hint = " (it starts with a UTF-16 byte-order mark: save it as UTF-8)" if bad == 0 and data[:2] in (
                    b"\xff\xfe", b"\xfe\xff") else ""
                return (f"{path} is not UTF-8 text: byte 0x{data[error.start]:02x} at byte offset {bad} (line {line}) "
                        f"cannot be decoded ({error.reason}){hint}; convert the file to UTF-8")
            if not chunk:
                return None
            offset += len(chunk)
            lines += chunk.count(b"\n")


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a UTF-8 file; FileNotFoundError, or ValueError naming the file and the first byte that is not
    UTF-8 (its offset and line), instead of a bare UnicodeDecodeError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(_undecodable(path) or f"{path} is not UTF-8 text") from None


def _diagnose(path: Path, builder: str, sep: str, error: BaseException) -> None:
    """Raise ValueError saying what is wrong with `path`, a file the loader failed on; return when nothing is
    found (the caller then reports the loader's own message)."""
    problem = _undecodable(path)
    if problem:
        raise ValueError(problem)
    if builder == "json":
        for line, problem in _bad_json_lines(path, limit=1):
            raise ValueError(f"{path}, line {line}: {problem}; fix or remove the line, or skip malformed lines "
                             "(on_bad_lines='skip', --skip-bad-lines)")
    if builder == "csv":
        if "corresponds to no data" in str(error):
            raise ValueError(f"no posts in {path}: the file has a header row but no posts")
        cause = _cause(error).removeprefix("Error tokenizing data. C error: ")
        raise ValueError(f"{path}: malformed {'TSV' if sep == chr(9) else 'CSV'}: {cause} (a row with another number "
                         "of fields than the header, or an unclosed quote); fix the row, or skip malformed rows "
                         "(on_bad_lines='skip', --skip-bad-lines)")
    if "corresponds to no data" in str(error):
        raise ValueError(f"no posts in {path}: it holds no records")


def _is_json_lines(path: Path) -> bool:
    """JSON lines, not one JSON document (a .json file holding an array or an object)."""
    with open(path, "rb") as file:
        start = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.suffix.lower() == ".jsonl" or not start.startswith((b"[", b"{")):
        return True
    try:
        json.loads(path.read_bytes())
    except ValueError:  # not one document: JSON lines (perhaps with a bad one), unless it starts with "["
        return not start.startswith(b"[")
    return False


def _bad_json_lines(path: Path, limit: int | None = None):
    """(line number, problem) of each non-blank line that is not a JSON object, at most `limit` of them."""
    if not _is_json_lines(path):
        return
    found = 0
    for number, line, record, problem in _json_lines(path):
        if problem:
            yield number, problem
            found += 1
            if limit is not None and found >= limit:
                return


def _json_lines(path: Path):
    """(line number, raw line, record or None, problem or None) for each non-blank line of a JSON lines file."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, raw, None, f"not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
                continue
            try:
                record = json.loads(text)
                surrogate = next((m.group() for m in map(_LONE_SURROGATE.search, _strings(record)) if m), None)
            except json.JSONDecodeError as error:
                snippet = text.strip()
                snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
                yield number, raw, None, f"not valid JSON ({error.msg} at column {error.colno}): {snippet!r}"
                continue
            except RecursionError:
                yield number, raw, None, "JSON nested too deeply to read"
                continue
            if not isinstance(record, dict):
                yield number, raw, None, (f"expected a JSON object such as {{\"text\": \"...\"}}, got "
                                          f"{type(record).__name__} {text.strip()[:40]!r}")
                continue
            if surrogate is not None:  # JSON allows the escape; pyarrow, the tokenizer and UTF-8 do not
                yield number, raw, None, (f"a string holds the escape \\u{ord(surrogate):04x}, a lone surrogate "
                                          "(half of an emoji cut in two), which is not text")
                continue
            yield number, raw, record, None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(value):
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _csv_records(path: Path, sep: str):
    """(line number, row, problem or None) for the header row, then each row of a CSV file; a row is malformed
    when its number of fields differs from the header's."""
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter=sep)
        header = next(reader, None)
        if header is None:
            return
        yield 1, header, None
        line = reader.line_num
        for row in reader:
            first, line = line + 1, reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                quote = f" (a quote left open runs to line {line})" if line > first else ""
                yield first, row, f"{len(row)} field(s) where the header has {len(header)}{quote}"
                continue
            yield first, row, None


def _load_skipping_bad_records(files: dict[str, Path], builder: str, sep: str, streaming: bool):
    """on_bad_lines="skip": copy each file's well-formed JSON lines / CSV rows to a temporary file, warn about the
    others, and load the copy as the file itself would be loaded (into memory)."""
    import tempfile

    splits = {}
    for split, path in files.items():
        if builder == "csv":
            problem = _undecodable(path)
            if problem:
                raise ValueError(problem)
        if builder == "json" and not _is_json_lines(path):  # one JSON document: nothing line-wise to skip
            splits[split] = _load_files({split: path})[split]
            continue
        with tempfile.TemporaryDirectory(prefix="postformer-") as folder:
            clean = Path(folder) / path.name
            bad, good = [], 0
            with open(clean, "w", encoding="utf-8", newline="") as out:
                writer = csv.writer(out, delimiter=sep)
                if builder == "json":
                    rows = ((number, None if problem else raw.decode("utf-8").rstrip("\r\n") + "\n", problem)
                            for number, raw, _, problem in _json_lines(path))
                else:
                    rows = _csv_records(path, sep)
                for number, row, problem in rows:
                    if problem:
                        bad.append((number, problem))
                        continue
                    if builder == "json":
                        out.write(row)
                    else:
                        writer.writerow(row)
                    good += 1
            if bad:
                shown = "; ".join(f"line {number}: {problem}" for number, problem in bad[:3])
                more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
                warnings.warn(f"skipped {len(bad)} malformed line(s) of {path} (on_bad_lines='skip'): {shown}{more}",
                              SkippedLinesWarning, stacklevel=4)
            if good <= (builder == "csv"):  # CSV: the header row alone holds no posts
                raise ValueError(f"no posts in {path}: none of its {len(bad)} line(s) is a well-formed record")
            options = {"sep": sep} if builder == "csv" else {}
            try:
                splits[split] = datasets.load_dataset(builder, data_files={split: str(clean)}, keep_in_memory=True,
                                                      cache_dir=str(Path(folder) / "cache"), **options)[split]
            except (DatasetGenerationError, ValueError, ArrowException, RecursionError) as error:
                raise ValueError(f"cannot read posts from {path}: {_cause(error)}") from error
    if streaming:
        return datasets.IterableDatasetDict({split: d.to_iterable_dataset() for split, d in splits.items()})
    return datasets.DatasetDict(splits)


def _split_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        split = _SPLIT_NAMES.get(path.stem.lower())
        if path.is_file() and split and path.suffix.lower() in _FORMATS:
            files[split] = path
    return files


def load_posts(
    data: str | Path | None = None,
    text_field: str = "text",
    validation_fraction: float = 0.05,
    seed: int = 0,
    streaming: bool = False,
    on_bad_lines: str = "error",
) -> datasets.DatasetDict:
    """Read posts into a DatasetDict with splits "train", "validation" (and "test" when the data has one).

    `data` is a .jsonl/.json/.csv/.tsv/.txt file, a folder of such files named train/validation/test, or a
    folder written by `datasets`' `save_to_disk`; None reads the bundled sample. `text_field` names the column
    holding the post (plain text files have only "text"). Empty posts are dropped. When the data has no
    validation split, a deterministic `validation_fraction` of train (shuffled with `seed`) becomes one.

    streaming=True, for corpora that do not fit in memory: the train split is a `datasets.IterableDataset` read
    as it is consumed; the validation split is held in memory (without one in the data, the first
    STREAMING_VALIDATION_POSTS posts of train become it and are skipped from train).

    Bad input is a ValueError naming the file and the problem: a line of a JSON lines file that is not a JSON
    object (with its line number), a CSV row with another number of fields than the header or an unclosed
    quote, bytes that are not UTF-8 (with their offset and line), a post that is not text (a number, a list),
    an empty file or no non-empty post; a missing file or folder is a FileNotFoundError. on_bad_lines="skip"
    (only when asked for) skips malformed JSON lines, CSV rows and non-text posts instead, and issues a
    SkippedLinesWarning giving their count and first line numbers; the records are then parsed in Python and
    held in memory, also with streaming=True. Text that is not UTF-8 is an error in both modes (except a
    JSON line, skipped as malformed, as is one whose strings hold an escaped lone surrogate "\\ud83d", half of an
    emoji). With streaming=True, what is read here (the first records) is checked the same way; a malformed
    record further into the file surfaces while training as the parser's own error, and posts that are not
    text are dropped silently.
    """
    _check_on_bad_lines(on_bad_lines)
    path = BUNDLED_POSTS if data is None else Path(data)
    if not path.exists():
        raise FileNotFoundError(f"posts data not found: {path}")

    if path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json")):
        files = {}
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict(train=loaded)
        if streaming:
            loaded = datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in loaded.items()})
    elif path.is_dir():
        files = _split_files(path)
        if not files:
            raise FileNotFoundError(
                f"no posts files in folder {path}: expected train/validation/test files ending in "
                f"{', '.join(sorted(_FORMATS))}, or a folder written by datasets' save_to_disk"
            )
        loaded = _load_files(files, streaming, on_bad_lines)
    else:
        if path.stat().st_size == 0:
            raise ValueError(f"no posts in {path}: the file is empty")
        files = {"train": path}
        loaded = _load_files(files, streaming, on_bad_lines)

    # Streamed files are read as they are consumed: a parser's error in the first records, read here, is reported
    # as for loaded files (a malformed line far into a large streamed file surfaces while training, unexplained).
    with _explaining_stream_errors(files if streaming else {}):
        if "train" not in loaded:
            raise ValueError(f"no train split in {path}: found splits {sorted(loaded)}")
        posts = datasets.IterableDatasetDict() if streaming else datasets.DatasetDict()
        for split, dataset in loaded.items():
            posts[_SPLIT_NAMES.get(split, split)] = _text_column(dataset, path, split, text_field, on_bad_lines)
        if next(iter(posts["train"]), None) is None:
            raise ValueError(f"no posts in {path}: every post of the train split is empty")

        if streaming:
            if "validation" not in posts:
                posts["validation"] = posts["train"].take(STREAMING_VALIDATION_POSTS)
                posts["train"] = posts["train"].skip(STREAMING_VALIDATION_POSTS)
            posts["validation"] = datasets.Dataset.from_list(list(posts["validation"]))
        elif "validation" not in posts:
            if len(posts["train"]) < 2:
                raise ValueError(f"too few posts in {path} to hold out a validation split: {len(posts['train'])}")
            split = posts["train"].train_test_split(test_size=validation_fraction, seed=seed)
            posts["train"], posts["validation"] = split["train"], split["test"]
    return posts


def _text_column(dataset, path: Path, split: str, text_field: str, on_bad_lines: str = "error"):
    """The dataset reduced to a "text" column of non-empty posts; ValueError when the field is missing or holds
    values that are not text (numbers, lists, ...; skipped with a warning when on_bad_lines="skip")."""
    field = "text" if _is_plain_text(path) else text_field
    columns = dataset.column_names
    if columns is None:  # a streamed file: its columns are those of its first record
        columns = list(next(iter(dataset), {}).keys())
    if field not in columns:
        raise ValueError(f"text field {text_field!r} not found in {path} ({split} split); its columns are {columns}")
    dataset = dataset.select_columns([field])
    if field != "text":
        dataset = dataset.rename_column(field, "text")
    features = getattr(dataset, "features", None)
    if isinstance(dataset, datasets.Dataset) and features is not None and features["text"] != datasets.Value("string"):
        # Rare (a number or list among the posts of a JSON file, a CSV column of numbers): find the culprits.
        not_text = [(i, t) for i, t in enumerate(dataset["text"]) if t is not None and not isinstance(t, str)]
        if not_text:
            index, value = not_text[0]
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            first = f"the first in record {index + 1}: {shown} ({type(value).__name__})"
            if on_bad_lines != "skip":
                raise ValueError(
                    f"text field {text_field!r} of {path} ({split} split) is not text in {len(not_text)} record(s), "
                    f"{first}; posts must be strings (skip such records with on_bad_lines='skip', --skip-bad-lines)"
                )
            warnings.warn(f"skipped {len(not_text)} record(s) of {path} ({split} split) whose {text_field!r} is not "
                          f"text, the first: {shown} ({type(value).__name__}) (on_bad_lines='skip')",
                          SkippedLinesWarning, stacklevel=3)
    return dataset.filter(lambda text: isinstance(text, str) and text.strip() != "", input_columns="text")


def load_posts_split(
    data: str | Path | None = None, text_field: str = "text", split: str = "validation", on_bad_lines: str = "error"
) -> list[str]:
    """The posts to evaluate or score, as a list: every post of a single file, or one split of a folder (or of
    the bundled sample, when `data` is None). Empty posts are dropped; no posts at all is a ValueError. Bad
    input and `on_bad_lines` as for `load_posts`."""
    _check_on_bad_lines(on_bad_lines)
    path = BUNDLED_POSTS if data is None else Path(data)
    if path.is_file():
        if path.stat().st_size == 0:
            raise ValueError(f"no posts in {path}: the file is empty")
        loaded = _load_files({"train": path}, on_bad_lines=on_bad_lines)["train"]
        dataset = _text_column(loaded, path, "train", text_field, on_bad_lines)
    else:
        posts = load_posts(path, text_field, on_bad_lines=on_bad_lines)
        wanted = _SPLIT_NAMES.get(split, split)
        if wanted not in posts:
            raise ValueError(f"no {split!r} split in {path}: its splits are {sorted(posts)}")
        dataset = posts[wanted]
    if len(dataset) == 0:
        raise ValueError(f"no posts in {path}: every post is empty")
    return dataset["text"]


def _is_plain_text(path: Path) -> bool:
    if path.is_file():
        return _format_of(path) == "text"
    files = _split_files(path) if path.is_dir() else {}
    return bool(files) and all(_format_of(p) == "text" for p in files.values())


__all__ = ["BUNDLED_POSTS", "ON_BAD_LINES", "SkippedLinesWarning", "load_posts", "load_posts_split", "read_text"]
