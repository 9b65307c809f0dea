"""Posts corpora: the bundled sample and `load_posts`, which reads JSONL, CSV, plain text or a saved
`datasets` folder into a `datasets.DatasetDict` with one "text" column and a validation split."""

from pathlib import Path

import datasets

BUNDLED_POSTS = Path(__file__).resolve().parent / "posts"

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".txt": "text", ".text": "text"}
STREAMING_VALIDATION_POSTS = 200
_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation", "test": "test"}


def _format_of(path: Path) -> str:
    return _FORMATS.get(path.suffix.lower(), "text")


def _load_files(files: dict[str, Path], streaming: bool = False):
    """Load data files of one format, one per split."""
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
    data_files = {split: str(path) for split, path in files.items()}
    return datasets.load_dataset(builder, data_files=data_files, streaming=streaming, **kwargs)


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
) -> datasets.DatasetDict:
    """Read posts into a DatasetDict with splits "train", "validation" (and "test" when the data has one).

    `data` is a .jsonl/.json/.csv/.tsv/.txt file, a folder of such files named train/validation/test, or a
    folder written by `datasets`' `save_to_disk`; None reads the bundled sample. `text_field` names the column
    holding the post (plain text files have only "text"). Empty posts are dropped. When the data has no
    validation split, a deterministic `validation_fraction` of train (shuffled with `seed`) becomes one.

    streaming=True, for corpora that do not fit in memory: the train split is a `datasets.IterableDataset` read
    as it is consumed; the validation split is held in memory (without one in the data, the first
    STREAMING_VALIDATION_POSTS posts of train become it and are skipped from train).
    """
    path = BUNDLED_POSTS if data is None else Path(data)
    if not path.exists():
        raise FileNotFoundError(f"posts data not found: {path}")

    if path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json")):
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
        loaded = _load_files(files, streaming)
    else:
        if path.stat().st_size == 0:
            raise ValueError(f"no posts in {path}: the file is empty")
        loaded = _load_files({"train": path}, streaming)

    if "train" not in loaded:
        raise ValueError(f"no train split in {path}: found splits {sorted(loaded)}")
    posts = datasets.IterableDatasetDict() if streaming else datasets.DatasetDict()
    for split, dataset in loaded.items():
        posts[_SPLIT_NAMES.get(split, split)] = _text_column(dataset, path, split, text_field)
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


def _text_column(dataset, path: Path, split: str, text_field: str):
    """The dataset reduced to a "text" column of non-empty posts; ValueError when the field is missing."""
    field = "text" if _is_plain_text(path) else text_field
    columns = dataset.column_names
    if columns is None:  # a streamed file: its columns are those of its first record
        columns = list(next(iter(dataset), {}).keys())
    if field not in columns:
        raise ValueError(f"text field {text_field!r} not found in {path} ({split} split); its columns are {columns}")
    dataset = dataset.select_columns([field])
    if field != "text":
        dataset = dataset.rename_column(field, "text")
    return dataset.filter(lambda text: isinstance(text, str) and text.strip() != "", input_columns="text")


def load_posts_split(data: str | Path | None = None, text_field: str = "text", split: str = "validation") -> list[str]:
    """The posts to evaluate or score, as a list: every post of a single file, or one split of a folder (or of
    the bundled sample, when `data` is None). Empty posts are dropped; no posts at all is a ValueError."""
    path = BUNDLED_POSTS if data is None else Path(data)
    if path.is_file():
        if path.stat().st_size == 0:
            raise ValueError(f"no posts in {path}: the file is empty")
        dataset = _text_column(_load_files({"train": path})["train"], path, "train", text_field)
    else:
        posts = load_posts(path, text_field)
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


__all__ = ["BUNDLED_POSTS", "load_posts", "load_posts_split"]
