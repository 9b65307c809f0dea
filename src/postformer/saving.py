"""Saving, whole or absent: the one place where postformer writes files that must never be seen half-written.

Everything is written under a temporary name (PARTIAL_PREFIX) in the folder it is meant for, synced, then
renamed into place: a rename within one file system is atomic, so a process killed at any moment leaves the
previous file or folder, or the new one, never part of one. Whatever a killed process left under the prefix is
removed by the next `PostformerTrainer.train` (or the next save of the same kind).

- `write_atomically` / `write_text`: one file (JSON reports, model cards, configs);
- `staged_save`: a whole folder of files (a model, a tokenizer), config.json last;
- `saving`: `staged_save` for a command's output, with a failed save cleaned up and disk-full and permission
  errors turned into one clear line naming what was being saved and where;
- `check_writable`: refuse an output folder that cannot be written before any work is done.
"""

import errno
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """No space left on the device while saving; the message names what was being saved and where."""


PARTIAL_PREFIX = ".tmp-"  # reserved in output folders: entries with it are unfinished saves


def _fsync(path: str | Path) -> None:
    """Flush a file (or a folder's entries) to disk, so that a rename done after it never reaches the disk
    before the data it names (after a power cut, not only a killed process). Folders cannot be opened on
    Windows and some file systems refuse to sync them: skipped, as there is nothing better to do."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: str | Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the file under a temporary name beside `path`, which then replaces `path`."""
    path = Path(path)
    tmp = path.with_name(PARTIAL_PREFIX + path.name)
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically, with the usual file mode (rw-r--r-- under the usual umask)."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return Path(path)


@contextmanager
def staged_save(folder: str | Path, main_process: bool = True):
    """Yield a temporary folder inside `folder` to save files into; on success, move them into `folder`.

    Each file is renamed into place (whole, replacing any old one); config.json goes last, and an old one is
    removed first, so a folder with a config.json holds a complete model of one save. Other processes (not
    `main_process`) get the same path, to take part in collective saves, and publish nothing.
    """
    folder = Path(folder)
    staging = folder / f"{PARTIAL_PREFIX}save"
    if main_process:
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed save
        staging.mkdir(parents=True)
    yield staging
    if not main_process:
        return
    _fsync_tree(staging)
    entries = sorted(staging.iterdir(), key=lambda entry: (entry.name == "config.json", entry.name))
    if entries and entries[-1].name == "config.json":
        (folder / "config.json").unlink(missing_ok=True)
    for entry in entries:
        target = folder / entry.name
        if entry.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    _fsync(folder)
    staging.rmdir()


def remove_partial_saves(folder: str | Path) -> list[str]:
    """Remove what killed saves left in `folder` (names starting with PARTIAL_PREFIX); return their names."""
    folder = Path(folder)
    removed = sorted(p.name for p in folder.glob(PARTIAL_PREFIX + "*")) if folder.is_dir() else []
    for name in removed:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return removed



def check_writable(folder: str | Path, option: str = "--output-dir") -> Path:
    """Raise PermissionError (NotADirectoryError for a file in the way) unless `folder` can be created or
    written to; checked before any work, so that a long run does not end on a save that cannot happen."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot create output folder {str(folder)!r}: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == folder else f"{str(existing)!r}, where it would be created,"
        raise PermissionError(
            f"cannot write to output folder {str(folder)!r}: {where} is not writable (permission denied or a "
            f"read-only file system); choose another {option} or change its permissions"
        )
    return folder


# What makes a folder hold a model (or a run of one): refused as an output folder, so nothing is overwritten.
MODEL_ENTRIES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "adapter")


def check_output_folder(folder: str | Path, hint: str = "choose another --output-dir") -> Path:
    """Refuse an output folder that is a file, that already holds a model or checkpoints (FileExistsError naming
    them: nothing is overwritten), or that cannot be written; return it. Every command that writes a model checks
    its output folder here, before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output folder {str(folder)!r} is a file")
    if folder.is_dir():
        held = [name for name in MODEL_ENTRIES if (folder / name).exists()]
        held += sorted(path.name for path in folder.glob("checkpoint-*"))
        if held:
            raise FileExistsError(f"output folder {str(folder)!r} already holds a model or checkpoints "
                                  f"({', '.join(held)}); nothing was overwritten: {hint}")
    return check_writable(folder)


def is_disk_full(error: BaseException) -> bool:
    """True for an error that says the device is full (or the quota is used up): an OSError, or the error of a
    library written in Rust (safetensors raises a SafetensorError, tokenizers a bare Exception), which carries
    the OS error only in its message."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    text = str(error)
    return "No space left on device" in text or "(os error 28)" in text or "Disk quota exceeded" in text


def disk_full_error(what: str, folder: str | Path, cause: BaseException | None = None) -> DiskFullError:
    detail = f" ({' '.join(str(cause).split())})" if cause is not None else ""
    error = DiskFullError(
        f"no space left on device while saving {what} to {str(folder)!r}{detail}; what the folder held before is "
        "unchanged and the partial save was removed: free some space and run again"
    )
    error.errno = errno.ENOSPC
    return error


@contextmanager
def saving(folder: str | Path, what: str):
    """Yield a temporary folder inside `folder` to save `what` (words for messages: "the model") into; when the
    block ends without error the files are moved into `folder` (see `staged_save`), otherwise
    the temporary folder is removed and `folder` keeps what it held. Disk full becomes a DiskFullError and a
    permission error a PermissionError, both naming `what` and `folder`."""
    folder = Path(folder)
    staging = folder / f"{PARTIAL_PREFIX}save"
    try:
        with staged_save(folder) as staging:
            yield staging
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(error):
            raise disk_full_error(what, folder, error) from error
        if isinstance(error, PermissionError):
            raise PermissionError(f"cannot save {what} to {str(folder)!r}: permission denied "
                                  f"({' '.join(str(error).split())})") from error
        raise


__all__ = ["PARTIAL_PREFIX", "DiskFullError", "write_atomically", "write_text", "staged_save", "remove_partial_saves",
           "check_writable", "check_output_folder", "is_disk_full", "disk_full_error", "saving"]
