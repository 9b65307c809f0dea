"""Reading data files of one format (JSON lines or JSON, CSV or TSV, plain text) with `datasets`, one file per
split, into a `datasets.DatasetDict` with every column of the file.

A file `datasets` cannot read is a ValueError naming the file and what is wrong with it (found by
`postformer.data.diagnosis`); on_bad_lines="skip" keeps the well-formed records instead and says what was
skipped in a SkippedLinesWarning."""

import csv
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError
from pandas.errors import ParserError
from pyarrow import ArrowException

from .diagnosis import _cause, _csv_records, _diagnose, _is_json_lines, _json_lines, _undecodable

ON_BAD_LINES = ("error", "skip")


class SkippedLinesWarning(UserWarning):
    """Issued when `load_posts(..., on_bad_lines="skip")` skipped malformed records; the message names the file,
    how many were skipped and the first few line numbers with what was wrong."""


_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".txt": "text", ".text": "text"}


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
