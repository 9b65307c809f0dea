"""Posts read one record at a time, for inputs larger than memory, with a position to continue from after any record.

A source yields `Record`s in input order: one per JSON line (blank lines are not records), CSV/TSV row, line of a
plain text file (or paragraph, when the file has blank lines, as `postformer.data.load_posts` reads it), row of a
saved `datasets` split, or post given in a list. Each record says where reading continues after it
(`Record.position`, small and JSON-able): a rerun after a crash seeks there instead of reading the input again.
A file position is the byte offset of a line start, the number of records to pass from there (for the rare line
that holds several: a lone "\\r" breaks lines in plain text, as in `datasets`) and the line and record numbers
there (for messages and output).

What a record holds mirrors what the in-memory loaders keep or refuse: an empty post (blank, null, a missing field)
is a record without a post (`problem` EMPTY), where the loaders drop it; a malformed record (not JSON, a CSV row
with another number of fields, a post that is not text) is an error naming the file and the line, as in the
loaders, or with on_bad_lines="skip" a record without a post whose `problem` says what was wrong and where. Bytes
that are not UTF-8 are an error in both modes, except in a JSON line, which is skipped as malformed, as the loaders
do.
"""

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .._text import check_text
from ..data.diagnosis import _is_json_lines, _json_line, _not_utf8
from ..data.reading import _check_on_bad_lines, _format_of

EMPTY = "empty post"
BLANK = "blank line"  # in a file of one post (or prompt) per line
_BOM = b"\xef\xbb\xbf"
_SKIP_HINT = "skip malformed lines (on_bad_lines='skip', --skip-bad-lines)"


@dataclass
class Record:
    """One record of the input. index: its number in the input, from 0 (output lines are matched to it).
    text: the post (what there is of it, perhaps None, when the record holds none); problem: None for a post, else
    why there is none (EMPTY, or what is malformed, and where); malformed: a malformed record skipped under
    on_bad_lines="skip" (counted in a warning), not an empty post."""

    index: int
    text: str | None
    problem: str | None = None
    malformed: bool = False
    position: dict = field(default_factory=dict)


def file_identity(path: Path, head_bytes: int = 1 << 20) -> dict:
    """What tells a file apart from an edited or replaced one: its path, size and modification time, and a hash of
    its first MiB (a copy given the old time, or a file rewritten within the clock's resolution, differs there)."""
    stat = path.stat()
    with open(path, "rb") as file:
        head = hashlib.sha256(file.read(head_bytes)).hexdigest()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": head}


class Source:
    """Records of one input. `name` names it in messages; `size` is its size in bytes when it is a file (for a
    progress display, with `Record.position["offset"]`); `records(position)` yields the records from the start,
    or from the `position` of a record yielded before (by this process or an earlier one)."""

    name: str = "the input"
    size: int | None = None

    def identity(self) -> dict:
        raise NotImplementedError

    def records(self, position: dict | None = None) -> Iterator[Record]:
        raise NotImplementedError

    def no_posts(self) -> str:
        """The error for an input that holds no post at all."""
        return f"no posts in {self.name}: every post is empty"


class Texts(Source):
    """Posts given as a list (command-line arguments, standard input), checked up front as before: each must be
    text (a lone surrogate is not), and not blank unless `allow_empty` (an empty prompt starts a new post).
    Numbered in messages from `first` (prompts are numbered from 1, posts from 0)."""

    def __init__(self, texts: list[str], what: str = "post", first: int = 0, allow_empty: bool = False,
                 no_posts: str | None = None):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{what}s must be a list of strings")
        if not allow_empty:
            empty = [i for i, t in enumerate(texts) if not t.strip()]
            if empty:
                raise ValueError(f"{len(empty)} empty {what}(s) (first at index {empty[0]}): every {what} needs "
                                 "some text")
        for number, text in enumerate(texts, start=first):
            check_text(text, f"{what} {number}")
        self.texts, self.what, self.name = list(texts), what, f"the {what}s given"
        self._no_posts = no_posts or f"no {what}s given"

    def identity(self) -> dict:
        digest = hashlib.sha256(json.dumps(self.texts, ensure_ascii=False).encode("utf-8"))
        return {"texts": len(self.texts), "sha256": digest.hexdigest()}

    def records(self, position=None):
        for index in range((position or {}).get("row", 0), len(self.texts)):
            yield Record(index, self.texts[index], position={"row": index + 1})

    def no_posts(self) -> str:
        return self._no_posts


class Rows(Source):
    """The `column` of a `datasets.Dataset` (a saved split, memory-mapped: not held in memory), row by row."""

    def __init__(self, dataset, column: str, name: str, identity: dict, on_bad_lines: str = "error",
                 field_name: str | None = None):
        _check_on_bad_lines(on_bad_lines)
        if column not in dataset.column_names:
            raise ValueError(f"text field {field_name or column!r} not found in {name}; its columns are "
                             f"{dataset.column_names}")
        self.dataset, self.column, self.name, self._identity = dataset, column, name, identity
        self.on_bad_lines, self.field_name = on_bad_lines, field_name or column

    def identity(self) -> dict:
        return self._identity

    def records(self, position=None, batch: int = 1000):
        start = (position or {}).get("row", 0)
        for first in range(start, len(self.dataset), batch):  # slices: one Arrow read per `batch` rows
            for index, value in enumerate(self.dataset[first : first + batch][self.column], start=first):
                after = {"row": index + 1}
                if value is None or isinstance(value, str):
                    yield _post(index, value, after)
                    continue
                problem = f"record {index + 1}: {_not_text(self.field_name, value)}"
                if self.on_bad_lines == "error":
                    raise ValueError(f"{self.name}, {problem}; posts must be strings (skip such records with "
                                     "on_bad_lines='skip', --skip-bad-lines)")
                yield Record(index, None, problem, True, after)


def _post(index: int, text: str | None, position: dict) -> Record:
    if text is None or not text.strip():
        return Record(index, text, EMPTY, position=position)
    return Record(index, text, position=position)


def _not_text(field_name: str, value) -> str:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"text field {field_name!r} is not text: {shown} ({type(value).__name__})"


class _File(Source):
    """A file read as bytes, line by line, so that positions are exact byte offsets. Subclasses turn each line
    (`_split`) into records."""

    def __init__(self, path: Path, on_bad_lines: str = "error"):
        _check_on_bad_lines(on_bad_lines)
        self.path, self.name, self.on_bad_lines = Path(path), str(path), on_bad_lines
        self.size = self.path.stat().st_size

    def identity(self) -> dict:
        return file_identity(self.path)

    def _raw_lines(self, offset: int, line: int):
        """(line number, offset of the line's first byte, offset after it, its bytes) from byte `offset`. The first
        line's UTF-8 byte-order mark is dropped (it is no part of the first post); offsets still count it."""
        with open(self.path, "rb") as file:
            file.seek(offset)
            for raw in file:
                start, offset = offset, offset + len(raw)
                if start == 0 and raw.startswith(_BOM):
                    yield line, start + len(_BOM), offset, raw[len(_BOM) :]
                else:
                    yield line, start, offset, raw
                line += 1

    def _decode(self, raw: bytes, start: int, line: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            problem = _not_utf8(self.path, raw[error.start :], start + error.start, line, error.reason)
            raise ValueError(problem) from None

    def records(self, position=None):
        """Lines are split into records by `_split`; a position is (offset of a line, records of it to pass)."""
        position = position or {"offset": 0, "skip": 0, "line": 1, "index": 0}
        index, skip = position["index"], position["skip"]
        for line, start, end, raw in self._raw_lines(position["offset"], position["line"]):
            parts = list(self._split(raw, start, line))
            for number, make in enumerate(parts[skip:], start=skip + 1):
                after = ({"offset": end, "skip": 0, "line": line + 1, "index": index + 1} if number == len(parts)
                         else {"offset": start, "skip": number, "line": line, "index": index + 1})
                yield make(index, after)
                index += 1
            skip = 0

    def _split(self, raw: bytes, start: int, line: int):
        """The records that begin on this line, each as a function of (index, position after it) -> Record."""
        raise NotImplementedError

    def _malformed(self, line: int, problem: str, hint: str = f"fix or remove the line, or {_SKIP_HINT}"):
        """A malformed record: the loaders' error, or with on_bad_lines="skip" a record saying what was wrong."""
        if self.on_bad_lines == "error":
            raise ValueError(f"{self.path}, line {line}: {problem}; {hint}")
        return lambda index, after: Record(index, None, f"line {line}: {problem}", True, after)


class JsonLines(_File):
    """A JSON lines file: one record per non-blank line, the post in `text_field`. A missing field or a null is an
    empty post, unless no record has the field (the first record's fields are named in the error, as the loader
    names the file's columns)."""

    def __init__(self, path: Path, text_field: str = "text", on_bad_lines: str = "error"):
        super().__init__(path, on_bad_lines)
        self.text_field = text_field
        self._check_field()

    def _check_field(self):
        """The loader's error when no record has the text field (its columns are the union of the records')."""
        first = None
        for _, _, _, raw in self._raw_lines(0, 1):
            record, _ = _json_line(raw) if raw.strip() else (None, None)
            if record is None:
                continue  # blank, or malformed: reported where it is read
            if self.text_field in record:
                return
            first = list(record) if first is None else first
        if first is not None:
            raise ValueError(f"text field {self.text_field!r} not found in {self.path} (train split); its columns "
                             f"are {first}")

    def _split(self, raw, start, line):
        if not raw.strip():
            return
        record, problem = _json_line(raw)
        if problem is not None:
            if problem.startswith("not UTF-8") and self.on_bad_lines == "error":
                self._decode(raw, start, line)  # the file-level message, with the byte offset
            yield self._malformed(line, problem)
            return
        text = record.get(self.text_field)
        if text is not None and not isinstance(text, str):
            yield self._malformed(line, _not_text(self.text_field, text), "posts must be strings (skip such records with on_bad_lines='skip', "
                                                 "--skip-bad-lines)")
            return
        yield lambda index, after: _post(index, text, after)


class Lines(_File):
    """A plain text file, one post per line as `str.splitlines` breaks lines (what `classify --file` and
    `generate --prompts-file` have always read): a blank line is a record without a post."""

    def __init__(self, path: Path, what: str = "post", no_posts: str | None = None):
        super().__init__(path)
        self.what = what
        self._no_posts = no_posts or f"file {str(path)!r} holds no {what}s (expected one {what} per line)"

    def _split(self, raw, start, line):
        for text in self._decode(raw, start, line).splitlines() or [""]:
            if text.strip():
                yield lambda index, after, text=text: Record(index, text, position=after)
            else:
                yield lambda index, after, text=text: Record(index, text, BLANK, position=after)

    def no_posts(self) -> str:
        return self._no_posts


class PlainText(_File):
    """A plain text file as `postformer.data.load_posts` reads it (with `datasets`' text builder): one post per
    line, or, when the file has a blank line anywhere, one post per paragraph (lines up to a blank line).
    "\\r\\n" and a lone "\\r" end lines too."""

    def __init__(self, path: Path, on_bad_lines: str = "error"):
        super().__init__(path, on_bad_lines)
        self.paragraphs = _has_blank_line(self.path)

    def identity(self) -> dict:
        return {**super().identity(), "paragraphs": self.paragraphs}

    def records(self, position=None):
        if not self.paragraphs:
            yield from super().records(position)
            return
        # A paragraph spans lines: the position is the line where the unfinished text began and the paragraphs
        # already taken from there (after the blank line that ends a paragraph, a new line begins with nothing).
        position = position or {"offset": 0, "skip": 0, "line": 1, "index": 0}
        index, skip = position["index"], position["skip"]
        buffer, began, began_line, taken = "", position["offset"], position["line"], 0
        for line, start, end, raw in self._raw_lines(position["offset"], position["line"]):
            if not buffer:
                began, began_line, taken = start, line, 0
            buffer += _universal_newlines(self._decode(raw, start, line))
            *done, buffer = buffer.split("\n\n")
            for text in done:
                if not text:
                    continue  # as datasets: "\n\n\n\n" holds no paragraph
                taken += 1
                if taken <= skip:
                    continue
                after = ({"offset": end, "skip": 0, "line": line + 1, "index": index + 1} if not buffer
                         else {"offset": began, "skip": taken, "line": began_line, "index": index + 1})
                yield _post(index, text, after)
                index += 1
            if not buffer:
                skip = 0
        if buffer:
            yield _post(index, buffer, {"offset": self.size, "skip": 0, "line": -1, "index": index + 1})

    def _split(self, raw, start, line):
        text = _universal_newlines(self._decode(raw, start, line))
        for part in text.removesuffix("\n").split("\n"):
            yield lambda index, after, part=part: _post(index, part, after)


def _universal_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _has_blank_line(path: Path, chunk_size: int = 1 << 20) -> bool:
    """Whether a text file has a blank line ("\\n\\n" once "\\r\\n" is "\\n"), read in chunks."""
    tail = b""
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            data = (tail + chunk).replace(b"\r\n", b"\n")
            if b"\n\n" in data:
                return True
            tail = chunk[-2:]
    return False


class Delimited(_File):
    """A CSV (or TSV) file: a header row, then one record per row (blank lines are not rows), the post in the
    `text_field` column. A row with another number of fields than the header, or a quote left open, is
    malformed."""

    def __init__(self, path: Path, text_field: str = "text", on_bad_lines: str = "error"):
        super().__init__(path, on_bad_lines)
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long post is not malformed (pandas: no limit)
        self.sep = "\t" if self.path.suffix.lower() == ".tsv" else ","
        self.kind = "TSV" if self.sep == "\t" else "CSV"
        self.text_field = text_field
        self.header, self.body = self._read_header()
        if text_field not in self.header:
            raise ValueError(f"text field {text_field!r} not found in {self.path} (train split); its columns are "
                             f"{self.header}")
        self.column = self.header.index(text_field)
        if self.body >= self.size:
            raise ValueError(f"no posts in {self.path}: the file has a header row but no posts")

    def _rows(self, offset: int, line: int):
        """(first line, offset after the row, row or the csv module's error) of each row from byte `offset`."""
        state = {"line": line, "end": offset}

        def lines():
            for number, start, end, raw in self._raw_lines(offset, line):
                state["line"], state["end"] = number + 1, end
                yield self._decode(raw, start, number)

        reader = csv.reader(lines(), delimiter=self.sep, strict=True)
        while True:
            first = state["line"]
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield first, state["end"], error
                continue
            if row:
                yield first, state["end"], row

    def _read_header(self):
        for _, end, row in self._rows(0, 1):
            if isinstance(row, csv.Error):
                raise ValueError(f"{self.path}: malformed {self.kind} header: {row}")
            return row, end
        raise ValueError(f"no posts in {self.path}: the file is empty")

    def records(self, position=None):
        position = position or {"offset": self.body, "line": 2, "index": 0}
        index = position["index"]
        for first, end, row in self._rows(position["offset"], position["line"]):
            after = {"offset": end, "line": first + 1, "index": index + 1}
            if isinstance(row, csv.Error):
                yield self._malformed(first, f"malformed {self.kind} ({row}: a quote left open?)")(index, after)
            elif len(row) != len(self.header):
                yield self._malformed(first, f"{len(row)} field(s) where the header has {len(self.header)}")(
                    index, after)
            else:
                yield _post(index, row[self.column], after)
            index += 1

    def _malformed(self, line, problem, hint=None):
        return super()._malformed(line, problem, f"fix the row, or {_SKIP_HINT.replace('lines', 'rows')}")


def open_posts(data: str | Path | None = None, text_field: str = "text", split: str = "validation",
               on_bad_lines: str = "error") -> Source:
    """The posts `postformer.data.load_posts_split` reads (every post of a file, or one split of a folder or of the
    bundled sample), as a stream of records: a .jsonl, .csv/.tsv or plain text file (or a folder's split file) is
    read as it is consumed; a saved `datasets` folder's split row by row from its memory-mapped files. Two inputs
    that have no order to stream in are read whole, as before: a .json file holding one JSON document, and the
    validation split that `load_posts` holds out of a folder's train split when it has none."""
    from ..data.splits import _SPLIT_NAMES, BUNDLED_POSTS, _is_saved_dataset, _load_from_disk, _split_files

    _check_on_bad_lines(on_bad_lines)
    path = BUNDLED_POSTS if data is None else Path(data)
    if not path.exists():
        raise FileNotFoundError(f"posts data not found: {path}")
    wanted = _SPLIT_NAMES.get(split, split)
    if path.is_file():
        return _open_file(path, text_field, on_bad_lines)
    if _is_saved_dataset(path):
        splits = {_SPLIT_NAMES.get(name, name): dataset for name, dataset in _load_from_disk(path).items()}
        if wanted in splits:
            return Rows(splits[wanted], text_field, f"{path} ({split} split)", _folder_identity(path, wanted),
                        on_bad_lines)
    else:
        files = _split_files(path)
        if wanted in files:
            return _open_file(files[wanted], text_field, on_bad_lines)
    # No such split: load_posts holds a validation split out of train, or names the splits there are.
    from ..data.splits import load_posts

    posts = load_posts(path, text_field, on_bad_lines=on_bad_lines)
    if wanted not in posts:
        raise ValueError(f"no {split!r} split in {path}: its splits are {sorted(posts)}")
    return Rows(posts[wanted], "text", f"{path} ({split} split)", _folder_identity(path, wanted), on_bad_lines,
                text_field)


def _open_file(path: Path, text_field: str, on_bad_lines: str) -> Source:
    if path.stat().st_size == 0:
        raise ValueError(f"no posts in {path}: the file is empty")
    kind = _format_of(path)
    if kind == "text":
        return PlainText(path, on_bad_lines)
    if kind == "csv":
        return Delimited(path, text_field, on_bad_lines)
    if _is_json_lines(path):
        return JsonLines(path, text_field, on_bad_lines)
    from ..data.reading import _load_files  # one JSON document: parsed whole, as the loader does

    return Rows(_load_files({"train": path})["train"], text_field, str(path), file_identity(path), on_bad_lines)


def _folder_identity(path: Path, split: str) -> dict:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {"path": str(path.resolve()), "split": split,
            "files": [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


__all__ = ["EMPTY", "BLANK", "Record", "Source", "Texts", "Rows", "JsonLines", "Lines", "PlainText", "Delimited",
           "open_posts", "file_identity"]
