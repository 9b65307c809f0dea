"""Publish a model folder on the Hugging Face Hub: check it, list what goes up, upload it in one commit.

A model folder is what `save_pretrained` of a `PostformerForCausalLM` and of its tokenizer write, plus the model
card (README.md); training and fine-tuning also leave things that must not be published: per-post dumps
(classify-train's eval_predictions.jsonl holds the held-out posts verbatim; training's samples.jsonl, the
generations logged at each evaluation, can repeat training posts), checkpoint-*/ folders (optimizer state, often
larger than the model), runs/ (TensorBoard logs), training_args.bin and other pickles (a pickle runs code when
loaded, and the Hub flags it), hidden and temporary files. `upload_plan` says exactly which files would be
uploaded and refuses a folder that would not load from the Hub; `left_out` says what is not and why;
`push_to_hub` uploads the planned files and nothing else.

Only the standard library is imported at module level, so the CLI can name this module's errors cheaply.
"""

import json
import os
import re
from fnmatch import fnmatchcase
from pathlib import Path

# What is never uploaded, and why, as the glob patterns `HfApi.upload_folder` takes (fnmatch: `*` also matches
# "/"); the first group that matches gives the reason. The plan filters with these same patterns, so the plan and
# the upload cannot disagree.
LEFT_OUT = (
    # Per-post dumps that postformer writes into model folders: the user's data, or text that can repeat it.
    (("eval_predictions.jsonl", "*/eval_predictions.jsonl"),
     "classify-train's predictions: every held-out post, verbatim, with its label"),
    (("samples.jsonl", "*/samples.jsonl"),
     "the generations logged during training, which can repeat training posts verbatim"),
    # hidden files and folders at any depth: .git, .cache, .ipynb_checkpoints, .DS_Store
    ((".*", "*/.*"), "hidden"),
    (("checkpoint-*", "*/checkpoint-*", "tmp-checkpoint-*"), "a Trainer checkpoint (optimizer and RNG state)"),
    (("runs/*", "*/runs/*", "wandb/*"), "experiment-tracking logs"),
    (("*__pycache__*", "*.pyc"), "Python bytecode"),
    # training_args.bin, pytorch_model.bin, optimizer.pt, ...
    (("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"), "a pickle: loading one runs arbitrary code"),
    # editors, interrupted writes, lock files
    (("tmp*", "*/tmp*", "*.tmp", "*.temp", "*~", "*.swp", "*.swo", "*.lock", "*.part", "*.partial", "*.incomplete"),
     "a temporary or partial file"),
)
IGNORE_PATTERNS = tuple(pattern for patterns, _ in LEFT_OUT for pattern in patterns)
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
CARD_HINT = "write it with postformer.hub_cards.write_model_card(model_dir)"


class HubAuthenticationError(ValueError):
    """No Hub token was found, or the Hub refused the one given."""


class HubConnectionError(ConnectionError):
    """The Hub could not be reached (no network, wrong HF_ENDPOINT, offline mode, server error)."""


class HubRequestError(ValueError):
    """The Hub answered, and refused the request (bad repository name, no access, ...)."""


def _why_left_out(path_in_repo: str) -> str | None:
    """Why the file (or folder, ending in "/") is never uploaded, or None when it may be."""
    for patterns, reason in LEFT_OUT:
        if any(fnmatchcase(path_in_repo, pattern) for pattern in patterns):
            return reason
    return None


def _walk(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Every file that may be uploaded, by its path in the repository (POSIX), with its size in bytes; and what
    is left out, with why (a left-out folder is one entry, ending in "/")."""
    files, left_out = {}, []
    for root, dirs, names in os.walk(folder):
        relative_root = Path(root).relative_to(folder)
        kept = []
        for name in sorted(dirs):  # an ignored folder is not walked into: checkpoints can hold many large files
            path_in_repo = (relative_root / name).as_posix() + "/"
            reason = _why_left_out(path_in_repo)
            if reason:
                left_out.append((path_in_repo, reason))
            else:
                kept.append(name)
        dirs[:] = kept
        for name in names:
            path = Path(root) / name
            path_in_repo = (relative_root / name).as_posix()
            reason = _why_left_out(path_in_repo)
            if reason:
                left_out.append((path_in_repo, reason))
            elif path.is_file():
                files[path_in_repo] = path.stat().st_size
    return dict(sorted(files.items())), sorted(left_out)


def left_out(model_dir) -> list[tuple[str, str]]:
    """What `push_to_hub` never uploads from `model_dir`, and why: (path in the repository, reason) pairs, sorted
    by path; a folder left out is one entry, its path ending in "/". See LEFT_OUT."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"model folder {str(folder)!r} is not a folder")
    return _walk(folder)[1]


def _check_weights(folder: Path, files: dict[str, int], missing: list[str], bad: list[str]) -> None:
    if "model.safetensors" in files:
        return
    if "model.safetensors.index.json" in files:
        try:
            index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            bad.append(f"model.safetensors.index.json is not a safetensors index ({error!r})")
            return
        missing.extend(f"{shard} (a weights shard listed in model.safetensors.index.json)"
                       for shard in shards if shard not in files)
        return
    note = ""
    if any((folder / name).is_file() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        note = (" (pytorch_model.bin is a pickle and is never uploaded: re-save the model with save_pretrained, "
                "which writes safetensors)")
    missing.append(f"model weights: model.safetensors or model.safetensors.index.json with its shards{note}")


def _read_config(folder: Path, files: dict[str, int], missing: list[str], bad: list[str]) -> dict | None:
    if "config.json" not in files:
        missing.append("config.json")
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        bad.append(f"config.json is not readable JSON ({error})")
        return None
    if not isinstance(config, dict):
        bad.append("config.json is not a JSON object")
        return None
    return config


def _check_auto_map(folder: Path, config: dict, files: dict[str, int], missing: list[str], bad: list[str]) -> None:
    """The auto_map is what lets `from_pretrained(..., trust_remote_code=True)` find the model's code in the repo;
    each entry names `module.Class`, and module.py must go up with the weights, with the files it imports."""
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        bad.append(
            "config.json has no auto_map, so the model would not load from the Hub with trust_remote_code=True "
            "(re-save it with save_pretrained of a PostformerForCausalLM, which writes the auto_map and the code)"
        )
        return
    for auto_class, references in auto_map.items():
        # AutoTokenizer maps to a [slow, fast] pair; either may be None.
        for reference in references if isinstance(references, (list, tuple)) else [references]:
            if reference is None:
                continue
            if not isinstance(reference, str) or "." not in reference:
                bad.append(f"config.json auto_map[{auto_class!r}] = {reference!r} is not 'module.ClassName'")
                continue
            if "--" in reference:  # "other/repo--module.Class": the code lives in another repository
                continue
            module_file = reference.rsplit(".", 1)[0].replace(".", "/") + ".py"
            if module_file not in files:
                missing.append(f"{module_file} (config.json auto_map[{auto_class!r}] points to it)")
                continue
            _check_relative_imports(folder, module_file, files, missing)


# `from .name import ...` and `import .name`, as transformers' dynamic-module loader finds the files it copies
RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\S+)\s+import|import\s+\.(\S+)\s*$)", re.MULTILINE)


def _check_relative_imports(folder: Path, module_file: str, files: dict[str, int], missing: list[str],
                            seen: set | None = None) -> None:
    """The files a remote-code module imports relatively (modeling_postformer.py imports configuration_postformer.py
    and generation_postformer.py) must go up too: transformers loads them beside it."""
    seen = set() if seen is None else seen
    if module_file in seen:
        return
    seen.add(module_file)
    try:
        code = (folder / module_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    parent = module_file.rsplit("/", 1)[0] + "/" if "/" in module_file else ""
    for match in RELATIVE_IMPORT.finditer(code):
        imported = parent + (match.group(1) or match.group(2)).replace(".", "/") + ".py"
        if imported not in files:
            message = f"{imported} (imported by {module_file})"
            if message not in missing:
                missing.append(message)
        else:
            _check_relative_imports(folder, imported, files, missing, seen)


def upload_plan(model_dir) -> list[tuple[str, int]]:
    """Exactly what `push_to_hub` would upload from `model_dir`: (path in the repository, size in bytes) pairs,
    sorted by path.

    Left out (`left_out` lists them, with why): per-post dumps (eval_predictions.jsonl, samples.jsonl),
    checkpoint-*/ folders, runs/ and wandb/ logs, pickles (training_args.bin, *.pt, *.pth, *.pkl, and
    pytorch_model.bin: weights go up as safetensors only), hidden files and folders, temporary files (see
    LEFT_OUT).

    The folder must hold a complete model, else a FileNotFoundError (only things missing) or ValueError (something
    present but unusable) names every problem at once: the weights (model.safetensors, or its index and every shard
    it lists), config.json with an `auto_map`, the .py files the auto_map points to and those they import, the tokenizer
    (tokenizer_config.json and tokenizer.json or another vocabulary file), generation_config.json for a causal LM,
    and the model card README.md, valid by `postformer.hub_cards.validate_model_card`.
    """
    folder = Path(model_dir)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"model folder {str(folder)!r} is not a folder")
    files, _ = _walk(folder)
    missing: list[str] = []
    bad: list[str] = []

    _check_weights(folder, files, missing, bad)
    config = _read_config(folder, files, missing, bad)
    if config is not None:
        _check_auto_map(folder, config, files, missing, bad)
        architectures = config.get("architectures") or []
        causal = any("CausalLM" in name or "LMHead" in name for name in architectures if isinstance(name, str))
        if causal and "generation_config.json" not in files:
            missing.append("generation_config.json (the generation defaults of a causal LM)")
    if "tokenizer_config.json" not in files:
        missing.append("tokenizer_config.json")
    if not any(name in files for name in TOKENIZER_VOCAB_FILES):
        missing.append("tokenizer vocabulary (" + " or ".join(TOKENIZER_VOCAB_FILES) + ")")
    if "README.md" not in files:
        missing.append(f"README.md (the model card: {CARD_HINT})")
    else:
        from .hub_cards import validate_model_card

        try:
            validate_model_card(folder / "README.md")
        except ValueError as error:
            bad.append(f"README.md is not a valid model card: {error}")

    if missing or bad:
        problems = (["missing " + item for item in missing] + bad)
        message = f"{str(folder)!r} is not ready to push: " + "; ".join(problems)
        raise (ValueError if bad else FileNotFoundError)(message)
    return list(files.items())


def format_plan(plan: list[tuple[str, int]], repo_id: str | None = None,
                left_out: list[tuple[str, str]] = ()) -> str:
    """The plan as the CLI prints it: one line per file, then the total; then, when `left_out` (as `left_out`
    returns it) is given, what is not uploaded and why, so that a user can see their data stays home."""
    width = max(len(path) for path, _ in plan)
    lines = [f"{path:<{width}}  {size:>12,} bytes" for path, size in plan]
    total = sum(size for _, size in plan)
    target = f" to {repo_id}" if repo_id else ""
    lines.append(f"{len(plan)} files, {total:,} bytes would be uploaded{target}")
    if left_out:
        width = max(len(path) for path, _ in left_out)
        lines.append(f"left out, never uploaded ({len(left_out)}):")
        lines += [f"  {path:<{width}}  {reason}" for path, reason in left_out]
    return "\n".join(lines)


def _glob_escape(path: str) -> str:
    """A pattern that matches exactly `path` under fnmatch: [, ], * and ? become one-character classes."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in path)


def _translate_hub_error(error: BaseException, endpoint: str, repo_id: str):
    """A one-line error of ours for what huggingface_hub or its HTTP client raised, or None to let it through."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return HubConnectionError(
            "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): unset it to push to the Hub"
        )
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        server_message = getattr(error, "server_message", None) or ""
        detail = f": {server_message.strip()}" if server_message.strip() else ""
        if status == 401:
            return HubAuthenticationError(
                f"the Hub at {endpoint} refused the token (401 Unauthorized){detail}. Log in again with "
                "`hf auth login`, or set HF_TOKEN / pass --token with a valid token"
            )
        if status == 403:
            return HubAuthenticationError(
                f"the token may not write to {repo_id} on {endpoint} (403 Forbidden){detail}. Use a token with "
                "write access (`hf auth login`, or HF_TOKEN / --token), or push to your own namespace"
            )
        if status is not None and status >= 500:
            return HubConnectionError(f"the Hub at {endpoint} answered {status}{detail}: try again later")
        return HubRequestError(f"the Hub at {endpoint} refused the request ({status}){detail}")
    transport_errors = []
    for module_name in ("httpx2", "httpx", "requests"):  # whichever HTTP client this huggingface_hub uses
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            if isinstance(getattr(module, name, None), type):
                transport_errors.append(getattr(module, name))
    if isinstance(error, (ConnectionError, TimeoutError, *transport_errors)):
        return HubConnectionError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({type(error).__name__}: {error}). Check the network "
            "connection, and HF_ENDPOINT if you set it"
        )
    return None


def push_to_hub(
    model_dir,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
):
    """Upload the files of `upload_plan(model_dir)` to the model repository `repo_id`, in one commit.

    dry_run=True checks the folder and returns the plan (a list of (path, size)) without any network access.
    Otherwise: creates the repository if needed (`private` applies only to a new one), creates the branch
    `revision` when it is given and missing, uploads exactly the planned files with `HfApi.upload_folder` and
    `commit_message`, and returns the commit URL.

    token: else HF_TOKEN, else the token saved by `hf auth login`. endpoint: else HF_ENDPOINT (read at call time),
    else https://huggingface.co. Problems reaching or authenticating with the Hub raise HubConnectionError /
    HubAuthenticationError / HubRequestError, each one line saying what to do.
    """
    plan = upload_plan(model_dir)
    if dry_run:
        return plan

    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid repository id {repo_id!r}: expected 'name' or 'namespace/name' ({error})") from None
    if revision is not None and (not revision.strip() or revision != revision.strip()):
        raise ValueError(f"invalid revision {revision!r}: give a branch name such as 'main' or 'v1'")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    if constants.is_offline_mode():
        raise HubConnectionError(
            "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): unset it to push to the Hub"
        )
    token = token or get_token()
    if not token:
        raise HubAuthenticationError(
            "not logged in to the Hugging Face Hub: run `hf auth login`, or set HF_TOKEN (or pass --token) to a "
            "token with write access"
        )

    api = HfApi(endpoint=endpoint, token=token)
    folder = Path(model_dir)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # A bare name is created in the token owner's namespace; later calls need the full id, which the Hub
        # returns (a bare name in /api/models/NAME/... would address a different, canonical repository).
        repo_id = getattr(repo_url, "repo_id", None) or repo_id
        if revision is not None and revision != "main" and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {folder.resolve().name} with postformer",
            allow_patterns=[_glob_escape(path) for path, _ in plan],
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except Exception as error:  # noqa: BLE001  (translated below, or re-raised unchanged)
        translated = _translate_hub_error(error, endpoint, repo_id)
        if translated is None:
            raise
        raise translated from None
    return commit.commit_url


__all__ = [
    "IGNORE_PATTERNS", "LEFT_OUT", "HubAuthenticationError", "HubConnectionError", "HubRequestError", "upload_plan",
    "left_out", "format_plan", "push_to_hub",
]
