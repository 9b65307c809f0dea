"""What a saved model folder says about its model: its task (from config.json's `architectures`), labels and
parameter count, and its JSON files read with one clear error when one is not JSON."""

import json
import math
import struct
from pathlib import Path

TASKS = {  # architectures suffix -> pipeline tag, Auto class of the usage snippet
    "ForCausalLM": ("text-generation", "AutoModelForCausalLM"),
    "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "Model": ("feature-extraction", "AutoModel"),
}


def read_json(path: Path):
    """The JSON in `path`, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def task_of(config: dict) -> tuple[str, str]:
    """Pipeline tag and Auto class from config.json's `architectures` (a causal LM when it names none)."""
    for architecture in config.get("architectures") or []:
        for suffix, task in TASKS.items():
            if architecture.endswith(suffix):
                return task
    return TASKS["ForCausalLM"]


def label_names(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k) if str(k).isdigit() else 0)]


def parameter_count(folder: Path, config: dict, metrics: dict) -> int | None:
    """Parameters of the saved weights, from the safetensors headers (shapes only, no tensor is read).

    Quantized weights store packed data and scales, whose element counts are not the parameter count: for them
    (config.json has a quantization_config) metrics.json's `parameters` is used when present."""
    if config.get("quantization_config") and isinstance(metrics.get("parameters"), int):
        return metrics["parameters"]
    index = read_json(folder / "model.safetensors.index.json")
    files = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    total = 0
    for name in files:
        path = folder / name
        if not path.is_file():
            return metrics.get("parameters") if isinstance(metrics.get("parameters"), int) else None
        with path.open("rb") as file:  # safetensors: an 8-byte little-endian header length, then a JSON header
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        total += sum(math.prod(t["shape"]) for key, t in header.items() if key != "__metadata__")
    return total
