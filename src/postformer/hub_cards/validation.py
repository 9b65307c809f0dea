"""`validate_model_card`: a card's metadata checked offline, field by field, with one clear error naming the
first invalid field (the Hub's own `ModelCard.validate` needs the network)."""

import math
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .metadata import HUB_LICENSES, LANGUAGE_CODE, LIBRARY_NAME, PIPELINE_TAGS, SPECIAL_LANGUAGES


def validate_model_card(card_or_path: "ModelCard | str | Path") -> ModelCard:
    """Check a model card's metadata without the network and return the parsed card.

    `card_or_path`: a ModelCard, the card's text, a README.md, or a folder holding one. Checked: `license`
    (required, a Hub licence identifier), `language` (ISO 639 codes), `library_name`, `pipeline_tag` (a Hub
    pipeline tag), `tags` (strings), `datasets` and `base_model` (Hub ids, one or a list: a local path, which
    the Hub cannot resolve and which names the user's folders, belongs in the card's text) and `model-index`
    (parsed by huggingface_hub; every metric value a finite number). Raises ValueError naming the first invalid
    field, FileNotFoundError when the path holds no card.
    """
    if isinstance(card_or_path, ModelCard):
        text = str(card_or_path)
    elif isinstance(card_or_path, str) and "\n" in card_or_path:
        text = card_or_path
    else:
        path = Path(card_or_path)
        path = path / "README.md" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"model card not found: {path}")
        text = path.read_text(encoding="utf-8-sig")

    # The raw YAML, not ModelCardData: it keeps types as written (license: 123) and the model-index as is.
    match = REGEX_YAML_BLOCK.search(text)
    if match is None:
        raise ValueError("metadata: the card has no YAML block (between '---' lines at the top)")
    try:
        metadata = yaml.safe_load(match.group(2)) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"metadata: not valid YAML: {error}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata: must be a mapping of fields to values, got {type(metadata).__name__}")
    _check_metadata(metadata)
    try:
        return ModelCard(text)
    except ValueError as error:
        raise ValueError(f"metadata: {error}") from None


def _check_metadata(metadata: dict) -> None:
    license = metadata.get("license")
    if license is None:
        raise ValueError("license: missing; give a Hub licence identifier such as 'mit', or 'other'")
    if not isinstance(license, str) or license not in HUB_LICENSES:
        raise ValueError(f"license: {license!r} is not a Hub licence identifier (e.g. 'mit', 'apache-2.0', 'other')")
    for field in ("license_name", "license_link", "library_name", "pipeline_tag"):
        if field in metadata and not (isinstance(metadata[field], str) and metadata[field]):
            raise ValueError(f"{field}: must be a non-empty string, got {metadata[field]!r}")
    if "library_name" in metadata and not LIBRARY_NAME.fullmatch(metadata["library_name"]):
        raise ValueError(
            f"library_name: {metadata['library_name']!r} is not a library identifier such as 'transformers'"
        )
    if "pipeline_tag" in metadata and metadata["pipeline_tag"] not in PIPELINE_TAGS:
        raise ValueError(
            f"pipeline_tag: {metadata['pipeline_tag']!r} is not a Hub pipeline tag (e.g. 'text-generation', "
            "'text-classification')"
        )
    if "language" in metadata:
        for code in _string_list(metadata, "language"):
            if not (LANGUAGE_CODE.fullmatch(code) or code in SPECIAL_LANGUAGES):
                raise ValueError(f"language: {code!r} is not an ISO 639 code such as 'en'")
    for field in ("tags", "datasets", "base_model"):
        if field in metadata:
            values = _string_list(metadata, field)
            for value in values if field != "tags" else ():
                try:
                    validate_repo_id(value)
                except HFValidationError:
                    kind = "dataset" if field == "datasets" else "model"
                    raise ValueError(f"{field}: {value!r} is not a Hub {kind} id ('name' or 'namespace/name'); "
                                     "name local data or models in the card's text instead") from None
    if "model-index" in metadata:
        _check_model_index(metadata["model-index"])


def _string_list(metadata: dict, field: str) -> list[str]:
    """A field that may be one string or a list of strings, as a list; ValueError naming it otherwise."""
    value = metadata[field]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{field}: must be a non-empty string or a list of them, got {value!r}")
    return values


def _check_model_index(model_index) -> None:
    if not isinstance(model_index, list) or not model_index:
        raise ValueError(f"model-index: must be a non-empty list, got {model_index!r}")
    try:
        name, results = model_index_to_eval_results(model_index)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"model-index: malformed ({type(error).__name__}: {error}); each entry needs name and "
                         "results, each result task.type, dataset.type, dataset.name and metrics") from None
    if not isinstance(name, str) or not name:
        raise ValueError(f"model-index: name must be a non-empty string, got {name!r}")
    for result in results:
        for field in ("task_type", "dataset_type", "dataset_name", "metric_type"):
            if not isinstance(getattr(result, field), str) or not getattr(result, field):
                raise ValueError(f"model-index: {field.replace('_', '.', 1)} must be a non-empty string, "
                                 f"got {getattr(result, field)!r}")
        value = result.metric_value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"model-index: the value of metric {result.metric_type!r} must be a finite number, "
                             f"got {value!r}")
