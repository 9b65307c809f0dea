"""What the benchmarks that save rows as they finish share: their results file and the line naming the machine."""

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers


def machine() -> str:
    """The machine, its threads, the library versions and the time of the run, in one line."""
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}, transformers {transformers.__version__}, "
            f"{datetime.now(timezone.utc).isoformat(timespec='minutes')}")


def open_results(path: Path) -> dict:
    """The results saved so far in `path` (rows of earlier runs kept), stamped with this run's command and machine."""
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    results["command"] = "python " + " ".join(sys.argv)
    results["machine"] = machine()
    return results
