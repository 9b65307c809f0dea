"""Posts corpora as splits: `load_posts` (train and validation, and test when the data has one, with one "text"
column), `load_posts_split` (the posts of one file or split, to evaluate or score) and `load_labelled_files`
(labelled posts with every column, for classification), from a file, a folder of train/validation/test files
or a folder written by `datasets`' `save_to_disk`; the bundled sample when no data is given."""

import warnings
from pathlib import Path

import datasets

from .reading import (
    _FORMATS,
    SkippedLinesWarning,
    _check_on_bad_lines,
    _explaining_stream_errors,
    _format_of,
    _load_files,
)

BUNDLED_POSTS = Path(__file__).resolve().parent / "posts"
STREAMING_VALIDATION_POSTS = 200
_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation", "test": "test"}


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by `datasets`' `save_to_disk` (of a DatasetDict or of one Dataset)."""
    return path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json",
                                                                      "state.json"))


def _load_from_disk(path: Path) -> datasets.DatasetDict:
    """A `save_to_disk` folder's splits; one saved Dataset is the train split."""
    loaded = datasets.load_from_disk(str(path))
    return datasets.DatasetDict(train=loaded) if isinstance(loaded, datasets.Dataset) else loaded


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

    if _is_saved_dataset(path):
        files = {}
        loaded = _load_from_disk(path)
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


def load_labelled_files(
    data: str | Path, on_bad_lines: str = "error"
) -> tuple[datasets.DatasetDict, dict[str, str]]:
    """Labelled posts as read, every column kept, for a caller that picks its text and label columns (as
    `postformer.classification.load_labelled_posts` does); with, per split, where it came from, in words, for
    that caller's messages (the file, or the saved folder and split).

    `data` is a .jsonl/.json/.csv/.tsv file (its posts are the train split), a folder of such files named
    train/validation/test (as `load_posts` reads them), or a folder written by `datasets`' `save_to_disk`.
    Splits are named as `load_posts` names them ("valid" and "dev" are "validation"). Raises FileNotFoundError
    for a missing file or a folder without posts files, ValueError for plain text (which has no label column), an
    empty file, no train split and the malformed records `load_posts` names (skipped with a SkippedLinesWarning
    when on_bad_lines="skip").
    """
    _check_on_bad_lines(on_bad_lines)
    if data is None:
        raise ValueError("no labelled data given: pass a file or folder of posts with a text and a label column")
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"labelled posts not found: {path}")
    if _is_saved_dataset(path):
        loaded = _load_from_disk(path)
        sources = {split: f"{path} ({split} split)" for split in loaded}
    else:
        if path.is_dir():
            files = _split_files(path)
            if not files:
                raise FileNotFoundError(
                    f"no labelled posts files in folder {path}: expected train/validation/test files ending in "
                    ".jsonl, .json, .csv or .tsv, or a folder written by datasets' save_to_disk"
                )
        else:
            if path.stat().st_size == 0:
                raise ValueError(f"no posts in {path}: the file is empty")
            files = {"train": path}
        plain = sorted(str(p) for p in files.values() if _format_of(p) == "text")
        if plain:
            raise ValueError(
                f"{', '.join(plain)}: plain text has no label column; give labelled posts as JSONL, CSV or TSV with "
                "a text and a label column"
            )
        loaded = _load_files(files, on_bad_lines=on_bad_lines)
        sources = {split: str(file) for split, file in files.items()}
    if "train" not in {_SPLIT_NAMES.get(split, split) for split in loaded}:
        raise ValueError(f"no train split in {path}: found splits {sorted(loaded)}")
    return (datasets.DatasetDict({_SPLIT_NAMES.get(split, split): dataset for split, dataset in loaded.items()}),
            {_SPLIT_NAMES.get(split, split): source for split, source in sources.items()})


def _is_plain_text(path: Path) -> bool:
    if path.is_file():
        return _format_of(path) == "text"
    files = _split_files(path) if path.is_dir() else {}
    return bool(files) and all(_format_of(p) == "text" for p in files.values())
