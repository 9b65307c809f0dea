"""What the Hub reads from a card's YAML block: the vocabularies it checks (licences, pipeline tags, language
codes, library names), Hub ids, and the `model-index` built from a folder's metrics."""

import math
import re
from pathlib import Path

from huggingface_hub import EvalResult
from huggingface_hub.utils import HFValidationError, validate_repo_id

# Licence identifiers the Hub accepts in `license:` (https://huggingface.co/docs/hub/repositories-licenses).
# A copy: huggingface_hub (2.4) has no list of them; its `RepoCard.validate` sends the card to the Hub's
# /api/validate-yaml, which needs the network. Keep it in step with that page.
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


# The Hub's pipeline tags (huggingface.js, packages/tasks/src/pipelines.ts). A copy for the same reason:
# huggingface_hub has none (its inference providers list the tasks each provider serves, a subset, and
# /api/tasks is online).
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
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")
SPECIAL_LANGUAGES = {"code", "multilingual"}
LIBRARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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


def hub_id(base_model: str | None) -> str | None:
    """`base_model` when it can be a Hub model id (and is not a local folder), else None."""
    if not base_model or Path(base_model).is_dir():
        return None
    try:
        validate_repo_id(base_model)
    except HFValidationError:
        return None
    return base_model


def evaluation_results(metrics: dict, task: str, data: dict, name: str) -> list[EvalResult]:
    """One EvalResult per known metric that `metrics` holds as a finite number."""
    specs = CLASSIFIER_METRICS if task == "text-classification" else LM_METRICS if task == "text-generation" else ()
    results = []
    for metric_type, metric_name, keys in specs:
        value = next((metrics[k] for k in keys if k in metrics), None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        results.append(EvalResult(
            task_type=task,
            dataset_type=data["type"],
            dataset_name=data["name"],
            dataset_split=str(metrics.get("split", "validation")),
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=value,
            metric_args={"average": "macro"} if metric_type == "f1" else None,
        ))
    return results
