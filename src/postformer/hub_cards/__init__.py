"""Model cards (the README.md of a Hub repository) rendered from what a saved Postformer folder holds.

`render_model_card(folder)` reads the folder and fills `model_card_template.md` through huggingface_hub's
`ModelCard.from_template`; `write_model_card(folder)` writes the result as `folder/README.md`; and
`validate_model_card(card_or_path)` checks a card's metadata offline (the Hub's own `ModelCard.validate` needs
the network).

Which file feeds which part of the card:

- `config.json` (required): pipeline_tag (from `architectures`), the architecture table, the labels of a
  classifier, the context length in the limits.
- `model.safetensors` (or the shards of `model.safetensors.index.json`): the parameter count, read from the
  tensor headers.
- `training_config.json`: the training-data section (`data` null means the bundled posts sample), the licence,
  `datasets`, the hyper-parameter table, the prompt of the usage snippet.
- `metrics.json`: `model-index` and the evaluation table (`eval_*` or plain names), the run facts.
- `compression_report.json`: the compression table, the `compressed` tag, and the evaluation of the compressed
  model when it records one (a compressed folder's metrics.json is the source model's, copied along).
- `loss_curve.png`: the loss-curve section.
- the README.md beside user data: embedded in the training-data section; its `license` is the card's licence.

A missing optional file drops its section.
"""

import json
import math
import re
import struct
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..saving import write_text

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"
BUNDLED_DATA_CARD = Path(__file__).resolve().parent.parent / "data" / "posts" / "README.md"
BUNDLED_DATA_LICENSE = "mit"
BUNDLED_DATASET_ID = "fb-posts"
DEFAULT_PROMPT = "Breaking news:"

# Licence identifiers the Hub accepts in `license:` (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset("""
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0
    gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0
    postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2
    llama3.3 gemma unknown other
""".split())

# The Hub's pipeline tags (huggingface.js, packages/tasks/src/pipelines.ts).
PIPELINE_TAGS = frozenset("""
    biology text-classification token-classification table-question-answering question-answering
    zero-shot-classification translation summarization feature-extraction text-generation text2text-generation
    fill-mask sentence-similarity text-to-speech text-to-audio automatic-speech-recognition audio-to-audio
    audio-classification audio-text-to-text voice-activity-detection depth-estimation image-classification
    object-detection image-segmentation text-to-image image-to-text image-to-image image-to-video
    unconditional-image-generation video-classification reinforcement-learning robotics tabular-classification
    tabular-regression tabular-to-text table-to-text multiple-choice text-ranking text-retrieval
    time-series-forecasting text-to-video image-text-to-text visual-question-answering document-question-answering
    zero-shot-image-classification graph-ml mask-generation zero-shot-object-detection text-to-3d image-to-3d
    image-feature-extraction video-text-to-text keypoint-detection visual-document-retrieval any-to-any other
""".split())

# ISO 639-1/2/3 codes with optional subtags ("en", "pt-BR"), and the Hub's special values.
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_SPECIAL_LANGUAGES = {"code", "multilingual"}
_LIBRARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# (metric id in model-index, name in the card, keys tried in metrics.json: training's eval_* name first)
LM_METRICS = (
    ("perplexity", "Perplexity", ("eval_perplexity", "perplexity")),
    ("loss", "Cross-entropy loss (nats per token)", ("eval_loss", "loss")),
    ("bits-per-character", "Bits per character", ("eval_bits_per_character", "bits_per_character")),
)
CLASSIFIER_METRICS = (
    ("accuracy", "Accuracy", ("eval_accuracy", "accuracy")),
    ("f1", "Macro F1", ("eval_macro_f1", "macro_f1")),
    ("loss", "Cross-entropy loss", ("eval_loss", "loss")),
)
TASKS = {  # architectures suffix -> pipeline tag, Auto class of the usage snippet
    "ForCausalLM": ("text-generation", "AutoModelForCausalLM"),
    "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "Model": ("feature-extraction", "AutoModel"),
}


def render_model_card(model_dir: str | Path, base_model: str | None = None, *, license: str | None = None) -> ModelCard:
    """The model card of the saved model in `model_dir`, built from the files the folder holds.

    `base_model`: the model this one was fine-tuned (or compressed) from. A Hub id ("user/name") goes into the
    metadata, which links the two on the Hub; a local folder is only named in the text, since the Hub cannot
    resolve it. `license`: the card's licence; by default "mit" when training used the bundled posts sample,
    the `license` of the data's README when it has one, else "other".

    Raises FileNotFoundError when `model_dir` is not a model folder (no config.json), ValueError when one of
    its JSON files is not valid JSON.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    config = _read_json(folder / "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder} is not a saved model: config.json is missing")
    training = _read_json(folder / "training_config.json")
    metrics = _read_json(folder / "metrics.json") or {}
    compression = _read_json(folder / "compression_report.json")

    task, auto_class = _task(config)
    name = folder.resolve().name
    data = _training_data(training)
    license = license or data["license"]
    hub_base_model = _hub_id(base_model)

    # A compressed folder's metrics.json is the source model's, copied along: its own evaluation is in the report.
    compressed_eval = compression.get("evaluation") if isinstance(compression, dict) else None
    if isinstance(compressed_eval, dict) and isinstance(compressed_eval.get("after"), dict):
        described = compressed_eval.get("data")
        eval_data = {**data, **({"name": str(described), "description": str(described)} if described else {})}
        eval_results = _eval_results(compressed_eval["after"], task, eval_data, name)
        evaluation_note = f"Measured on the compressed weights, on {eval_data['description']}, as recorded in " \
            "`compression_report.json`."
    else:
        eval_results = _eval_results(metrics, task, data, name)
        split = eval_results[0].dataset_split if eval_results else "validation"
        limit = (training or {}).get("max_eval_posts")
        evaluation_note = f"Measured at the end of training, on the {split} split of {data['description']}" + \
            (f" (at most its first {limit} posts)" if limit else "") + ", as recorded in `metrics.json`."

    tags = ["postformer", "social-media", "custom_code"]
    tags += [BUNDLED_DATASET_ID] if data["bundled"] else []
    tags += ["fine-tuned"] if base_model else []
    tags += ["compressed"] if compression is not None else []
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag=task,
        tags=tags,
        datasets=[data["id"]] if data["id"] else None,
        base_model=hub_base_model,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    parameters = _parameter_count(folder, config, metrics)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        title=name,
        summary=_summary(task, parameters, data, base_model, compression is not None),
        model_description=_model_description(config, task),
        architecture=_architecture_rows(config, parameters),
        compression=_flatten(compression) if isinstance(compression, dict) else None,
        task=task,
        label_names=", ".join(f"`{label}`" for label in _labels(config)),
        context=config.get("max_position_embeddings", "?"),
        data_nature=data["nature"],
        bundled_data=data["bundled"],
        data_section=data["section"],
        hyperparameters=_hyperparameter_rows(training) if training else None,
        run_facts=_run_facts(metrics),
        base_model_note=_base_model_note(base_model, hub_base_model),
        evaluation=[(r.metric_name, _format_metric(r.metric_value)) for r in eval_results],
        evaluation_note=evaluation_note,
        loss_curve=(folder / "loss_curve.png").is_file(),
        usage=_usage(task, auto_class, name, training),
        generation_defaults=_generation_defaults(_read_json(folder / "generation_config.json"), config),
    )


def write_model_card(model_dir: str | Path, base_model: str | None = None, *, license: str | None = None) -> Path:
    """Render the card of `model_dir` (see `render_model_card`), check it, and write it as `model_dir/README.md`,
    replacing any card there. Returns the README's path.

    The file is written to a temporary file in the same folder and moved into place, so a reader (or an upload)
    never sees half a card, and a failure leaves the previous card as it was.
    """
    folder = Path(model_dir)
    card = validate_model_card(render_model_card(folder, base_model, license=license))
    return write_text(folder / "README.md", str(card))


def validate_model_card(card_or_path: "ModelCard | str | Path") -> ModelCard:
    """Check a model card's metadata without the network and return the parsed card.

    `card_or_path`: a ModelCard, the card's text, a README.md, or a folder holding one. Checked: `license`
    (required, a Hub licence identifier), `language` (ISO 639 codes), `library_name`, `pipeline_tag` (a Hub
    pipeline tag), `tags` and `datasets` (strings), `base_model` (a string, or a list of them) and `model-index`
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


# --- checks ---------------------------------------------------------------------------------------------------


def _check_metadata(metadata: dict) -> None:
    license = metadata.get("license")
    if license is None:
        raise ValueError("license: missing; give a Hub licence identifier such as 'mit', or 'other'")
    if not isinstance(license, str) or license not in HUB_LICENSES:
        raise ValueError(f"license: {license!r} is not a Hub licence identifier (e.g. 'mit', 'apache-2.0', 'other')")
    for field in ("license_name", "license_link", "library_name", "pipeline_tag"):
        if field in metadata and not (isinstance(metadata[field], str) and metadata[field]):
            raise ValueError(f"{field}: must be a non-empty string, got {metadata[field]!r}")
    if "library_name" in metadata and not _LIBRARY_NAME.fullmatch(metadata["library_name"]):
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
            if not (_LANGUAGE.fullmatch(code) or code in _SPECIAL_LANGUAGES):
                raise ValueError(f"language: {code!r} is not an ISO 639 code such as 'en'")
    for field in ("tags", "datasets", "base_model"):
        if field in metadata:
            _string_list(metadata, field)
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


# --- reading the folder ---------------------------------------------------------------------------------------


def _read_json(path: Path):
    """The JSON in `path`, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _task(config: dict) -> tuple[str, str]:
    """Pipeline tag and Auto class from config.json's `architectures` (a causal LM when it names none)."""
    for architecture in config.get("architectures") or []:
        for suffix, task in TASKS.items():
            if architecture.endswith(suffix):
                return task
    return TASKS["ForCausalLM"]


def _labels(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k) if str(k).isdigit() else 0)]


def _parameter_count(folder: Path, config: dict, metrics: dict) -> int | None:
    """Parameters of the saved weights, from the safetensors headers (shapes only, no tensor is read).

    Quantized weights store packed data and scales, whose element counts are not the parameter count: for them
    (config.json has a quantization_config) metrics.json's `parameters` is used when present."""
    if config.get("quantization_config") and isinstance(metrics.get("parameters"), int):
        return metrics["parameters"]
    index = _read_json(folder / "model.safetensors.index.json")
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


def _training_data(training: dict | None) -> dict:
    """What the card says about the training data: licence, dataset id, description, section text."""
    if training is None:
        return dict(bundled=False, license="other", id=None, name="posts", description="the held-out posts",
                    section=None,
                    nature="This folder does not record which posts the model was trained on (it has no "
                    "`training_config.json`): find out before you use it.")
    if training.get("data") is None:
        card = _embed_markdown(BUNDLED_DATA_CARD.read_text(encoding="utf-8")) if BUNDLED_DATA_CARD.is_file() else ""
        section = (
            "The bundled posts sample of `postformer`: 5,000 public Facebook **page** posts (news outlets, "
            "politicians, athletes, brands, \"Humans of ...\" pages; 2008-2017; mostly English), a fixed sample of "
            "the fb-posts corpus (GitHub `naman/fb-posts-dataset`), split 4,000 / 500 / 500 into train, validation "
            "and test. The model was trained on the train split and evaluated on the validation split.\n\n"
            "Licence: **MIT**, Copyright (c) 2017 Naman Gupta, from the person who compiled the corpus; the post "
            "texts were written by the pages' owners."
        )
        if card:  # whole, as it ships: its caveats (licence, page selection, stances) are the ones that matter
            section += (
                "\n\nThe sample's data card follows; the files it names (`LICENSE`, `train.jsonl`, ...) are in the "
                "`postformer` package's `data/posts/` folder, not beside this model.\n\n<details>\n"
                f"<summary>Data card of the bundled sample</summary>\n\n{card}\n\n</details>"
            )
        return dict(bundled=True, license=BUNDLED_DATA_LICENSE, id=BUNDLED_DATASET_ID,
                    name="fb-posts (postformer's bundled 5,000-post sample)",
                    description="the bundled posts sample", section=section,
                    nature="This model was trained on public Facebook page posts (news outlets, politicians, athletes, "
                    "brands, \"Humans of ...\" pages) from 2008-2017, mostly in English: what those pages chose to "
                    "publish, not a picture of social media, of the public, or of the world.")
    data = Path(str(training["data"]))
    field = training.get("text_field", "text")
    section = f"Posts from `{data}` (text in the `{field}` field), as given to training."
    readme = (data if data.is_dir() else data.parent) / "README.md"
    license = "other"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        license = _readme_license(text) or license
        section += f" Its README (`{readme}`) follows.\n\n{_embed_markdown(text)}"
    else:
        section += " No README lies beside the data, so its source and licence are not recorded here."
    if license == "other":
        section += "\n\nThe licence of these posts is not known (`license: other`): check it before publishing."
    dataset_id = re.sub(r"[^A-Za-z0-9._-]+", "-", data.stem if data.suffix else data.name).strip("-.") or "posts"
    return dict(bundled=False, license=license, id=dataset_id, name=str(data), description=f"`{data}`",
                section=section,
                nature=f"This model was trained on the posts in `{data}` (see Training data): it knows those "
                "posts, their authors' opinions and their time, not social media, the public or the world in general.")


def _readme_license(text: str) -> str | None:
    """The `license` of a dataset card's metadata, when it is one Hub licence identifier."""
    match = REGEX_YAML_BLOCK.search(text)
    try:
        metadata = yaml.safe_load(match.group(2)) if match else None
    except yaml.YAMLError:
        return None
    license = metadata.get("license") if isinstance(metadata, dict) else None
    if isinstance(license, list) and len(license) == 1:
        license = license[0]
    return license if isinstance(license, str) and license in HUB_LICENSES else None


def _embed_markdown(text: str, shift: int = 2) -> str:
    """A markdown document as part of the card: its YAML block dropped, its headings `shift` levels deeper (so
    they nest under the card's own), code blocks untouched."""
    match = REGEX_YAML_BLOCK.search(text)
    if match:
        text = text[match.end():]
    lines, fenced = [], False
    for line in text.strip().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        heading = None if fenced else re.match(r"(#{1,6})(\s.*)", line)
        if heading:
            line = "#" * min(6, len(heading.group(1)) + shift) + heading.group(2)
        lines.append(line)
    return "\n".join(lines)


def _eval_results(metrics: dict, task: str, data: dict, name: str) -> list[EvalResult]:
    """One EvalResult per known metric that `metrics` holds as a finite number."""
    specs = CLASSIFIER_METRICS if task == "text-classification" else LM_METRICS if task == "text-generation" else ()
    results = []
    for metric_type, metric_name, keys in specs:
        value = next((metrics[k] for k in keys if k in metrics), None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        results.append(EvalResult(
            task_type=task,
            dataset_type=data["id"] or "posts",
            dataset_name=data["name"],
            dataset_split=str(metrics.get("split", "validation")),
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=value,
            metric_args={"average": "macro"} if metric_type == "f1" else None,
        ))
    return results


# --- formatting -----------------------------------------------------------------------------------------------


def _hub_id(base_model: str | None) -> str | None:
    """`base_model` when it can be a Hub model id (and is not a local folder), else None."""
    if not base_model or Path(base_model).is_dir():
        return None
    try:
        validate_repo_id(base_model)
    except HFValidationError:
        return None
    return base_model


def _base_model_note(base_model: str | None, hub_id: str | None) -> str | None:
    if not base_model:
        return None
    if hub_id:
        return f"Fine-tuned from [`{hub_id}`](https://huggingface.co/{hub_id})."
    return (f"Fine-tuned from the local model `{base_model}`. Set `base_model:` in the metadata above to its Hub "
            "id once it is uploaded, so the Hub links the two.")


def _summary(task, parameters, data, base_model, compressed) -> str:
    kind = {"text-generation": "language model that writes social-media posts",
            "text-classification": "classifier of social-media posts"}.get(task, "encoder of social-media posts")
    size = f"{_approximate(parameters)}-parameter " if parameters else ""
    text = f"A {size}Postformer {kind}"
    if base_model:
        text += f", fine-tuned from `{base_model}`"
    if data["section"]:
        text += f", trained on {data['description']}"
    text += "."
    if compressed:
        text += " Its weights were compressed after training (see Compression)."
    return text + " Postformer is a decoder-only transformer for short posts; this card was generated from the " \
        "files saved with the model."


def _model_description(config: dict, task: str) -> str:
    architecture = (config.get("architectures") or ["PostformerForCausalLM"])[0]
    head = {"text-generation": "a language-model head tied to the token embeddings"
            if config.get("tie_word_embeddings", True) else "a language-model head",
            "text-classification": "a linear head on the last non-padding token"}.get(task, "no head")
    return (f"`{architecture}`: a decoder-only transformer (pre-norm blocks of causal self-attention and a "
            f"feed-forward layer) with {head}. The numbers below are read from `config.json` and the saved weights.")


def _architecture_rows(config: dict, parameters: int | None) -> list[tuple[str, str]]:
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    grouped = isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads < heads
    positions = config.get("position_embedding_type")
    if positions is not None and config.get("use_relative_position"):
        positions += f" + relative (Shaw et al., clipped at {config.get('max_relative_position')})"
    rows = [
        ("Parameters", _format(parameters)),
        ("Hidden size", _format(config.get("hidden_size"))),
        ("Layers", _format(config.get("num_hidden_layers"))),
        ("Attention heads", _format(heads)),
        ("Key-value heads", _format(kv_heads) + (" (grouped-query attention)" if grouped else "")),
        ("Intermediate (feed-forward) size", _format(config.get("intermediate_size"))),
        ("Activation", _format(config.get("hidden_act"))),
        ("Positions", _format(positions)),
        ("Context (tokens)", _format(config.get("max_position_embeddings"))),
        ("Vocabulary", _format(config.get("vocab_size"))),
        ("Tied input and output embeddings", _format(config.get("tie_word_embeddings"))),
        ("Weights dtype", _format(config.get("dtype") or config.get("torch_dtype"))),
    ]
    if config.get("id2label") and _task(config)[0] == "text-classification":
        rows.append(("Labels", ", ".join(f"`{label}`" for label in _labels(config))))
    return [(label, value) for label, value in rows if value != "-"]


def _hyperparameter_rows(training: dict) -> list[tuple[str, str]]:
    rows = []
    for key, value in training.items():
        if key == "output_dir":  # where it ran, not how
            continue
        if value is None:
            if key == "data":
                value = "the bundled posts sample"
            elif key == "tokenizer":
                value = "trained for this run"
            else:  # a model option left to the preset: the architecture table has the value used
                continue
        rows.append((key, _format(value)))
    return rows


def _run_facts(metrics: dict) -> list[tuple[str, str]]:
    """metrics.json's numbers about the run itself (runtime, training loss, ...), not the evaluation."""
    return [(key, _format(value)) for key, value in metrics.items()
            if not key.startswith("eval_") and key != "parameters" and isinstance(value, (int, float))
            and not isinstance(value, bool)]


def _flatten(report: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """A JSON report as table rows with dotted keys; long or deep parts are summarised, not spelled out."""
    rows = []
    for key, value in report.items():
        label = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) <= 8 and depth < 2:
            rows += _flatten(value, label + ".", depth + 1)
            continue
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        if len(items) > 8 or any(isinstance(item, (dict, list)) for item in items):
            rows.append((f"`{label}`", f"{len(items)} entries (see `compression_report.json`)"))
        else:
            rows.append((f"`{label}`", _format(value)))
    return rows


def _format(value) -> str:
    """A value as a markdown table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".ein") else text + ".0"  # 1.0 stays a float: "1.0", not "1"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) if not isinstance(v, str) else repr(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_format(v)}" for k, v in value.items()) or "(none)"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _approximate(count: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return str(count)


def _format_metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else _format(value)


def _literal(text: str) -> str:
    """A Python string literal in double quotes (JSON's string syntax is valid Python)."""
    return json.dumps(text, ensure_ascii=False)


def _generation_defaults(generation: dict | None, config: dict) -> str | None:
    """What the folder's generation_config.json changes from plain generation, in words (None: nothing)."""
    if not generation:
        return None
    names = {config.get(f"{name}_token_id"): token for name, token in
             (("pad", "<pad>"), ("bos", "<s>"), ("eos", "</s>"), ("sep", "<sep>"))}
    named = lambda ids: " or ".join(f"`{names.get(i, i)}`" for i in ids)  # noqa: E731
    eos = generation.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    suppressed = list(generation.get("suppress_tokens") or [])
    parts = []
    if len(eos) > 1:
        parts.append(f"generation stops at {named(eos)} (`eos_token_id` {eos})")
    if suppressed:
        parts.append(f"{named(suppressed).replace(' or ', ' and ')} are never generated (`suppress_tokens` {suppressed})")
    if not parts:
        return None
    return ("`generation_config.json` holds the posts defaults, which `generate` and `pipeline` use: "
            + "; ".join(parts) + ". Pass other values to `generate` to change them.")


def _usage(task: str, auto_class: str, name: str, training: dict | None) -> str:
    """A snippet that runs as written in the folder's parent (and, with the Hub id as model_id, anywhere)."""
    prompts = (training or {}).get("sample_prompts") or []
    prompt = next((p for p in prompts if isinstance(p, str) and p.strip()), DEFAULT_PROMPT)
    head = (
        f"from transformers import {auto_class}, AutoTokenizer, pipeline"
        f"{', set_seed' if task == 'text-generation' else ''}\n\n"
        f"model_id = {_literal(name)}  # this folder, or its Hub id once uploaded (\"your-name/{name}\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)\n"
        f"model = {auto_class}.from_pretrained(model_id, trust_remote_code=True)\n"
    )
    if task == "text-classification":
        return head + (
            f"\ninputs = tokenizer({_literal(prompt)}, return_tensors=\"pt\")\n"
            "probabilities = model(**inputs).logits.softmax(-1)[0]\n"
            "print({model.config.id2label[i]: round(p, 3) for i, p in enumerate(probabilities.tolist())})\n\n"
            "classifier = pipeline(\"text-classification\", model=model_id, trust_remote_code=True)\n"
            f"print(classifier({_literal(prompt)}, top_k=None))"
        )
    if task == "feature-extraction":
        return head + (
            f"\ninputs = tokenizer({_literal(prompt)}, return_tensors=\"pt\")\n"
            "print(model(**inputs).last_hidden_state.shape)"
        )
    return head + (
        "\nset_seed(0)  # the same continuation on every run\n"
        f"inputs = tokenizer({_literal(prompt)}, return_tensors=\"pt\")\n"
        "output = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.95)\n"
        "print(tokenizer.decode(output[0], skip_special_tokens=True))\n\n"
        "generator = pipeline(\"text-generation\", model=model_id, trust_remote_code=True)\n"
        f"print(generator({_literal(prompt)}, max_new_tokens=40, do_sample=True)[0][\"generated_text\"])"
    )


__all__ = ["render_model_card", "write_model_card", "validate_model_card", "HUB_LICENSES", "PIPELINE_TAGS"]
