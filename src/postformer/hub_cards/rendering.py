"""`render_model_card` and `write_model_card`: the folder's facts put into `model_card_template.md`."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..saving import write_text
from .folder import label_names, parameter_count, read_json, task_of
from .metadata import evaluation_results, hub_id
from .sections import (
    architecture_rows,
    base_model_note,
    flatten,
    format_metric,
    generation_defaults,
    hyperparameter_rows,
    model_description,
    run_facts,
    summary,
)
from .training_data import BUNDLED_DATASET_ID, training_data
from .usage import local_model_id, usage_snippet
from .validation import validate_model_card

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"


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
    config = read_json(folder / "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder} is not a saved model: config.json is missing")
    training = read_json(folder / "training_config.json")
    metrics = read_json(folder / "metrics.json") or {}
    compression = read_json(folder / "compression_report.json")

    task, auto_class = task_of(config)
    name = folder.resolve().name
    data = training_data(training)
    license = license or data["license"]
    hub_base_model = hub_id(base_model)

    # A compressed folder's metrics.json is the source model's, copied along: its own evaluation is in the report.
    compressed_eval = compression.get("evaluation") if isinstance(compression, dict) else None
    if isinstance(compressed_eval, dict) and isinstance(compressed_eval.get("after"), dict):
        described = compressed_eval.get("data")  # the posts' path, or "bundled sample (validation)"
        named = {"name": Path(str(described)).name, "description": str(described)} if described else {}
        eval_data = {**data, **named}  # the metadata gets the file's name, the text its path
        eval_results = evaluation_results(compressed_eval["after"], task, eval_data, name)
        evaluation_note = f"Measured on the compressed weights, on {eval_data['description']}, as recorded in " \
            "`compression_report.json`."
    else:
        eval_results = evaluation_results(metrics, task, data, name)
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
        base_model=hub_base_model,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    parameters = parameter_count(folder, config, metrics)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        title=name,
        summary=summary(task, parameters, data, base_model, compression is not None),
        model_description=model_description(config, task),
        architecture=architecture_rows(config, parameters),
        compression=flatten(compression) if isinstance(compression, dict) else None,
        task=task,
        label_names=", ".join(f"`{label}`" for label in label_names(config)),
        context=config.get("max_position_embeddings", "?"),
        data_nature=data["nature"],
        bundled_data=data["bundled"],
        data_section=data["section"],
        hyperparameters=hyperparameter_rows(training) if training else None,
        run_facts=run_facts(metrics),
        base_model_note=base_model_note(base_model, hub_base_model),
        evaluation=[(r.metric_name, format_metric(r.metric_value)) for r in eval_results],
        evaluation_note=evaluation_note,
        loss_curve=(folder / "loss_curve.png").is_file(),
        usage=usage_snippet(task, auto_class, local_model_id(model_dir), name, training),
        generation_defaults=generation_defaults(read_json(folder / "generation_config.json"), config),
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
