"""What is wrong with a data file the loaders failed on: the first byte that is not UTF-8, the line of JSON
lines that is not a JSON object, the CSV row with another number of fields than the header.

The loaders (`postformer.data.reading`) call `_diagnose` only after `datasets` has failed, so reading a good
file costs nothing extra; the same line-by-line readers drive on_bad_lines="skip"."""

import codecs
import csv
import json
import re
from pathlib import Path


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
                return _not_utf8(path, data[error.start :], bad, line, error.reason)
            if not chunk:
                return None
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _not_utf8(path: Path, data: bytes, offset: int, line: int, reason: str) -> str:
    """The sentence naming the first byte of a file that is not UTF-8: `data` starts with it, at byte `offset`."""
    hint = (" (it starts with a UTF-16 byte-order mark: save it as UTF-8)"
            if offset == 0 and data[:2] in (b"\xff\xfe", b"\xfe\xff") else "")
    return (f"{path} is not UTF-8 text: byte 0x{data[0]:02x} at byte offset {offset} (line {line}) cannot be decoded "
            f"({reason}){hint}; convert the file to UTF-8")


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
            yield number, raw, *_json_line(raw)


def _json_line(raw: bytes) -> tuple[dict | None, str | None]:
    """(record, None) for a non-blank line of JSON lines that holds a JSON object, else (None, what is wrong)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
    try:
        record = json.loads(text)
        surrogate = next((m.group() for m in map(_LONE_SURROGATE.search, _strings(record)) if m), None)
    except json.JSONDecodeError as error:
        snippet = text.strip()
        snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
        # json's messages may end in "at" themselves ("Unterminated string starting at")
        message = error.msg.removesuffix(" at")
        return None, f"not valid JSON ({message} at column {error.colno}): {snippet!r}"
    except RecursionError:
        return None, "JSON nested too deeply to read"
    if not isinstance(record, dict):
        return None, (f"expected a JSON object such as {{\"text\": \"...\"}}, got {type(record).__name__} "
                      f"{text.strip()[:40]!r}")
    if surrogate is not None:  # JSON allows the escape; pyarrow, the tokenizer and UTF-8 do not
        return None, (f"a string holds the escape \\u{ord(surrogate):04x}, a lone surrogate (half of an emoji cut in "
                      "two), which is not text")
    return record, None


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
