"""Classification: a tiny classifier learns a separable labelling; metrics by hand; save/load; bad input; CLI."""

import json
import sys

import numpy as np
import pytest
from huggingface_hub import ModelCard
import torch
from conftest import TINY_POSTS, run_without_postformer
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from postformer import PostformerForSequenceClassification
from postformer.classification import (
    accuracy,
    classify_posts,
    init_classifier,
    load_labelled_posts,
    macro_f1,
    per_class_scores,
    train_classifier,
)
from postformer.cli import main as cli
from postformer.data import load_labelled_files
from postformer.model_files import load_model

TOPICS = ("election", "football", "phone", "song", "weather")  # each in 12 of the 60 TINY_POSTS
FAST = dict(epochs=5, learning_rate=3e-3, batch_size=8, disable_progress_bar=True)


def topic(text: str) -> str:
    return next(name for name in TOPICS if name in text)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def topic_posts(tmp_path_factory):
    """The topic of each post (in the middle of it, so the last token alone does not tell it)."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "topics.jsonl",
                       [{"text": text, "label": topic(text)} for text in TINY_POSTS])


@pytest.fixture(scope="module")
def trained(model_dir, topic_posts, tmp_path_factory):
    output = tmp_path_factory.mktemp("classifier") / "out"
    return output, train_classifier(model_dir, topic_posts, output, validation_fraction=0.25, **FAST)


# ----------------------------------------------------------------------------------------------------------------
# Metrics (scikit-learn's) against values computed by hand


def test_macro_f1_and_accuracy_match_hand_computed_values():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1]  # class 2 is never predicted
    # class 0: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 0.8; class 1: TP 1, FP 2, FN 1 -> P 1/3, R 1/2, F1 0.4;
    # class 2: TP 0, FN 2 -> F1 0; macro = (0.8 + 0.4 + 0) / 3.
    assert macro_f1(y_true, y_pred) == pytest.approx(0.4)
    assert accuracy(y_true, y_pred) == pytest.approx(0.5)
    scores = per_class_scores(y_true, y_pred, num_labels=4)
    np.testing.assert_allclose(scores["precision"], [2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(scores["recall"], [1, 0.5, 0, 0])
    np.testing.assert_allclose(scores["f1"], [0.8, 0.4, 0, 0])
    assert scores["support"].tolist() == [2, 2, 2, 0] and scores["predicted"].tolist() == [3, 3, 0, 0]
    # A class absent from both (id 3) is left out of the mean, as scikit-learn does.
    assert macro_f1(y_true, y_pred, num_labels=4) == pytest.approx(0.4)
    # A predicted class that never occurs counts, with F1 0.
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 3]) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert macro_f1([1, 1, 0], [1, 1, 0]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        macro_f1([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_scoring_without_scikit_learn_says_what_to_install_before_training(model_dir, topic_posts, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)  # as if scikit-learn were not installed
    with pytest.raises(ImportError, match=r"scoring a classifier needs scikit-learn: pip install 'postformer\[extras\]'"):
        macro_f1([0, 1], [0, 1])
    with pytest.raises(ImportError, match="needs scikit-learn"):
        train_classifier(model_dir, topic_posts, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()
    assert cli(["classify-train", "--model", str(model_dir), "--data", str(topic_posts), "--output-dir",
                str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("postformer classify-train: error: scoring a classifier needs scikit-learn")
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------------
# Training, saving, loading


def test_the_classifier_starts_from_the_language_model_body(model_dir):
    model, tokenizer = init_classifier(model_dir, ["a", "b", "c"])
    lm_weights = load_file(model_dir / "model.safetensors")
    body = {k: v for k, v in lm_weights.items() if k.startswith("model.")}
    state = model.state_dict()
    assert body and all(torch.equal(state[k], v) for k, v in body.items())
    assert state["score.weight"].shape == (3, 32)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.label2id == {"a": 0, "b": 1, "c": 2}
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 64


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "mean_last"])
def test_mean_pooling_scores_the_mean_of_the_real_tokens_states(model_dir, pooling):
    model, tokenizer = init_classifier(model_dir, ["a", "b", "c"], pooling=pooling)
    assert model.config.classifier_pooling == pooling
    model.eval()
    batch = tokenizer(["a short post", "a somewhat longer post than that one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        for row, mask in enumerate(batch["attention_mask"]):
            states = model.model(input_ids=batch["input_ids"][row:row + 1, mask.bool()]).last_hidden_state[0]
            # "weighted_mean": the i-th of n real tokens weighs i / (1 + ... + n)
            n = states.shape[0]
            weights = torch.arange(1, n + 1) / (n * (n + 1) / 2) if pooling == "weighted_mean" else torch.ones(n) / n
            pooled = (weights[:, None] * states).sum(0)
            if pooling == "mean_last":  # the mean state plus the last real token's
                pooled = pooled + states[-1]
            torch.testing.assert_close(logits[row], model.score(pooled), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooling must be one of last, mean, weighted_mean, mean_last, got 'max'"):
        init_classifier(model_dir, ["a", "b"], pooling="max")


def test_balanced_class_weights_and_the_weighted_loss():
    from sklearn.utils.class_weight import compute_class_weight
    from postformer.classification import _weighted_loss, balanced_class_weights

    labels = [0, 0, 0, 0, 1, 2, 2, 0]
    weights = balanced_class_weights(labels, 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32))
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
    terms = torch.nn.functional.cross_entropy(logits, target, reduction="none") * weights[target]
    loss = _weighted_loss(weights)
    torch.testing.assert_close(loss({"logits": logits}, target), terms.mean())
    # In an accumulated batch of 10 posts, this part's share of the loss.
    torch.testing.assert_close(loss({"logits": logits}, target, num_items_in_batch=10), terms.sum() / 10)
    # --label_smoothing_factor: Trainer's LabelSmoother formula, each post's term still times its label's weight.
    log_probs = torch.log_softmax(logits, -1)
    smoothed = 0.9 * -log_probs[torch.arange(4), target] + 0.1 * -log_probs.mean(-1)
    torch.testing.assert_close(_weighted_loss(weights, 0.1)({"logits": logits}, target),
                               (smoothed * weights[target]).mean())


def test_pooling_and_class_weighting_reach_the_trained_classifier(model_dir, topic_posts, tmp_path):
    metrics = train_classifier(model_dir, topic_posts, tmp_path / "out", validation_fraction=0.25, pooling="last",
                               class_weighting=False, layer_lr_decay=0.5, dropout=0.2, **{**FAST, "epochs": 1})
    assert metrics["hyperparameters"]["pooling"] == "last" and not metrics["hyperparameters"]["class_weighting"]
    assert metrics["hyperparameters"]["dropout"] == 0.2
    model, _ = load_model(tmp_path / "out", "text-classification")
    assert model.config.classifier_pooling == "last"
    assert model.config.hidden_dropout == model.config.attention_dropout == 0.2


def test_label_smoothing_reaches_the_class_weighted_loss(model_dir, topic_posts, tmp_path):
    # Trainer leaves --label_smoothing_factor to a compute_loss_func when one is given: the weighted loss applies it.
    options = dict(validation_fraction=0.25, seed=3, **{**FAST, "epochs": 1})
    plain = train_classifier(model_dir, topic_posts, tmp_path / "plain", **options)
    smoothed = train_classifier(model_dir, topic_posts, tmp_path / "smoothed", label_smoothing_factor=0.5, **options)
    assert (plain["hyperparameters"]["label_smoothing"], smoothed["hyperparameters"]["label_smoothing"]) == (0, 0.5)
    assert smoothed["train_loss"] > plain["train_loss"] + 0.05


def test_fine_tuning_dropout_defaults_to_the_language_models(model_dir):
    lm_config = json.loads((model_dir / "config.json").read_text())
    model, _ = init_classifier(model_dir, ["a", "b"])
    assert (model.config.hidden_dropout, model.config.attention_dropout) == (
        lm_config["hidden_dropout"], lm_config["attention_dropout"])
    model, _ = init_classifier(model_dir, ["a", "b"], dropout=0.3)
    assert model.config.hidden_dropout == model.config.attention_dropout == 0.3
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match=f"dropout must be a number in \\[0, 1\\), got {bad!r}"):
            init_classifier(model_dir, ["a", "b"], dropout=bad)


def test_a_separable_labelling_is_learned_to_high_held_out_accuracy(trained):
    output, metrics = trained
    assert metrics["labels"] == list(TOPICS)
    assert metrics["train_posts"] == 45 and metrics["eval_posts"] == 15  # 3 of each topic's 12 held out
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_macro_f1"] >= 0.9, metrics
    # Balanced topics: the majority baseline is 1/5 right, and its macro-F1 that of one class of five.
    assert metrics["eval_majority_accuracy"] == pytest.approx(0.2)
    assert metrics["eval_majority_macro_f1"] == pytest.approx(2 * 0.2 / 1.2 / 5)
    per_label = metrics["eval_per_label"]
    assert [per_label[t]["train"] for t in TOPICS] == [9] * 5 and [per_label[t]["support"] for t in TOPICS] == [3] * 5
    assert sum(row["predicted"] for row in per_label.values()) == 15
    assert json.loads((output / "metrics.json").read_text()) == metrics
    # Trained by PostformerTrainer, as `postformer train` is: its arguments as JSON, never Trainer's pickle
    assert (output / "training_args.json").is_file() and not (output / "training_args.bin").exists()
    assert json.loads((output / "training_config.json").read_text())["label_field"] == "label"
    # The defaults: the mean plus the last token, class-balanced loss, batches by length (evaluation still in the
    # posts' order: the next test checks the held-out predictions against the posts they are written beside)
    assert metrics["hyperparameters"]["pooling"] == "mean_last" and metrics["hyperparameters"]["class_weighting"]
    assert json.loads((output / "training_args.json").read_text())["train_sampling_strategy"] == "group_by_length"
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    [result] = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert result.metric_value == pytest.approx(metrics["eval_accuracy"])


def test_the_saved_classifier_loads_back_and_classify_posts_agrees_with_the_trainer(trained):
    output, metrics = trained
    for name in ("model.safetensors", "config.json", "modeling_postformer.py", "tokenizer.json"):
        assert (output / name).is_file(), name
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert isinstance(model, PostformerForSequenceClassification)
    assert model.config.id2label == dict(enumerate(TOPICS)) and model.config.problem_type == "single_label_classification"

    held_out = [json.loads(line) for line in (output / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(held_out) == 15 and all(r["label"] == topic(r["text"]) for r in held_out)
    results = classify_posts(output, [r["text"] for r in held_out], batch_size=4)  # other batches, other padding
    assert [r["label"] for r in results] == [r["predicted"] for r in held_out]
    for result, record in zip(results, held_out):
        assert result["score"] == pytest.approx(record["score"], abs=1e-5)
        assert set(result["scores"]) == set(TOPICS) and sum(result["scores"].values()) == pytest.approx(1.0)
        assert result["score"] == max(result["scores"].values())
    assert sum(r["predicted"] == r["label"] for r in held_out) / 15 == pytest.approx(metrics["eval_accuracy"])


def test_classify_through_the_pipeline_equals_one_forward_pass_per_post_in_any_batch(trained):
    output, _ = trained
    texts = list(TINY_POSTS[::3]) + ["lol", "the election debate " * 20]  # short, and one cut at 64 tokens
    model, tokenizer = load_model(output, "text-classification")
    expected = []
    for text in texts:  # alone: no padding, nothing to batch with
        inputs = tokenizer(text, truncation=True, return_tensors="pt")
        with torch.no_grad():
            probabilities = torch.softmax(model(**inputs).logits.float(), -1)[0].tolist()
        expected.append({model.config.id2label[i]: p for i, p in enumerate(probabilities)})
    for batch_size in (1, 3, 32):
        results = classify_posts(output, texts, batch_size=batch_size)
        assert [r["label"] for r in results] == [max(e, key=e.get) for e in expected]
        for result, scores in zip(results, expected):
            assert list(result["scores"]) == list(TOPICS)  # label id order
            assert result["scores"] == pytest.approx(scores, abs=1e-6)
            assert result["score"] == result["scores"][result["label"]]


@pytest.mark.slow
def test_the_saved_classifier_loads_with_remote_code_without_the_package(trained, tmp_path):
    output, _ = trained
    expected = classify_posts(output, ["loving the election debate lol"])[0]
    out = run_without_postformer(
        f"""
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({str(output)!r}, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained({str(output)!r}, trust_remote_code=True)
probs = torch.softmax(model(**tokenizer(["loving the election debate lol"], return_tensors="pt")).logits, -1)[0]
print(model.config.id2label[int(probs.argmax())], float(probs.max()))
""",
        cwd=tmp_path,
    )
    label, score = out.split()
    assert label == expected["label"] and float(score) == pytest.approx(expected["score"], abs=1e-5)


def test_an_output_folder_holding_a_model_is_refused(model_dir, topic_posts):
    with pytest.raises(FileExistsError, match="already holds a model"):
        train_classifier(model_dir, topic_posts, model_dir, **FAST)


# ----------------------------------------------------------------------------------------------------------------
# Bad data and bad folders


def test_a_missing_label_column_names_the_columns_there_are(tmp_path):
    path = write_jsonl(tmp_path / "posts.jsonl", [{"text": t, "topic": t[0]} for t in ("x1", "x2", "y1", "y2")])
    with pytest.raises(ValueError, match=r"label column 'label' not found .*\['text', 'topic'\]"):
        load_labelled_posts(path)
    assert load_labelled_posts(path, label_field="topic", validation_fraction=0.5).labels == ["x", "y"]


def test_empty_labels_are_counted_and_located(tmp_path):
    csv = tmp_path / "posts.csv"
    csv.write_text("text,label\nfirst,yes\nsecond,\nthird,no\nfourth,  \n,\n", encoding="utf-8")
    # The last row has no text: skipped, as load_posts skips empty posts, so it is not reported.
    with pytest.raises(ValueError, match=r"2 of 4 posts in .*posts\.csv have an empty or missing 'label': row\(s\) 2, 4"):
        load_labelled_posts(csv)
    jsonl = write_jsonl(tmp_path / "posts.jsonl", [{"text": "a", "label": 1}, {"text": "b"}, {"text": "c", "label": 0}])
    with pytest.raises(ValueError, match=r"1 of 3 posts .* row\(s\) 2 "):
        load_labelled_posts(jsonl)


def test_a_single_label_and_no_posts_are_refused(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": t, "label": "same"} for t in ("a", "b", "c")])
    with pytest.raises(ValueError, match="only 1 distinct label .*'same'.*at least 2"):
        load_labelled_posts(one)
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": " ", "label": "x"}])
    with pytest.raises(ValueError, match="no posts in"):
        load_labelled_posts(empty)
    (tmp_path / "nothing.jsonl").write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        load_labelled_posts(tmp_path / "nothing.jsonl")


def test_a_folder_with_its_own_validation_split_is_used_as_is(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"post {i}", "label": str(i % 3 * 5)} for i in range(9)])
    write_jsonl(tmp_path / "validation.jsonl", [{"text": "held out", "label": "10"}])
    posts = load_labelled_posts(tmp_path)
    assert posts.labels == ["0", "5", "10"]  # integer labels sort numerically
    assert len(posts.splits["train"]) == 9 and posts.splits["validation"]["text"] == ["held out"]
    write_jsonl(tmp_path / "validation.jsonl", [{"text": "held out", "label": "7"}])
    with pytest.raises(ValueError, match=r"labels \['7'\] of the validation split .* never occur in the train split"):
        load_labelled_posts(tmp_path)


def test_labelled_files_are_read_with_every_column_and_the_split_names_of_load_posts(tmp_path):
    import datasets

    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label,likes\nfirst,a,3\nsecond,b,5\n", encoding="utf-8")
    (folder / "dev.csv").write_text("text,label,likes\nthird,a,1\n", encoding="utf-8")
    splits, sources = load_labelled_files(folder)
    assert sorted(splits) == ["train", "validation"] and splits["validation"]["text"] == ["third"]
    assert splits["train"].column_names == ["text", "label", "likes"] and splits["train"]["likes"] == [3, 5]
    assert sources == {"train": str(folder / "train.csv"), "validation": str(folder / "dev.csv")}

    saved = tmp_path / "saved"
    datasets.DatasetDict(train=splits["train"], dev=splits["validation"]).save_to_disk(str(saved))
    splits, sources = load_labelled_files(saved)
    assert sorted(splits) == ["train", "validation"] and sources["validation"] == f"{saved} (dev split)"

    (tmp_path / "posts.txt").write_text("no labels here\n")
    with pytest.raises(ValueError, match="plain text has no label column"):
        load_labelled_files(tmp_path / "posts.txt")
    with pytest.raises(FileNotFoundError, match="labelled posts not found"):
        load_labelled_files(tmp_path / "missing.csv")
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    write_jsonl(only_test / "test.jsonl", [{"text": "x", "label": "a"}])
    with pytest.raises(ValueError, match=r"no train split in .*only-test: found splits \['test'\]"):
        load_labelled_files(only_test)


def test_the_held_out_split_is_stratified_and_deterministic(topic_posts):
    first = load_labelled_posts(topic_posts, validation_fraction=0.25, seed=3)
    again = load_labelled_posts(topic_posts, validation_fraction=0.25, seed=3)
    assert first.splits["validation"]["text"] == again.splits["validation"]["text"]
    assert sorted(first.splits["validation"]["label"]) == sorted(TOPICS * 3)
    assert not set(first.splits["validation"]["text"]) & set(first.splits["train"]["text"])
    other = load_labelled_posts(topic_posts, validation_fraction=0.25, seed=4)
    assert other.splits["validation"]["text"] != first.splits["validation"]["text"]
    assert first.splits["train"].column_names == ["text", "label"]  # label names, as the data's own splits have


def test_posts_too_few_for_a_stratified_split_are_refused_naming_the_short_labels(tmp_path):
    rows = [{"text": f"post {i}", "label": label} for i, label in enumerate("aaaabbbbc")]
    with pytest.raises(ValueError, match=r"too few posts in .*posts\.jsonl \(9\) to hold out a stratified validation "
                                         r"fraction of 0\.3: label\(s\) \['c'\] have a single post"):
        load_labelled_posts(write_jsonl(tmp_path / "posts.jsonl", rows), validation_fraction=0.3)
    rows = [{"text": f"post {i}", "label": label} for i, label in enumerate("aabbccddee")]
    with pytest.raises(ValueError, match=r"\(10\) to hold out .* of 0\.1: .*test_size = 1 .* number of classes = 5"):
        load_labelled_posts(write_jsonl(tmp_path / "posts.jsonl", rows), validation_fraction=0.1)
    rows = [{"text": f"post {i}", "label": "a" if i < 20 else "b"} for i in range(22)]
    with pytest.raises(ValueError, match=r"of 0\.8: no post of label\(s\) \['b'\] would be left to train on"):
        load_labelled_posts(write_jsonl(tmp_path / "posts.jsonl", rows), validation_fraction=0.8)


def test_classify_refuses_a_language_model_folder_and_empty_input(model_dir, trained):
    with pytest.raises(ValueError, match="is a PostformerForCausalLM, not a sequence classifier.*classify-train"):
        classify_posts(model_dir, ["a post"])
    output, _ = trained
    with pytest.raises(ValueError, match="no posts to classify"):
        classify_posts(output, [])
    with pytest.raises(ValueError, match="post 1 is empty"):
        classify_posts(output, ["fine", "  "])
    with pytest.raises(ValueError, match="holds a sequence classifier"):
        init_classifier(output, ["a", "b"])


# ----------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_classify_train_writes_metrics_and_classify_prints_labels(model_dir, topic_posts, trained, tmp_path, capsys):
    output = tmp_path / "cli"
    code = cli(["classify-train", "--model", str(model_dir), "--data", str(topic_posts), "--output-dir", str(output),
                "--epochs", "1", "--batch-size", "8", "--validation-fraction", "0.25", "--seed", "1"])
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["labels"] == list(TOPICS) and metrics["eval_posts"] == 15 and metrics["hyperparameters"]["seed"] == 1
    printed = capsys.readouterr().out
    assert f"accuracy {metrics['eval_accuracy']:.3f}, macro-F1 {metrics['eval_macro_f1']:.3f}" in printed
    assert "majority class 'election': accuracy 0.200" in printed

    classifier, _ = trained
    texts = ["finally got the match #football !!!", "so tired of this weather lol"]
    expected = classify_posts(classifier, texts)
    assert cli(["classify", "--model", str(classifier), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t") for line in lines] == [
        [r["label"], f"{r['score']:.3f}", t] for r, t in zip(expected, texts)
    ]
    posts_file = tmp_path / "posts.txt"
    posts_file.write_text("\n".join(texts) + "\n\n")
    assert cli(["classify", "--model", str(classifier), "--file", str(posts_file), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["text"], r["label"]) for r in records] == [(t, r["label"]) for t, r in zip(texts, expected)]


def test_cli_errors_are_one_line_with_status_2(model_dir, topic_posts, tmp_path, capsys):
    assert cli(["classify", "--model", str(model_dir), "a post"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("postformer classify: error: ") and "not a sequence classifier" in err
    assert len(err.strip().splitlines()) == 1
    assert cli(["classify", "--model", str(model_dir)]) == 2
    assert "no posts to classify" in capsys.readouterr().err
    assert cli(["classify-train", "--model", str(model_dir), "--data", str(topic_posts), "--output-dir",
                str(tmp_path / "x"), "--label-field", "topic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("postformer classify-train: error: label column 'topic' not found") and "['text', 'label']" in err
