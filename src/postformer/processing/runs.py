"""Runs over posts that survive a crash and share out among processes: what `postformer score`, `classify` and
`generate` do with `--output`.

Records (`postformer.processing.sources`) are taken in windows of `window` records. A command (a `Job`) gets a
window's posts at once, so that it can sort them by token length and batch neighbours (less padding), and returns
their results in input order. Every record gets exactly one output line, in input order: a record without a post
(an empty post, a malformed record skipped under --skip-bad-lines) gets its job's `failed` line, with an "error"
field, so that line N of the output is always record N of the input.

Crash safety. A window's lines are appended to the output, flushed and fsynced; only then does the process's
progress file say so (written whole or not at all: `postformer.saving.write_atomically`), with the input position
after the window's last record. A rerun of the same command cuts the output back to the committed bytes (a window
half written when the process died goes) and reads on from that position: no post is missed or written twice.
What the run is (command, input identity, options, window, processes) is recorded when it starts; a rerun that
differs in any of it is refused rather than appended to another run's output (`overwrite=True` starts over), and a
rerun of a finished run recomputes nothing.

Processes. Under `torchrun` / `accelerate launch` (Accelerate's PartialState joins the process group: gloo on
CPUs, NCCL on GPUs), process r of N takes windows r, r + N, r + 2N, ... and writes them to its own part file with
its own progress (every process reads the whole input, which is cheap beside the model, and so knows where each
window starts). When all are done, process 0 interleaves the parts, window by window, into the one output file:
every window but the last holds exactly `window` lines, so the interleaving needs no index. The result is the
1-process output, line for line: a window's batches do not depend on which process runs it.

Files, beside OUTPUT:

    OUTPUT                        the results, JSON lines (during a 1-process run: the committed windows, then
                                  perhaps part of a window that a rerun cuts off)
    OUTPUT.progress/run.json      the run: command, input identity, options, window, processes; "complete": true
                                  once OUTPUT is whole. Kept after the run, so that a rerun knows it is done
    OUTPUT.progress/rank-R.json   process R's progress: windows, lines and bytes committed, input position
    OUTPUT.progress/rank-R.jsonl  process R's part (more than one process only)

Rank files and parts are removed once OUTPUT is whole.
"""

import atexit
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..saving import _fsync, write_atomically, write_text
from .sources import Record, Source

WINDOW = 1024  # records sorted by length and batched together; a crash loses at most one window's work
FORMAT = "postformer progress 1"
PROGRESS = ".progress"  # OUTPUT + PROGRESS: the run's progress folder
# Seconds slept after each committed window: only tests set it, to kill a run while it is under way.
_DELAY_VARIABLE = "POSTFORMER_TEST_WINDOW_DELAY"


class Job:
    """What a command does with posts. `command` names it; `process(window, records)` returns one output record (a
    dict) per record, all of which hold a post, in their order (`window`: the window's number, from 0, for what must
    not depend on the process or on a restart, such as a sampling seed); `failed(record)` is the output record of a
    record without a post."""

    command = "process"

    def process(self, window: int, records: list[Record]) -> list[dict]:
        raise NotImplementedError

    def failed(self, record: Record) -> dict:
        return {"index": record.index, "text": record.text, "error": record.problem}


# ----------------------------------------------------------------------------------------------------------------
# Processes


class Processes:
    """The processes of this launch: one, or those `torchrun` / `accelerate launch` started (their WORLD_SIZE and
    RANK), joined through Accelerate's PartialState; `device` is this process's (its GPU when there are GPUs)."""

    def __init__(self):
        import torch
        from accelerate import PartialState

        # Without GPUs, Accelerate joins the launch's processes (gloo) only when told to use the CPU, as Trainer does.
        cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        self.state = PartialState(cpu=cpu)
        self.rank, self.count, self.device = self.state.process_index, self.state.num_processes, self.state.device
        if self.count > 1:
            # Leave the group before the interpreter exits: gloo's threads still alive then can abort a process
            # ("terminate called without an active exception") after all its work is written, failing the launch.
            atexit.register(self.state.destroy_process_group)

    def barrier(self) -> None:
        if self.count > 1:
            self.state.wait_for_everyone()

    def broadcast(self, value):
        """Process 0's `value`, in every process."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's `value`, in rank order, in every process."""
        if self.count == 1:
            return [value]
        import torch.distributed

        values = [None] * self.count
        torch.distributed.all_gather_object(values, value)
        return values


_processes = None


def processes() -> Processes:
    """This launch's processes, joined once (the process group lives as long as the process)."""
    global _processes
    if _processes is None:
        _processes = Processes()
    return _processes


def together(decide: Callable[[], object]):
    """`decide()` run by process 0 alone, its result (or its error, raised again) in every process: a decision
    that touches files, made once, with no process left waiting for one that failed."""
    procs = processes()
    outcome = None
    if procs.rank == 0:
        try:
            outcome = ("value", decide())
        except Exception as error:  # noqa: BLE001 (sent to the other processes, then raised again)
            outcome = ("error", error)
    outcome = procs.broadcast(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


# ----------------------------------------------------------------------------------------------------------------
# Windows


@dataclass
class Counts:
    """What was read: the next record's index, the posts among the records (for max_posts), the malformed records
    skipped and the first few of their problems (for the warning)."""

    next_index: int = 0
    posts: int = 0
    malformed: int = 0
    examples: tuple = ()


def windows(records: Iterator[Record], window: int, counts: Counts, max_posts: int | None = None):
    """(window number, its records) from the records, which start at a window boundary; `counts` is kept up to
    date. Reading stops after the `max_posts`-th post (records without a post before it are kept)."""
    if window < 1:
        raise ValueError(f"window must be at least 1 record, got {window}")
    if max_posts is not None and counts.posts >= max_posts:
        return
    current, number = [], None
    for record in records:
        if number is not None and record.index // window != number:
            yield number, current
            current = []
        number = record.index // window
        current.append(record)
        counts.next_index = record.index + 1
        if record.problem is None:
            counts.posts += 1
        elif record.malformed:
            counts.malformed += 1
            if len(counts.examples) < 3:
                counts.examples = (*counts.examples, record.problem)
        if max_posts is not None and counts.posts >= max_posts:
            break
    if current:
        yield number, current


def window_lines(job: Job, number: int, records: list[Record]) -> list[dict]:
    """The output records of a window, one per record, in order."""
    with_posts = [r for r in records if r.problem is None]
    done = iter(job.process(number, with_posts) if with_posts else [])
    lines = [next(done) if r.problem is None else job.failed(r) for r in records]
    if next(done, None) is not None:
        raise RuntimeError(f"{job.command}: more results than posts in window {number}")
    return lines


def _encode(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


def _warn_malformed(source: Source, counts: Counts, lines: bool) -> None:
    if counts.malformed:
        import warnings

        from ..data.reading import SkippedLinesWarning

        left = counts.malformed - len(counts.examples)
        more = f"; and {left} more" if left else ""
        each = " (each has an output line with its error)" if lines else ""
        warnings.warn(f"skipped {counts.malformed} malformed line(s) of {source.name} (on_bad_lines='skip'){each}: "
                      f"{'; '.join(counts.examples)}{more}", SkippedLinesWarning, stacklevel=3)


def _progress_bar(enabled: bool, source: Source, done: int, what: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = len(source.texts) if hasattr(source, "texts") else None
    return tqdm(total=total, initial=done, unit=" posts", desc=what, dynamic_ncols=True)


def process_posts(job: Job, source: Source, sink: Callable[[list[Record], list[dict]], None], *,
                  window: int = WINDOW, max_posts: int | None = None, progress: bool = False,
                  share: bool = False) -> Counts:
    """Run `job` over the windows of `source`, handing each window's records and output records to `sink` (a
    command printing its results, or adding them up, as they come): no output file, nothing to resume. Under
    several processes, `share=True` gives each its windows (as `PostsRun` does; the caller combines what the sinks
    saw), else it is an error: the results of several processes need one file to meet in (`PostsRun`). Raises
    ValueError (`source.no_posts()`) when the input holds no post."""
    procs = processes()
    if procs.count > 1 and not share:
        raise ValueError(f"{job.command} under {procs.count} processes needs an output file (--output), where the "
                         "processes' results are merged")
    counts = Counts()
    bar = _progress_bar(progress and procs.rank == 0, source, 0, job.command)
    for number, records in windows(source.records(), window, counts, max_posts):
        if number % procs.count == procs.rank:
            sink(records, window_lines(job, number, records))
        if bar is not None:
            bar.update(len(records))
    if bar is not None:
        bar.close()
    if counts.posts == 0:
        raise ValueError(source.no_posts())
    if procs.rank == 0:
        _warn_malformed(source, counts, lines=False)
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Runs with an output file


def progress_folder(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + PROGRESS)


def model_identity(model) -> dict:
    """A model as the runs record it: a folder's path and its config and weight files' sizes and times (a model
    trained again into the same folder is another model), or a Hub id."""
    path = Path(str(model))
    if not path.is_dir():
        return {"model": str(model)}
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in (
        ".safetensors", ".bin")))
    return {"model": str(path.resolve()),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two runs, in words."""
    found = []
    if old.get("command") != new["command"]:
        found.append(f"command ({old.get('command')})")
    if old.get("input") != new["input"]:
        before = old.get("input", {})
        keys = sorted(k for k in {**before, **new["input"]} if before.get(k) != new["input"].get(k))
        found.append(f"input ({', '.join(keys)})")
    for key in sorted({**old.get("options", {}), **new["options"]}):
        if old.get("options", {}).get(key) != new["options"].get(key):
            found.append(f"{key} ({old.get('options', {}).get(key)!r}, now {new['options'].get(key)!r})")
    for key in ("window", "max_posts"):
        if old.get(key) != new[key]:
            found.append(f"{key} ({old.get(key)!r}, now {new[key]!r})")
    return found


class PostsRun:
    """A run of one command over one input into one output file: started fresh, resumed, or found complete.

    Construct it before loading a model: the checks (another run's output, a changed input, other options, another
    number of processes) raise at once, and `complete` says when there is nothing to do. Then `process(job)`.

    Errors: FileExistsError for an OUTPUT that another run, or no run, wrote (pass overwrite=True to replace it);
    ValueError for a rerun under another number of processes, and for an output changed since its last commit.
    """

    def __init__(self, command: str, source: Source, output: str | Path, options: dict, *, window: int = WINDOW,
                 max_posts: int | None = None, overwrite: bool = False, progress: bool = False):
        if window < 1:
            raise ValueError(f"window must be at least 1 record, got {window}")
        self.command, self.source, self.output, self.window = command, source, Path(output), window
        self.max_posts, self.progress = max_posts, progress
        self.folder = progress_folder(self.output)
        self.procs = processes()
        self.run = {"format": FORMAT, "command": command, "input": source.identity(), "options": options,
                    "window": window, "max_posts": max_posts}
        self.run, self.done_before = together(lambda: self._start(overwrite))
        self.complete = bool(self.run.get("complete"))

    # -- deciding, in process 0 ------------------------------------------------------------------------------------

    def _start(self, overwrite: bool) -> tuple[dict, int]:
        """The run's record, after starting or checking it; with the lines committed before this run."""
        output, folder, run_file = self.output, self.folder, self.folder / "run.json"
        if not output.parent.is_dir():
            raise FileNotFoundError(f"cannot write {output}: folder {str(output.parent)!r} does not exist")
        if overwrite:
            output.unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
        if run_file.is_file():
            old = json.loads(run_file.read_text(encoding="utf-8"))
            done = sum(json.loads(p.read_text(encoding="utf-8"))["lines"] for p in folder.glob("rank-*.json"))
            if not old.get("complete") and done == 0:
                # Stopped before its first window (a bad option, a model that did not load): nothing to keep.
                return self._fresh()
            differences = _differences(old, self.run)
            if differences:
                raise FileExistsError(
                    f"{output} belongs to another run (its progress, {folder.name}, records another "
                    f"{'; '.join(differences)}); pass --overwrite to start over, or choose another --output")
            if old.get("complete"):
                if not output.is_file():
                    raise FileNotFoundError(f"{output} was complete but is gone; pass --overwrite to run again")
                return old, old.get("lines", 0)
            if old["processes"] != self.procs.count:
                raise ValueError(
                    f"{output} was started under {old['processes']} process(es) and is unfinished: rerun it under "
                    f"{old['processes']} to continue, or pass --overwrite to start over")
            return old, done
        if output.exists():
            raise FileExistsError(
                f"{output} exists and no run of postformer records it ({folder.name} is missing beside it); pass "
                "--overwrite to replace it, or choose another --output")
        return self._fresh()

    def _fresh(self) -> tuple[dict, int]:
        self.output.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)  # a run killed before it recorded itself, or did anything
        self.folder.mkdir()
        run = {**self.run, "processes": self.procs.count, "complete": False,
               "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_text(self.folder / "run.json", json.dumps(run, indent=2) + "\n")
        return run, 0

    # -- processing, in every process ------------------------------------------------------------------------------

    def process(self, job: Job) -> Counts:
        """Process this process's windows not yet committed, then (process 0) merge the parts and mark the run
        complete; return the counts of what was read. Nothing is done for a complete run. Raises ValueError
        (`source.no_posts()`) when the input holds no post."""
        if self.complete:
            counts = Counts(next_index=self.run["lines"], posts=self.run["posts"], malformed=self.run["malformed"])
        else:
            counts = self._process(job)
            self._finish()
        if counts.posts == 0:
            raise ValueError(self.source.no_posts())
        return counts

    def _part(self, rank: int) -> Path:
        return self.output if self.run["processes"] == 1 else self.folder / f"rank-{rank}.jsonl"

    def _process(self, job: Job) -> Counts:
        rank, count = self.procs.rank, self.run["processes"]
        part, state_file = self._part(rank), self.folder / f"rank-{rank}.json"
        state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else None
        if state is None:
            state = {"rank": rank, "windows": 0, "lines": 0, "bytes": 0, "position": None,
                     "counts": Counts().__dict__, "finished": False}
            open(part, "wb").close()  # a fresh part (a 1-process run's output itself)
            _fsync(part.parent)  # its name on disk before any progress names its bytes (a power cut, not only a kill)
        else:
            size = part.stat().st_size if part.is_file() else -1
            if size < state["bytes"]:
                raise ValueError(f"{part} is shorter ({max(size, 0)} bytes) than the {state['bytes']} bytes its "
                                 "progress records as written: it was changed after the run stopped; pass --overwrite "
                                 "to start over")
            os.truncate(part, state["bytes"])  # drop a window the process died writing
        counts = Counts(**{**state["counts"], "examples": tuple(state["counts"]["examples"])})
        if state["finished"]:
            return counts
        delay = float(os.environ.get(_DELAY_VARIABLE, "0") or 0)
        bar = _progress_bar(self.progress and rank == 0, self.source, counts.next_index, self.command)
        records = self.source.records(state["position"])
        with open(part, "ab") as out:
            for number, window_records in windows(records, self.window, counts, self.max_posts):
                if bar is not None:
                    bar.update(len(window_records))
                if number % count != rank:
                    continue
                data = _encode(window_lines(job, number, window_records))
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                state.update(windows=state["windows"] + 1, lines=state["lines"] + len(window_records),
                             bytes=state["bytes"] + len(data), position=window_records[-1].position,
                             counts={**counts.__dict__, "examples": list(counts.examples)})
                write_text(state_file, json.dumps(state) + "\n")
                if delay:
                    time.sleep(delay)
        if bar is not None:
            bar.close()
        state.update(finished=True, counts={**counts.__dict__, "examples": list(counts.examples)})
        write_text(state_file, json.dumps(state) + "\n")
        return counts

    def _finish(self) -> None:
        """Once every process is done: process 0 merges the parts (more than one process) and marks the run
        complete; then the rank files and parts go."""
        self.procs.barrier()
        if self.procs.rank != 0:
            return
        count = self.run["processes"]
        states = [json.loads((self.folder / f"rank-{r}.json").read_text(encoding="utf-8")) for r in range(count)]
        lines = sum(s["lines"] for s in states)
        if count > 1:
            write_atomically(self.output, lambda tmp: _interleave([self._part(r) for r in range(count)], tmp,
                                                                  self.window, lines))
        counts = states[0]["counts"]  # process 0 read the whole input
        run = {**self.run, "complete": True, "lines": lines, "posts": counts["posts"],
               "malformed": counts["malformed"], "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_text(self.folder / "run.json", json.dumps(run, indent=2) + "\n")
        self.run = run
        for r in range(count):
            (self.folder / f"rank-{r}.json").unlink(missing_ok=True)
            if count > 1:
                self._part(r).unlink(missing_ok=True)
        _warn_malformed(self.source, Counts(**{**counts, "examples": tuple(counts["examples"])}), lines=True)


def run_to_file(command: str, source: Source, output: str | Path, options: dict, make_job: Callable[[], Job], *,
                window: int = WINDOW, max_posts: int | None = None, overwrite: bool = False,
                progress: bool = False) -> dict:
    """A command's whole run into `output` (`PostsRun`), its job made by `make_job()` (which loads the model) only
    when there is work left. Returns a summary: the output, its lines (one per input record read), the posts
    among them, the malformed records skipped, the lines committed before this run (a resumed run) and whether
    the run was complete before it started (nothing was recomputed). Under several processes, every process
    returns; only process 0's summary holds the whole run's lines once the parts are merged."""
    run = PostsRun(command, source, output, options, window=window, max_posts=max_posts, overwrite=overwrite,
                   progress=progress)
    counts = run.process(None if run.complete else make_job())
    return {"output": str(run.output), "lines": counts.next_index, "posts": counts.posts,
            "malformed": counts.malformed, "done_before": run.done_before, "already_complete": run.complete}


def _interleave(parts: list[Path], output: Path, window: int, lines: int) -> None:
    """Write the parts' windows to `output` in input order: window w is the next `window` lines of part w % N."""
    files = [open(part, "rb") for part in parts]
    written = 0
    try:
        with open(output, "wb") as out:
            number = 0
            while True:
                source = files[number % len(files)]
                taken = 0
                while taken < window and (line := source.readline()):
                    out.write(line)
                    taken += 1
                written += taken
                if taken < window:
                    break
                number += 1
        left = [str(part) for part, file in zip(parts, files) if file.read(1)]
    finally:
        for file in files:
            file.close()
    if left or written != lines:
        raise RuntimeError(f"the processes' parts do not interleave into {lines} lines (wrote {written}; lines left "
                           f"in {left}): a part was changed; pass --overwrite to start over")


__all__ = ["WINDOW", "Job", "Processes", "processes", "together", "Counts", "windows", "window_lines",
           "process_posts", "progress_folder", "model_identity", "PostsRun", "run_to_file"]
