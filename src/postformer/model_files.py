"""Reading and writing model folders, with errors that name the file and the problem.

Every command that loads a model folder goes through `load_config`, `check_weights`, `load_tokenizer` and
`check_vocab` (via `generation.load_model_and_tokenizer` and the classifier loaders), so a damaged folder is
reported the same way everywhere, as a ValueError naming the file:

- config.json with a bad value (wrong type, negative size, heads that do not divide the hidden size, ...);
- weights that are not a readable safetensors file (truncated, overwritten with other bytes, empty);
- weights that do not fit config.json (missing tensors, other shapes: another model's weights or config);
- tokenizer files that cannot be parsed;
- a tokenizer with more tokens than the model's embedding has rows (vocab_size), which would index past it.

config.json fields this version does not know (written by a newer version) do not stop loading: they are kept
as attributes, as transformers does, and named in an `UnknownConfigFieldsWarning`.

Writing model folders (staged, atomic saves, disk-full errors) lives in `postformer.saving`.
"""

import copy
import json
import warnings
from pathlib import Path

import torch

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_folder(model_dir) -> tuple[Path, dict]:
    """The folder and its config.json as a dict, after checking that it holds a config, weights and a tokenizer
    (what save_pretrained of a model and of its tokenizer write side by side). FileNotFoundError /
    NotADirectoryError / ValueError name the folder and what is missing or unreadable."""
    path = Path(model_dir)
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"model folder {str(path)!r} is not a folder")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append("model weights (" + " or ".join(WEIGHT_FILES[::2]) + ")")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer files (" + " or ".join(TOKENIZER_FILES) + ")")
    if missing:
        raise FileNotFoundError(
            f"{str(path)!r} is not a model folder: missing {', '.join(missing)}. Expected what save_pretrained "
            "of a Postformer model and of its tokenizer write to the same folder"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path / 'config.json')!r} is not a readable JSON config: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path / 'config.json')!r} is not a model config (not a JSON object)")
    return path, config


class UnknownConfigFieldsWarning(UserWarning):
    """config.json holds fields this version of postformer does not know (a newer version wrote it)."""


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _known_config_fields(config) -> set[str]:
    """What a config of this class and version may hold: the fields it writes, and the keys transformers and the
    design's names accept on loading."""
    import dataclasses

    cls = type(config)
    known = set(cls().to_dict())
    if dataclasses.is_dataclass(cls):
        known |= {field.name for field in dataclasses.fields(cls)}
    known |= {"quantization_config", "torch_dtype", "dtype", "_commit_hash", "_name_or_path", "name_or_path",
              "num_labels", "attn_implementation", "rope_scaling", "use_rope", "use_flash_attention",
              "use_group_query_attention"}
    known |= set(getattr(config, "attribute_map", {}) or {})
    from .modeling.configuration_postformer import DESIGN_NAMES

    known |= set(DESIGN_NAMES)
    try:  # sampling options old configs carry; transformers drops them on loading
        from transformers import GenerationConfig

        known |= set(GenerationConfig._get_default_generation_params())
    except (ImportError, AttributeError):
        pass
    return known


def load_config(path: str | Path, raw: dict):
    """The config of the model folder `path` (AutoConfig), given its config.json as read by
    `check_model_folder` (`raw`); ValueError naming config.json when a value is out of range; an
    UnknownConfigFieldsWarning naming fields this version does not know."""
    from transformers import AutoConfig

    path = Path(path)
    file = path / "config.json"
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{str(file)!r}: {error}") from error
    if getattr(config, "model_type", None) == "postformer":
        unknown = sorted(set(raw) - _known_config_fields(config))
        if unknown:
            import transformers

            written = raw.get("transformers_version")
            by = (f" (written with transformers {written}; this is {transformers.__version__})"
                  if written and written != transformers.__version__ else "")
            warnings.warn(
                f"{file} has field(s) this version of postformer does not know: {', '.join(unknown)}{by}. The model "
                "loads without them (they are kept as config attributes, unused); if it was saved by a newer "
                "postformer that uses them, upgrade postformer",
                UnknownConfigFieldsWarning, stacklevel=3,
            )
    return config


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of the folder: model.safetensors, or the shards its index names."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{str(index)!r} is not a readable safetensors index: {error}") from None
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(index)!r} names weight file(s) missing from {str(path)!r}: "
                                    f"{', '.join(missing)}")
        return [path / name for name in shards]
    return []  # pytorch_model.bin: transformers loads it (weights only) and reports its own errors


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def check_weights(path: str | Path, config, model_class) -> None:
    """Raise ValueError naming the file when the folder's safetensors weights cannot be read (truncated,
    corrupted) or do not fit `config` for `model_class`: tensors missing, or of another shape. Reads only the
    files' headers; the expected shapes come from the model built on the "meta" device (no memory)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    found = {}  # tensor name -> (shape, file)
    for file in _weight_files(path):
        try:
            with safe_open(str(file), framework="pt") as weights:
                for name in weights.keys():
                    found[name] = (tuple(weights.get_slice(name).get_shape()), file)
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{str(file)!r} is not a readable safetensors file ({' '.join(str(error).split())}): it is truncated "
                "or corrupted; copy or save the model again"
            ) from None
    if not found or getattr(config, "quantization_config", None) is not None:
        return  # quantised tensors are stored under other names and shapes
    with torch.device("meta"):
        model = model_class(copy.deepcopy(config))
    groups = {}  # tied weights (the embedding and the LM head) are saved once, under one of their names
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append((name, tuple(tensor.shape)))
    missing, mismatched = [], []
    for names in groups.values():
        present = [(name, shape) for name, shape in names if name in found]
        if not present:
            missing.append(names[0][0])
        mismatched += [(name, found[name][0], shape, found[name][1])
                       for name, shape in present if found[name][0] != shape]
    if mismatched:
        shown = "; ".join(f"{name} is {_shape(got)} in {file.name} but {_shape(want)} per config.json"
                          for name, got, want, file in mismatched[:3])
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise ValueError(
            f"the weights in {str(path)!r} do not fit its config.json: {shown}{more}. The config or the weights "
            "were changed or come from another model"
        )
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        files = ", ".join(sorted({file.name for _, file in found.values()}))
        raise ValueError(
            f"the weights in {str(path)!r} ({files}) lack {len(missing)} tensor(s) the model needs: "
            f"{', '.join(missing[:3])}{more}. They are incomplete or belong to another kind of model"
        )


def load_tokenizer(path: str | Path):
    """The tokenizer saved in the folder `path` (AutoTokenizer); ValueError naming the folder when its files
    cannot be parsed (instead of the JSON or tokenizers library's own error)."""
    from transformers import AutoTokenizer

    path = Path(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (path / name).is_file():
            try:
                json.loads((path / name).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{str(path / name)!r} is not a readable JSON file ({error}): the tokenizer is "
                                 "damaged; save the tokenizer again") from None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (ImportError, MemoryError):
        raise
    except Exception as error:  # json, tokenizers (Rust) and transformers errors alike: the files are damaged
        files = ", ".join(name for name in ("tokenizer.json", "tokenizer_config.json") if (path / name).is_file())
        raise ValueError(
            f"the tokenizer in {str(path)!r} cannot be loaded from {files or 'its files'} "
            f"({type(error).__name__}: {' '.join(str(error).split())[:300]}); save the tokenizer again"
        ) from error


def check_vocab(tokenizer, config, path: str | Path) -> None:
    """ValueError when the tokenizer has more tokens than the model's embedding has rows (vocab_size): ids past
    the embedding would fail (or read another token's row on some devices) at the first such token."""
    vocab_size = getattr(config, "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer in {str(path)!r} has {len(tokenizer)} tokens but the model's vocabulary has "
            f"{vocab_size} (vocab_size in config.json, the rows of its embedding): token ids {vocab_size} to "
            f"{len(tokenizer) - 1} have no embedding. The tokenizer belongs to another model, or tokens were added "
            "to it without model.resize_token_embeddings(len(tokenizer))"
        )


# ----------------------------------------------------------------------------------------------------------------
# Writing

__all__ = ["UnknownConfigFieldsWarning", "load_config", "check_weights", "load_tokenizer", "check_vocab"]
