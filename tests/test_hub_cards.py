"""Model cards: rendered from what a saved folder holds, parsed back with huggingface_hub, usage snippet run."""

import json
import math
import re
import shutil
from contextlib import contextmanager

import pytest
import yaml
from conftest import TINY_POSTS, run_without_postformer, save_tiny_model, tiny_config
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from postformer import PostformerForCausalLM, PostformerForSequenceClassification
from postformer.cli import main as cli
from postformer.hub_cards import render_model_card, validate_model_card, write_model_card
from postformer.tokenization import config_token_ids, train_tokenizer
from postformer.training.arguments import command_arguments, run_record

METRICS = {"train_runtime": 12.5, "train_loss": 4.25, "epoch": 1.5, "eval_loss": 3.98765, "eval_perplexity": 53.9416,
           "eval_bits_per_character": 1.81234, "eval_runtime": 0.5}


def training_config(**overrides) -> dict:
    return run_record(*command_arguments("train", **{"hidden_size": 32, "sample_prompts": ["Breaking news:"], **overrides}))


def write_json(path, value):
    path.write_text(json.dumps(value, indent=2))


LABELS = {0: "love", 1: "haha", 2: "angry"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The project folder the commands below run in: their cards are written with the folders' paths relative to
    it, as `postformer train --output-dir runs/tiny-run` gives them, and the usage snippets run from it."""
    return tmp_path_factory.mktemp("models")


@contextmanager
def working_directory(path):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        yield


@pytest.fixture(scope="module")
def run_folder(models):
    """A training output folder as `postformer train --output-dir runs/tiny-run` leaves it, with its card."""
    folder = save_tiny_model(models / "runs" / "tiny-run")
    write_json(folder / "metrics.json", METRICS)
    write_json(folder / "training_config.json", training_config(learning_rate=0.002))
    (folder / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with working_directory(models):
        assert write_model_card("runs/tiny-run").resolve() == folder / "README.md"
    return folder


@pytest.fixture(scope="module")
def classifier_folder(models):
    """A saved sequence classifier with metrics under plain names (not eval_*), with its card written."""
    tokenizer = train_tokenizer(TINY_POSTS, vocab_size=300, show_progress=False)
    config = tiny_config(num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                         **config_token_ids(tokenizer))
    folder = models / "classifier"
    PostformerForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / "metrics.json", {"accuracy": 0.8125, "macro_f1": 0.75, "loss": 0.625})
    with working_directory(models):
        write_model_card("classifier")
    return folder


def usage_snippet(folder) -> str:
    text = ModelCard.load(folder / "README.md").text
    return re.search(r"```python\n(.*?)```", section(text, "How to use"), re.S).group(1)


@pytest.fixture(scope="module")
def snippet_output(models, run_folder, classifier_folder) -> dict[str, list[str]]:
    """What each card's usage snippet prints, run as written from the folder the cards were written in, in one
    process (starting Python with torch and transformers is most of the cost) that cannot import postformer."""
    folders = {"lm": run_folder, "classifier": classifier_folder}
    code = "".join(f"print('=== {key}')\nexec({usage_snippet(folder)!r}, {{}})\n" for key, folder in folders.items())
    out = run_without_postformer(code, cwd=models)
    parts = re.split(r"^=== (\w+)\n", out, flags=re.M)[1:]
    return {key: part.splitlines() for key, part in zip(parts[::2], parts[1::2])}


def section(text: str, title: str) -> str:
    """The markdown from heading `## title` to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r} in the card"
    return match.group(1)


def table(text: str) -> dict[str, str]:
    """The rows `| key | value |` of the markdown tables in `text`, backticks dropped."""
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", text, re.M)
    return {key.strip("`"): value for key, value in rows}


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


def metric_values(card: ModelCard) -> dict:
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    return {r.metric_type: r.metric_value for r in results}


def test_metadata_of_a_run_on_the_bundled_sample(run_folder):
    card = ModelCard.load(run_folder / "README.md")
    data = card.data
    assert (data.license, data.language, data.library_name, data.pipeline_tag) == (
        "mit", "en", "transformers", "text-generation")
    assert {"postformer", "social-media", "custom_code"} <= set(data.tags)
    assert data.datasets is None and data.base_model is None  # the bundled sample is on GitHub, not the Hub
    assert data.model_name == "tiny-run"
    assert metric_values(card) == {"perplexity": METRICS["eval_perplexity"], "loss": METRICS["eval_loss"],
                                   "bits-per-character": METRICS["eval_bits_per_character"]}
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in data.eval_results} == {
        ("text-generation", "fb-posts", "validation")}


def test_architecture_table_numbers_are_config_json_and_the_weights(run_folder):
    text = ModelCard.load(run_folder / "README.md").text
    rows = table(section(text, "Model"))
    config = json.loads((run_folder / "config.json").read_text())
    expected = {"Hidden size": "hidden_size", "Layers": "num_hidden_layers", "Attention heads": "num_attention_heads",
                "Key-value heads": "num_key_value_heads", "Intermediate (feed-forward) size": "intermediate_size",
                "Context (tokens)": "max_position_embeddings", "Vocabulary": "vocab_size"}
    assert {label: number(rows[label]) for label in expected} == {label: config[k] for label, k in expected.items()}
    model = PostformerForCausalLM.from_pretrained(run_folder)
    assert number(rows["Parameters"]) == sum(p.numel() for p in model.parameters())
    assert rows["Positions"] == "rope" and rows["Tied input and output embeddings"] == "yes"
    assert rows["Weights dtype"] == "float32"


def test_sections_come_from_the_folder_files(run_folder):
    text = ModelCard.load(run_folder / "README.md").text
    uses = section(text, "Intended uses and limits")
    assert "Profiling" in uses and "source of facts" in uses and "verbatim" in uses
    data = section(text, "Training data")
    assert "naman/fb-posts-dataset" in data and "**MIT**" in data
    assert "\n#### Known limitations and content notes\n" in data  # the bundled data card, nested under the section
    procedure = table(section(text, "Training procedure"))
    assert procedure["learning_rate"] == "0.002" and procedure["data"] == "the bundled posts sample"
    assert procedure["train_runtime"] == "12.5"
    assert "hidden_size" in procedure and "num_attention_heads" not in procedure  # None: the preset's, shown above
    evaluation = table(section(text, "Evaluation results"))
    assert float(evaluation["Perplexity"]) == pytest.approx(METRICS["eval_perplexity"], abs=1e-4)
    assert float(evaluation["Bits per character"]) == pytest.approx(METRICS["eval_bits_per_character"], abs=1e-4)
    assert section(text, "Loss curve").strip() == "![loss curve](loss_curve.png)"


@pytest.mark.slow
def test_usage_snippet_runs_without_postformer_and_generates(run_folder, snippet_output):
    code = usage_snippet(run_folder)
    assert 'model_id = "./runs/tiny-run"  # this folder; after `postformer push`, its Hub id: "your-name/tiny-run"' \
        in code  # "./": never taken for the Hub id "runs/tiny-run"
    assert "AutoModelForCausalLM" in code and 'pipeline("text-generation"' in code
    generated = [line for line in snippet_output["lm"] if line.startswith("Breaking news:")]
    assert len(generated) == 2, snippet_output  # model.generate, then the pipeline
    assert all(len(line) > len("Breaking news:") for line in generated), snippet_output


@pytest.mark.parametrize("given, model_id", [
    ("runs/small", "./runs/small"), ("./runs/small/", "./runs/small"), ("../elsewhere/small", "../elsewhere/small"),
    (".", "."), (None, None),  # None: the absolute path
])
def test_usage_snippet_loads_the_folder_by_the_path_it_was_given(tmp_path, given, model_id):
    folder = save_tiny_model(tmp_path / "project" / "runs" / "small")
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(folder, tmp_path / "elsewhere" / "small")
    cwd = folder if given == "." else tmp_path / "project"
    with working_directory(cwd):
        card = render_model_card(given or folder)
    code = re.search(r"```python\n(.*?)```", section(card.text, "How to use"), re.S).group(1)
    assert f"model_id = {json.dumps(model_id or str(folder))}  #" in code
    assert (cwd / (model_id or folder) / "config.json").is_file()  # from where the card was rendered
    assert '"your-name/small"' in code


def test_missing_optional_files_drop_their_sections(tmp_path):
    card = render_model_card(save_tiny_model(tmp_path / "bare"))
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert card.data.license == "other" and card.data.datasets is None
    for gone in ("## Training data", "## Training procedure", "## Evaluation results", "loss_curve.png"):
        assert gone not in card.text
    assert "## Model" in card.text and "## How to use" in card.text and "## Intended uses and limits" in card.text
    assert validate_model_card(card).data.pipeline_tag == "text-generation"


def test_fine_tune_on_user_data_takes_its_readme_licence_and_base_model(tmp_path):
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "posts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_POSTS))
    (data / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# My posts\n\nCollected by hand.\n")
    folder = save_tiny_model(tmp_path / "ft")
    write_json(folder / "training_config.json", training_config(data=str(data / "posts.jsonl")))
    card = ModelCard.load(write_model_card(folder, base_model="someone/postformer-small"))
    assert card.data.base_model == "someone/postformer-small" and "fine-tuned" in card.data.tags
    assert card.data.license == "cc-by-4.0" and card.data.datasets is None
    training_data = section(card.text, "Training data")
    assert str(data / "posts.jsonl") in training_data and "\n### My posts\n\nCollected by hand." in training_data
    assert "](https://huggingface.co/someone/postformer-small)" in card.text

    # no README beside the data: licence unknown; a local base model is named in the text, not the metadata
    (data / "README.md").unlink()
    card = render_model_card(folder, base_model=str(tmp_path / "ft"))
    assert card.data.license == "other" and card.data.base_model is None
    assert f"Fine-tuned from the local model `{tmp_path / 'ft'}`" in card.text


def test_local_data_is_named_in_the_text_never_in_the_metadata(tmp_path):
    data = tmp_path / "exports" / "my_posts.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_POSTS))
    folder = save_tiny_model(tmp_path / "runs" / "mine")
    write_json(folder / "training_config.json", training_config(data=str(data)))
    write_json(folder / "metrics.json", {"eval_loss": 3.0, "eval_perplexity": 20.0})
    card = validate_model_card(write_model_card(folder, base_model=str(tmp_path / "runs" / "small")))
    metadata = yaml.safe_load(str(card).split("---\n")[1])
    assert "datasets" not in metadata and "base_model" not in metadata
    assert str(tmp_path) not in yaml.safe_dump(metadata)  # no local path anywhere in the metadata
    [dataset] = {(r.dataset_type, r.dataset_name) for r in card.data.eval_results}
    assert dataset == ("my_posts", "my_posts.jsonl")
    assert f"Posts from `{data}`" in section(card.text, "Training data")

    # a compressed copy, evaluated on other local posts: the same in the compression report's evaluation
    write_json(folder / "compression_report.json", {"evaluation": {"data": str(data.with_name("held_out.jsonl")),
                                                                   "after": {"loss": 3.5}}})
    card = render_model_card(folder)
    assert str(tmp_path) not in yaml.safe_dump(card.data.to_dict())
    assert {r.dataset_name for r in card.data.eval_results} == {"held_out.jsonl"}
    assert f"Measured on the compressed weights, on {data.with_name('held_out.jsonl')}" in card.text


@pytest.mark.slow
def test_classifier_card_has_its_pipeline_tag_metrics_and_a_working_snippet(classifier_folder, snippet_output):
    card = ModelCard.load(classifier_folder / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert metric_values(card) == {"accuracy": 0.8125, "f1": 0.75, "loss": 0.625}
    assert table(section(card.text, "Model"))["Labels"] == "`love`, `haha`, `angry`"
    code = usage_snippet(classifier_folder)
    assert "AutoModelForSequenceClassification" in code and 'pipeline("text-classification"' in code
    probabilities, predictions = snippet_output["classifier"][-2:]
    probabilities = eval(probabilities)  # {label: probability}, from the model
    assert set(probabilities) == set(LABELS.values()) and sum(probabilities.values()) == pytest.approx(1, abs=0.01)
    assert {r["label"] for r in eval(predictions)} == set(LABELS.values())  # from the pipeline, top_k=None


def test_compressed_folder_reports_the_compression_and_the_compressed_evaluation(tmp_path):
    folder = save_tiny_model(tmp_path / "small-int8")
    write_json(folder / "metrics.json", {"eval_loss": 1.0, "eval_perplexity": math.e})  # the source model's, copied
    after = {"loss": 2.0, "perplexity": math.exp(2.0), "bits_per_character": 1.5, "posts": 40}
    write_json(folder / "compression_report.json", {
        "steps": {"prune": 0.3, "dtype": "bfloat16"}, "weights_mb": {"before": 0.1, "after": 0.05},
        "sparsity": {"after": 0.3, "layers": {f"layer.{i}": 0.3 for i in range(12)}},
        "evaluation": {"data": "bundled sample (validation)", "before": {"loss": 1.0}, "after": after},
    })
    card = ModelCard.load(write_model_card(folder))
    assert "compressed" in card.data.tags
    assert metric_values(card) == {"loss": 2.0, "perplexity": math.exp(2.0), "bits-per-character": 1.5}
    rows = table(card.text.split("### Compression", 1)[1])
    assert rows["steps.prune"] == "0.3" and rows["weights_mb.after"] == "0.05"
    assert rows["sparsity.layers"] == "12 entries (see `compression_report.json`)"


def valid_metadata(run_folder) -> tuple[dict, str]:
    text = (run_folder / "README.md").read_text()
    _, block, body = text.split("---\n", 2)
    return yaml.safe_load(block), body


def set_metric_value(metadata, value):
    metadata["model-index"][0]["results"][0]["metrics"][0]["value"] = value


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(license=123), "license"),
    (lambda m: m.update(license="my-own-licence"), "license"),
    (lambda m: m.pop("license"), "license"),
    (lambda m: set_metric_value(m, "abc"), "model-index"),
    (lambda m: set_metric_value(m, float("nan")), "model-index"),
    (lambda m: m["model-index"][0].pop("results"), "model-index"),
    (lambda m: m.update(pipeline_tag="post-generation"), "pipeline_tag"),
    (lambda m: m.update(language="English"), "language"),
    (lambda m: m.update(library_name=["transformers"]), "library_name"),
    (lambda m: m.update(base_model=5), "base_model"),
    (lambda m: m.update(datasets=[1]), "datasets"),
    (lambda m: m.update(datasets=["/tmp/pytest-7/data/my_posts.jsonl"]), "datasets"),  # a path, not a Hub id
    (lambda m: m.update(base_model="/home/me/runs/small"), "base_model"),
])
def test_invalid_metadata_is_a_value_error_naming_the_field(run_folder, tmp_path, change, field):
    metadata, body = valid_metadata(run_folder)
    change(metadata)
    text = f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n{body}"
    with pytest.raises(ValueError, match=f"^{field}: "):
        validate_model_card(text)
    (tmp_path / "README.md").write_text(text)
    with pytest.raises(ValueError, match=f"^{field}: "):
        validate_model_card(tmp_path)  # a folder holding the card, as a path


def test_validate_accepts_the_written_card(run_folder):
    card = validate_model_card(run_folder / "README.md")
    assert card.data.license == "mit" and len(card.data.eval_results) == 3


def test_a_folder_without_config_json_is_not_a_model(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="config.json"):
        render_model_card(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        write_model_card(tmp_path / "missing")
    assert not (tmp_path / "README.md").exists()


def test_an_invalid_card_leaves_the_previous_readme_and_no_temporary_file(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    (folder / "README.md").write_text("previous card")
    with pytest.raises(ValueError, match="^license: "):
        write_model_card(folder, license="not-a-licence")
    assert (folder / "README.md").read_text() == "previous card"
    write_model_card(folder)
    assert [p.name for p in folder.iterdir() if "README" in p.name] == ["README.md"]


def test_card_command_rewrites_the_readme(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "model")
    (folder / "README.md").write_text("stale")
    assert cli(["card", "--model", str(folder), "--base-model", "someone/base"]) == 0
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "someone/base" and card.data.pipeline_tag == "text-generation"
    capsys.readouterr()
    assert cli(["card", "--model", str(folder), "--print"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == (folder / "README.md").read_text().strip() and "written to" in printed.err
    assert ModelCard.load(folder / "README.md").data.base_model is None
    assert cli(["card", "--model", str(tmp_path)]) == 2
    assert "config.json is missing" in capsys.readouterr().err
