"""Loading model folders (and Hub models), with errors that name the file and the problem.

Every command loads its model through `load_model(model, task)` (`check_model` checks without loading), which
takes a local folder (what save_pretrained of a model and of its tokenizer write side by side) or the id of a
Hugging Face Hub model repository ("org/name"), for the tasks in TASKS: a causal language model
("text-generation") or a sequence classifier ("text-classification", also built with a new head on a language
model's body, as classify-train does). A damaged folder is reported the same way by every command, as a
ValueError naming the file (`load_config`, `check_weights`, `load_tokenizer`, `check_vocab`):

- config.json with a bad value (wrong type, negative size, heads that do not divide the hidden size, ...);
- weights that are not a readable safetensors file (truncated, overwritten with other bytes, empty);
- weights that do not fit config.json (missing tensors, other shapes: another model's weights or config);
- tokenizer files that cannot be parsed;
- a tokenizer with more tokens than the model's embedding has rows (vocab_size), which would index past it;
- a model of another kind than the task needs (a classifier where a language model is needed, ...).

config.json fields this version does not know (written by a newer version) do not stop loading: they are kept
as attributes, as transformers does, and named in an `UnknownConfigFieldsWarning`.

A Hub model is loaded by transformers' `from_pretrained` (Postformer's classes are registered with the Auto
classes when postformer is imported, so no `trust_remote_code` is needed); when the Hub cannot be reached and the
model is not in the local cache, that is one ConnectionError naming the model, and a repository that does not
exist a FileNotFoundError.

Writing model folders (staged, atomic saves, disk-full errors) lives in `postformer.saving`.
"""

import copy
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
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
# Loading


@dataclass(frozen=True)
class _Task:
    auto_class: str  # the transformers Auto class that loads the model
    mapping: str  # its config-to-model-class mapping, in transformers.models.auto.modeling_auto


TASKS = {  # named as transformers' pipelines name them
    "text-generation": _Task("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING"),
    "text-classification": _Task("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING"),
}


def is_hub_model_id(model) -> bool:
    """True when `model` names no local file or folder and is spelled as a Hub repository id ("name" or
    "namespace/name"): `load_model` then asks the Hub (or its local cache) for it. An existing local path always
    wins, as in transformers."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(model, str) or Path(model).exists():
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def _task(task: str) -> _Task:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return TASKS[task]


def _check_kind(model: str, raw: dict, task: str, new_head: bool) -> None:
    """ValueError unless config.json (`raw`) of `model` (a folder or Hub id) describes a model for `task` (with
    `new_head`: a language model whose body starts one). A config that names no architectures passes:
    transformers then decides from its model_type."""
    where = repr(model)
    architectures = raw.get("architectures") or []
    is_lm = any("CausalLM" in name or "LMHead" in name for name in architectures)
    is_classifier = any("ForSequenceClassification" in name for name in architectures)
    if task == "text-classification":
        if raw.get("model_type") != "postformer":
            raise ValueError(f"the model in {where} is not a Postformer model (model_type {raw.get('model_type')!r})")
        if new_head and is_classifier:
            raise ValueError(
                f"{where} holds a sequence classifier ({', '.join(architectures)}), not a language model: "
                "classify-train starts from a language model folder (written by `postformer train`)"
            )
        if not new_head and not is_classifier:
            kind = ", ".join(architectures) or "model without a classification head"
            raise ValueError(
                f"the model in {where} is a {kind}, not a sequence classifier; train one from it with "
                f"`postformer classify-train --model {model} --data LABELLED_POSTS --output-dir OUT`"
            )
    if (task == "text-generation" or new_head) and architectures and not is_lm:
        raise ValueError(
            f"the model in {where} is a {', '.join(architectures)}, not a language model: it has no "
            "language-model head to " + ("generate text with" if task == "text-generation" else "start from")
        )


def check_model(model, task: str = "text-generation", *, new_head: bool = False, hub: bool = True) -> Path | str:
    """Check, without loading the weights, that `model` holds a model for `task` and its tokenizer; return the
    folder (a Path) or the Hub repository id (a str, whose config is fetched and checked). The errors are those of
    `load_model`, so a wrong `--model` is reported before any other work. hub=False: only a local folder will do
    (for commands that read the folder's other files)."""
    _task(task)
    if hub and is_hub_model_id(model):
        _check_kind(model, _hub_config(model).to_dict(), task, new_head)
        return model
    try:
        path, raw = check_model_folder(model)
    except FileNotFoundError as error:
        if not hub and is_hub_model_id(model):
            raise FileNotFoundError(f"{error}; to use the Hugging Face Hub model {model!r} here, download it first "
                                    f"(`hf download {model} --local-dir DIR`) and give the folder") from None
        raise
    _check_kind(str(path), raw, task, new_head)
    return path


def load_model(model, task: str = "text-generation", *, dtype=None, new_head: bool = False, **kwargs):
    """The model for `task` (in eval mode) and its tokenizer, from a local folder or a Hub repository id
    (`is_hub_model_id`).

    task: a key of TASKS, "text-generation" (a causal LM, `AutoModelForCausalLM`) or "text-classification" (a
    Postformer sequence classifier, `AutoModelForSequenceClassification`). new_head=True: `model` holds a
    language model, and the result is a model for `task` on its body, with a new, randomly initialised head
    (configured by `kwargs`, e.g. num_labels and id2label). dtype: None for the saved dtype, or a torch dtype /
    its name ("float32", "bfloat16", ...). kwargs: passed to the Auto class's `from_pretrained`.

    A damaged folder is a ValueError naming the file (see the module docstring); a missing folder or one without
    a config, weights or tokenizer a FileNotFoundError; a model of another kind than `task` needs a ValueError.
    A Hub id that cannot be fetched is a ConnectionError (Hub unreachable and not cached), FileNotFoundError (no
    such repository or file) or PermissionError (gated). config.json fields this version does not know are named
    in an UnknownConfigFieldsWarning and the model loads.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    spec = _task(task)
    if new_head and task == "text-generation":
        raise ValueError("new_head=True starts a model for another task on a language model's body; "
                         "text-generation loads the language model itself")
    if dtype is not None:
        if isinstance(dtype, str) and dtype != "auto":
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype):
                raise ValueError(f"dtype: unknown torch dtype {dtype!r}")
            dtype = resolved
        kwargs["dtype"] = dtype
    auto_class = getattr(transformers, spec.auto_class)

    if is_hub_model_id(model):
        config = _hub_config(model)
        _check_kind(model, config.to_dict(), task, new_head)
        with _hub_errors(model):
            tokenizer = transformers.AutoTokenizer.from_pretrained(model)
        check_vocab(tokenizer, config, model)
        with _hub_errors(model):
            loaded = auto_class.from_pretrained(model, **({} if new_head else {"config": config}), **kwargs)
        return loaded.eval(), tokenizer

    path, raw = check_model_folder(model)
    _check_kind(str(path), raw, task, new_head)
    config = load_config(path, raw)
    # The saved weights are those of the folder's model: a language model's when a new head goes on its body.
    mapping = getattr(modeling_auto, TASKS["text-generation"].mapping if new_head else spec.mapping)
    model_class = mapping.get(type(config), None)  # None: a model transformers does not know; from_pretrained says so
    if model_class is not None:
        check_weights(path, config, model_class)
    tokenizer = load_tokenizer(path)
    check_vocab(tokenizer, config, path)
    # A new head's settings (num_labels, ...) go to the config that from_pretrained reads from the folder.
    loaded = auto_class.from_pretrained(path, **({} if new_head else {"config": config}), **kwargs)
    return loaded.eval(), tokenizer


def _hub_config(repo_id: str):
    from transformers import AutoConfig

    with _hub_errors(repo_id):
        return AutoConfig.from_pretrained(repo_id)


@contextmanager
def _hub_errors(repo_id: str):
    """Turn what transformers and huggingface_hub raise for a Hub model that cannot be fetched into one error of
    ours, naming the model: ConnectionError, FileNotFoundError, PermissionError (all printed by the CLI)."""
    try:
        yield
    except OSError as error:  # transformers re-raises hub errors as OSError, the hub's own error as its cause
        raise _hub_error(repo_id, error) from error


def _hub_error(repo_id: str, error: BaseException) -> Exception:
    from huggingface_hub import errors, is_offline_mode

    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__

    def found(kind):
        return any(isinstance(e, kind) for e in chain)

    start = f"cannot load model {repo_id!r}: not a local folder, and"
    if found(errors.GatedRepoError):
        return PermissionError(f"{start} its Hugging Face Hub repository is gated: accept its conditions on the "
                               "Hub, then log in (`hf auth login`)")
    if found(errors.RepositoryNotFoundError):
        return FileNotFoundError(f"{start} no model repository of that name on the Hugging Face Hub (or a private "
                                 "one: log in with `hf auth login`)")
    if found(errors.RevisionNotFoundError):
        return FileNotFoundError(f"{start} its Hugging Face Hub repository has no such revision")
    if found(errors.LocalEntryNotFoundError) or found(ConnectionError) or found(TimeoutError) or any(
        cls.__name__ == "TransportError" for e in chain for cls in type(e).__mro__  # httpx's network errors
    ):
        reason = ("HF_HUB_OFFLINE is set and the model is not in the local cache" if is_offline_mode()
                  else " ".join(str(chain[-1]).split()) or type(chain[-1]).__name__)
        return ConnectionError(f"{start} the Hugging Face Hub could not be reached ({reason})")
    message = " ".join(str(chain[0]).split())
    if found(errors.EntryNotFoundError):
        return FileNotFoundError(f"cannot load model {repo_id!r} from the Hugging Face Hub: {message}")
    return ValueError(f"cannot load model {repo_id!r} from the Hugging Face Hub: {message}")


__all__ = [
    "TASKS", "UnknownConfigFieldsWarning", "check_model", "check_model_folder", "check_vocab", "check_weights",
    "is_hub_model_id", "load_config", "load_model", "load_tokenizer",
]
