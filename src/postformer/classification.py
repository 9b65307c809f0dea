"""Posts classification: fine-tune a trained Postformer language model into a sequence classifier, and use it.

`train_classifier` reads a labelled posts file (a text and a label column), puts a new linear head on the
language model's body (`PostformerForSequenceClassification`, by default reading the mean over a post's tokens
plus its last real token) and fine-tunes the whole model with `PostformerTrainer` (the trainer of `postformer
train`, with the same arguments class), by default with a class-balanced loss on batches of posts of similar length. It
reports accuracy and macro-F1 on a held-out split (scikit-learn's metrics: scikit-learn is in postformer's
extras), beside the majority-class baseline, and saves a Hub-style folder that
`AutoModelForSequenceClassification` loads (after `import postformer`, or with `trust_remote_code=True` without
it). `classify_posts` labels posts with such a folder as `transformers.pipeline("text-classification")` does, in
batches of posts of similar length; `classify_to_file` labels a corpus of any size into a JSON lines file,
resuming after a crash (`postformer.processing`).

Posts are encoded as the language model saw them ("<s>" then the text) and padded on the RIGHT: real tokens
then keep positions 0..n-1 whatever the batch, so a post's label does not depend on what it is batched with,
for every position scheme (learned and sinusoidal positions would shift under left padding). The classifier's
tokenizer is saved with that padding side, so `pipeline("text-classification", ...)` pads the same way, here and
wherever the folder is used.
"""

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import DataCollatorWithPadding, set_seed

from ._dependencies import require
from ._text import check_text
from .hub_cards import write_model_card
from .data import load_labelled_files
from .model_files import check_model, load_model
from .modeling.configuration_postformer import CLASSIFIER_POOLINGS
from .progress import progress_bars
from .saving import check_output_folder, saving
from .training.arguments import ClassifierArguments, run_record

MAX_LISTED_ROWS = 10  # rows named in an error message; the count is always given in full


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def _sklearn_metrics():
    """scikit-learn's metrics, imported when a classifier is scored (scikit-learn is in postformer's extras)."""
    return require("sklearn.metrics", "scoring a classifier", "scikit-learn")


def _check_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} and {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no predictions to score: y_true and y_pred are empty")
    return y_true, y_pred


def per_class_scores(y_true, y_pred, num_labels: int | None = None) -> dict[str, np.ndarray]:
    """Per class id 0..num_labels-1 (default: up to the largest id seen): support (true count), predicted (count),
    precision, recall and F1, as arrays; scikit-learn's `precision_recall_fscore_support` with zero_division=0, so
    precision (recall) is 0 for a class never predicted (absent) and F1 is 0 for one never predicted correctly."""
    metrics = _sklearn_metrics()
    y_true, y_pred = _check_labels(y_true, y_pred)
    labels = np.arange(max(y_true.max(), y_pred.max()) + 1 if num_labels is None else num_labels)
    counts = metrics.confusion_matrix(y_true, y_pred, labels=labels)  # rows: true class, columns: predicted
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    return {"support": support, "predicted": counts.sum(axis=0), "precision": precision, "recall": recall, "f1": f1}


def macro_f1(y_true, y_pred, num_labels: int | None = None) -> float:
    """scikit-learn's `f1_score(average="macro", zero_division=0)`: the unweighted mean of the per-class F1 over
    the classes that occur in y_true or y_pred; a class that is present but never predicted counts with F1 = 0, a
    class absent from both is left out (so `num_labels`, accepted as `per_class_scores` takes it, changes
    nothing)."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float(_sklearn_metrics().f1_score(y_true, y_pred, average="macro", zero_division=0))


def accuracy(y_true, y_pred) -> float:
    """The share of predictions that are right (scikit-learn's `accuracy_score`)."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float(_sklearn_metrics().accuracy_score(y_true, y_pred))


def _compute_metrics(eval_prediction) -> dict:
    """Trainer's compute_metrics: accuracy and macro-F1 of the argmax of the logits."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    predicted = np.asarray(logits).argmax(-1)
    labels = np.asarray(eval_prediction.label_ids)
    return {"accuracy": accuracy(labels, predicted), "macro_f1": macro_f1(labels, predicted, logits.shape[-1])}


# ----------------------------------------------------------------------------------------------------------------
# Labelled data


@dataclass
class LabelledPosts:
    """Labelled posts ready for training.

    splits: "train", "validation" (and "test" when the data has one), each with a "text" and a "label" column
    (the label's name, a string). labels: the label names, sorted (numerically when they all are integers);
    a label's id is its index. validation_source: where the validation split came from, in words.
    """

    splits: datasets.DatasetDict
    labels: list[str]
    validation_source: str


def _label_name(value) -> str | None:
    """The label as a string; None when it is missing (None, NaN, blank)."""
    if value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():  # a CSV column of integers with a blank cell is read as floats
            value = int(value)
    name = str(value).strip()
    return name or None


def _sorted_labels(names) -> list[str]:
    names = set(names)
    try:
        return sorted(names, key=int)  # "2" before "10"; ids then match integer labels 0..K-1
    except ValueError:
        return sorted(names)


def load_labelled_posts(
    data: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    validation_fraction: float = 0.1,
    seed: int = 0,
    on_bad_lines: str = "error",
) -> LabelledPosts:
    """Read labelled posts: a .jsonl/.json/.csv/.tsv file, a folder of such files named train/validation/test
    (as `postformer.data.load_posts` reads them), or a folder written by `datasets`' `save_to_disk`; the files
    are read by `postformer.data.load_labelled_files`, and their `text_field` and `label_field` columns kept.

    Rows with an empty text are skipped (as `load_posts` does). Raises ValueError when the text or label column
    is missing (naming the columns there are), when posts have an empty or missing label (saying how many and
    which rows), when the train split has fewer than 2 distinct labels or a held-out split has labels that the
    train split lacks, and when there are no posts. Without a validation split in the data, a deterministic
    stratified `validation_fraction` of train (`datasets`' stratified `train_test_split`, shuffled with `seed`)
    becomes one; that needs at least 2 posts of each label and leaves each label posts to train on (else a
    ValueError saying which labels are short). Malformed JSON lines and CSV rows are a ValueError naming the file and line, or
    skipped with a warning when on_bad_lines="skip" (see `postformer.data.load_posts`).
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction!r}")
    loaded, sources = load_labelled_files(data, on_bad_lines)

    splits = {}
    for split, dataset in loaded.items():
        source, columns = sources[split], dataset.column_names
        for role, field in (("text", text_field), ("label", label_field)):
            if field not in columns:
                raise ValueError(
                    f"{role} column {field!r} not found in {source}; its columns are {columns}"
                    + (f" (choose one with --{role}-field)" if role == "label" else "")
                )
        texts, labels, missing = [], [], []
        for row, (text, value) in enumerate(zip(dataset[text_field], dataset[label_field]), start=1):
            if not isinstance(text, str) or not text.strip():
                continue
            name = _label_name(value)
            if name is None:
                missing.append(row)
            texts.append(text)
            labels.append(name)
        if missing:
            listed = ", ".join(map(str, missing[:MAX_LISTED_ROWS])) + (", ..." if len(missing) > MAX_LISTED_ROWS else "")
            raise ValueError(
                f"{len(missing)} of {len(texts)} posts in {source} have an empty or missing {label_field!r}: "
                f"row(s) {listed} (rows counted from 1, a CSV's header not counted); label every post or drop them"
            )
        splits[split] = datasets.Dataset.from_dict({"text": texts, "label": labels})

    train = splits["train"]
    if len(train) == 0:
        raise ValueError(f"no posts in {sources['train']}: every post of the train split is empty")
    label_names = _sorted_labels(train["label"])
    if len(label_names) < 2:
        raise ValueError(
            f"only {len(label_names)} distinct label in {sources['train']} ({label_names[0]!r} in column "
            f"{label_field!r}): a classifier needs at least 2"
        )
    for split, dataset in splits.items():
        if split == "train":
            continue
        unknown = sorted(set(dataset["label"]) - set(label_names))
        if unknown:
            raise ValueError(
                f"labels {unknown} of the {split} split ({sources[split]}) never occur in the train split, so the "
                f"classifier could not learn them; the train split's labels are {label_names}"
            )

    if "validation" in splits:
        validation_source = f"the data's validation split ({sources['validation']})"
    else:
        splits["train"], splits["validation"] = _stratified_split(
            train, label_names, validation_fraction, seed, sources["train"]
        )
        validation_source = f"a stratified {validation_fraction:g} of the train split (seed {seed})"
    if len(splits["validation"]) == 0:
        raise ValueError(f"no posts in the validation split ({sources.get('validation', data)})")
    return LabelledPosts(datasets.DatasetDict(splits), label_names, validation_source)


def _stratified_split(train: datasets.Dataset, label_names: list[str], fraction: float, seed: int, source: str):
    """(train, validation): `fraction` of the posts held out with each label in the same proportion on both sides,
    by `datasets`' `train_test_split(stratify_by_column=...)` (deterministic given `seed`). ValueError when the
    posts are too few for that: a label with a single post, fewer held-out posts than labels, or a label left
    without a post to train on."""
    ids = datasets.ClassLabel(names=label_names)
    with_ids = train.add_column("label_id", ids.str2int(train["label"])).cast_column("label_id", ids)
    problem = None
    try:
        split = with_ids.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label_id")
    except ValueError as error:
        counts = Counter(train["label"])
        single = [label for label in label_names if counts[label] < 2]
        problem = (f"label(s) {single} have a single post; a stratified split needs 2 of each" if single
                   else " ".join(str(error).split()))
    else:
        untrained = sorted(set(label_names) - set(split["train"]["label"]), key=label_names.index)
        if untrained:
            problem = f"no post of label(s) {untrained} would be left to train on"
    if problem:
        raise ValueError(
            f"too few posts in {source} ({len(train)}) to hold out a stratified validation fraction of {fraction:g}: "
            f"{problem}; give more posts, another --validation-fraction or a validation file"
        )
    return split["train"].remove_columns("label_id"), split["test"].remove_columns("label_id")


# ----------------------------------------------------------------------------------------------------------------
# Model folders


def _for_classification(tokenizer, config):
    """The tokenizer set up to encode posts for a classifier: padded on the right (see the module docstring) and
    cut at the model's context."""
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = min(tokenizer.model_max_length, config.max_position_embeddings)
    return tokenizer


def init_classifier(model_dir, labels: list[str], pooling: str = ClassifierArguments.pooling,
                    dropout: float | None = ClassifierArguments.dropout):
    """A `PostformerForSequenceClassification` for `labels` on the body of the language model saved in
    `model_dir` (a folder or Hub id; its weights reused, the score head new), reading the mean over tokens plus the
    last token, or one of them (`pooling`, the config's `classifier_pooling`), with hidden and attention dropout
    `dropout` (None: the language model's), and the model's tokenizer set up for classification. The model is
    loaded by `postformer.model_files.load_model`, which names a damaged folder."""
    if pooling not in CLASSIFIER_POOLINGS:  # said before a model is loaded
        raise ValueError(f"pooling must be one of {', '.join(CLASSIFIER_POOLINGS)}, got {pooling!r}")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0 <= dropout < 1):
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    dropouts = {} if dropout is None else dict(hidden_dropout=dropout, attention_dropout=dropout)
    model, tokenizer = load_model(
        model_dir,
        "text-classification",
        new_head=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification",
        classifier_pooling=pooling,
        use_cache=False,  # a classifier reads each post once: no key/value cache to keep
        **dropouts,
    )
    return model, _for_classification(tokenizer, model.config)


# ----------------------------------------------------------------------------------------------------------------
# Training


def _encode(splits: datasets.DatasetDict, tokenizer, label_ids: dict[str, int]) -> datasets.DatasetDict:
    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=tokenizer.model_max_length)
        encoded["labels"] = [label_ids[name] for name in batch["label"]]
        return encoded

    return splits.map(encode, batched=True, remove_columns=["text", "label"], desc="tokenising posts")


def _report(labels: list[str], y_true, y_pred, train_counts: Counter) -> dict:
    scores = per_class_scores(y_true, y_pred, len(labels))
    return {
        label: {
            "train": train_counts[label],
            "support": int(scores["support"][i]),
            "predicted": int(scores["predicted"][i]),
            "precision": float(scores["precision"][i]),
            "recall": float(scores["recall"][i]),
            "f1": float(scores["f1"][i]),
        }
        for i, label in enumerate(labels)
    }


def balanced_class_weights(label_ids, num_labels: int) -> torch.Tensor:
    """scikit-learn's "balanced" class weights: n_posts / (n_labels * count of the label), for each label id."""
    counts = torch.bincount(torch.as_tensor(label_ids), minlength=num_labels).float()
    return len(label_ids) / (num_labels * counts.clamp(min=1))


def _weighted_loss(weights: torch.Tensor, label_smoothing: float = 0.0):
    """Trainer's compute_loss_func: cross-entropy of the pooled logits, each post's term times its label's weight,
    summed and divided by the posts in the whole (accumulated) batch, so gradient accumulation gives the loss of
    one large batch, as Trainer's own losses do. `label_smoothing`: --label_smoothing_factor, which Trainer applies
    only when no compute_loss_func is given (torch's label_smoothing is the same formula as its LabelSmoother)."""
    def compute_loss(outputs, labels, num_items_in_batch=None):
        logits, labels = outputs["logits"].float(), labels.to(outputs["logits"].device)
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
        total = (losses * weights.to(logits.device)[labels]).sum()
        return total / (len(labels) if num_items_in_batch is None else num_items_in_batch)
    return compute_loss


def train_classifier(model_dir, data, output_dir, **options) -> dict:
    """Fine-tune the language model in `model_dir` into a classifier of the posts in `data`; save it to
    `output_dir` and return its metrics (also written to `output_dir/metrics.json`).

    `options`: any field of ClassifierArguments (text_field, label_field, validation_fraction, max_length,
    skip_bad_lines) or of PostformerTrainingArguments (num_train_epochs / epochs, learning_rate, batch_size,
    weight_decay, warmup_steps, seed, quiet, ...), as `postformer classify-train` takes them; `data`,
    `text_field`, `label_field`, `validation_fraction` and `seed` as `load_labelled_posts`. The whole model is
    trained by PostformerTrainer (AdamW at 3e-4, linear decay after a warm-up over the first 10% of the steps, the
    language model's dropout; see COMMAND_DEFAULTS["classify-train"]), then scored on the validation split (and on
    the test split when the data has one): loss, accuracy and macro-F1, beside the majority-class baseline (always
    the train split's commonest label), and per label: its train and held-out counts, how often it was predicted,
    precision, recall and F1. The held-out predictions are written to `output_dir/eval_predictions.jsonl` (never uploaded by `postformer push`).
    `max_length`: tokens kept of a post (longer ones are cut at the end); None: the model's context length.

    Raises FileExistsError when `output_dir` already holds a model, ValueError for a folder that is not a
    language model and for the data problems `load_labelled_posts` names, MissingDependencyError (an ImportError)
    without scikit-learn.
    """
    from .training.arguments import command_arguments

    if "on_bad_lines" in options:
        options["skip_bad_lines"] = options.pop("on_bad_lines") == "skip"
    job, args = command_arguments("classify-train", model=str(model_dir), data=str(data), output_dir=str(output_dir),
                                  **options)
    return run_classifier(job, args)


def run_classifier(job, args) -> dict:
    """`train_classifier` from its parsed arguments (ClassifierArguments, PostformerTrainingArguments): what
    `postformer classify-train` calls."""
    with progress_bars(not args.quiet):
        return _run_classifier(job, args)


def _run_classifier(job, args) -> dict:
    from .training.trainer import PostformerTrainer

    for name, value in (("epochs", args.num_train_epochs), ("learning_rate", args.learning_rate)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    output_dir = Path(args.output_dir)
    check_output_folder(output_dir)
    _sklearn_metrics()  # scores are needed at the end: say now what to install, not after training
    check_model(job.model, "text-classification", new_head=True)  # a wrong folder is named before the data is read
    posts = load_labelled_posts(job.data, job.text_field, job.label_field, job.validation_fraction, args.seed,
                                "skip" if job.skip_bad_lines else "error")

    set_seed(args.seed)  # the new head's initial weights depend on the seed alone
    model, tokenizer = init_classifier(job.model, posts.labels, job.pooling, job.dropout)
    if job.max_length is not None:
        if isinstance(job.max_length, bool) or not isinstance(job.max_length, int) or job.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {job.max_length!r}")
        tokenizer.model_max_length = min(job.max_length, tokenizer.model_max_length)
    encoded = _encode(posts.splits, tokenizer, model.config.label2id)

    trainer = PostformerTrainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_compute_metrics,
        compute_loss_func=_weighted_loss(balanced_class_weights(encoded["train"]["labels"], len(posts.labels)),
                                         args.label_smoothing_factor) if job.class_weighting else None,
    )
    train_output = trainer.train()

    train_counts = Counter(posts.splits["train"]["label"])
    majority = max(posts.labels, key=lambda label: (train_counts[label], -posts.labels.index(label)))
    metrics = {
        "labels": posts.labels,
        "validation_source": posts.validation_source,
        "train_posts": len(posts.splits["train"]),
        **{k: v for k, v in train_output.metrics.items() if k in ("train_loss", "train_runtime", "epoch")},
        "majority_label": majority,
    }
    records = []
    for split in [s for s in ("validation", "test") if s in encoded]:
        prefix = "eval" if split == "validation" else "test"
        output = trainer.predict(encoded[split], metric_key_prefix=prefix)
        predicted = output.predictions.argmax(-1)
        baseline = np.full_like(output.label_ids, model.config.label2id[majority])
        metrics.update({
            f"{prefix}_posts": len(output.label_ids),
            f"{prefix}_loss": output.metrics[f"{prefix}_loss"],
            f"{prefix}_accuracy": output.metrics[f"{prefix}_accuracy"],
            f"{prefix}_macro_f1": output.metrics[f"{prefix}_macro_f1"],
            f"{prefix}_majority_accuracy": accuracy(output.label_ids, baseline),
            f"{prefix}_majority_macro_f1": macro_f1(output.label_ids, baseline, len(posts.labels)),
            f"{prefix}_per_label": _report(posts.labels, output.label_ids, predicted, train_counts),
        })
        probabilities = torch.softmax(torch.from_numpy(output.predictions).float(), -1)
        for text, label, index, probs in zip(posts.splits[split]["text"], posts.splits[split]["label"], predicted,
                                             probabilities):
            records.append({"split": split, "text": text, "label": label,
                            "predicted": posts.labels[index], "score": float(probs[index])})
    metrics["hyperparameters"] = dict(
        epochs=args.num_train_epochs, learning_rate=args.learning_rate, batch_size=args.per_device_train_batch_size,
        weight_decay=args.weight_decay, warmup=args.warmup_steps, max_length=tokenizer.model_max_length,
        seed=args.seed, text_field=job.text_field, label_field=job.label_field, base_model=str(job.model),
        pooling=job.pooling, class_weighting=job.class_weighting, layer_lr_decay=args.layer_lr_decay,
        dropout=model.config.hidden_dropout, label_smoothing=args.label_smoothing_factor,
    )

    if args.should_save:
        with saving(output_dir, "the classifier") as staging:  # all or nothing: a failed save leaves no half model
            trainer.save_model(str(staging))  # safetensors, config with labels and auto_map, source files, tokenizer
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            (staging / "training_config.json").write_text(json.dumps(run_record(job, args), indent=2) + "\n")
            with open(staging / "eval_predictions.jsonl", "w", encoding="utf-8") as file:
                file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        write_model_card(output_dir, base_model=str(job.model))
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Inference


def _check_texts(texts, batch_size) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("no posts to classify: texts is empty")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"post {index} is empty or not a string: {text!r}")
        check_text(text, f"post {index}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


@torch.inference_mode()
def classify_with(model, tokenizer, texts: list[str], batch_size: int = 32) -> list[dict]:
    """`classify_posts` with a classifier and tokenizer already loaded (`postformer.model_files.load_model(folder,
    "text-classification")`, the tokenizer set up by `_for_classification`): posts encoded and cut at the
    tokenizer's model_max_length, as `pipeline("text-classification", truncation=True)` encodes them, sorted by
    length and padded on the right into batches of `batch_size` (neighbours in length: little padding, which
    the pipeline's batches in input order spend most of their time on), and the softmax of the logits, in input
    order. A post's scores do not depend on its batch (tested against one forward pass per post)."""
    _check_texts(texts, batch_size)
    encoded = tokenizer(list(texts), truncation=True, verbose=False)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    id2label = model.config.id2label
    labels = [id2label[i] for i in range(len(id2label))]
    results = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        # right padding (the tokenizer's side, set by _for_classification): see the module docstring
        batch = tokenizer.pad([{"input_ids": encoded[i]} for i in rows], return_tensors="pt").to(model.device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for index, probabilities in zip(rows, torch.softmax(logits.float(), -1).tolist()):
            scores = dict(zip(labels, probabilities))
            best = max(scores, key=scores.get)  # on a tie, the lower label id
            results[index] = {"label": best, "score": scores[best], "scores": scores}
    return results


def classify_posts(model_dir, texts: list[str], batch_size: int = 32) -> list[dict]:
    """Label each post with the classifier saved in `model_dir` (by `train_classifier`), a folder or Hub id.

    Returns, per post, {"label": the likeliest label, "score": its probability, "scores": {label: probability}}.
    Raises ValueError for an empty list, an empty post, or a folder holding a language model, not a classifier.
    """
    _check_texts(texts, batch_size)  # before the model is loaded
    return classify_with(*load_classifier(model_dir), texts, batch_size)


def load_classifier(model_dir):
    """A classifier folder's (or Hub id's) model and tokenizer, set up for classification (`_for_classification`),
    the model on this process's device (`postformer.processing.processes`)."""
    from .processing import processes

    model, tokenizer = load_model(model_dir, "text-classification")
    return model.to(processes().device), _for_classification(tokenizer, model.config)


class ClassifyJob:
    """`postformer classify`'s work on a window of posts (see `postformer.processing.Job`): each post's
    {"text", "label", "score", "scores"}, or {"text", "error"} for a record without a post."""

    command = "classify"

    def __init__(self, model, tokenizer, batch_size: int = 32):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def process(self, number, records) -> list[dict]:
        texts = [r.text for r in records]
        return [{"text": t, **r} for t, r in zip(texts, classify_with(self.model, self.tokenizer, texts,
                                                                       self.batch_size))]

    def failed(self, record) -> dict:
        return {"text": record.text, "error": record.problem}


def classify_to_file(model_dir, source, output, *, batch_size: int = 32, window: int | None = None,
                     overwrite: bool = False, progress: bool = False) -> dict:
    """Label every post of `source` (`postformer.processing.Lines(file)`, `Texts(list)`, `open_posts(...)`) into
    the JSON lines file `output`: one line per input record, in input order (`ClassifyJob`'s records), written
    window by window; a rerun after a crash resumes, under any launcher (`postformer.processing.runs`). The
    classifier is loaded only when there is work to do. Returns the run's summary (`runs.run_to_file`)."""
    from .processing.runs import WINDOW, model_identity, run_to_file

    return run_to_file("classify", source, output, model_identity(model_dir),
                       lambda: ClassifyJob(*load_classifier(model_dir), batch_size),
                       window=window or WINDOW, overwrite=overwrite, progress=progress)


def label_counts(path) -> tuple[dict, int]:
    """How many lines of a classify output file got each label, and how many have no post (an "error")."""
    counts, failed = Counter(), 0
    with open(path, encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            if "label" in record:
                counts[record["label"]] += 1
            else:
                failed += 1
    return dict(counts.most_common()), failed


__all__ = [
    "LabelledPosts", "load_labelled_posts", "init_classifier", "train_classifier",
    "classify_with", "classify_posts", "load_classifier", "ClassifyJob", "classify_to_file", "label_counts", "accuracy",
    "macro_f1", "per_class_scores",
]
