"""The card's prose and tables: summary, model description, architecture, hyper-parameters, run facts, the
compression report and the generation defaults, each from the folder's files, as markdown."""

from .folder import label_names, task_of


def base_model_note(base_model: str | None, hub_id: str | None) -> str | None:
    if not base_model:
        return None
    if hub_id:
        return f"Fine-tuned from [`{hub_id}`](https://huggingface.co/{hub_id})."
    return (f"Fine-tuned from the local model `{base_model}`. Set `base_model:` in the metadata above to its Hub "
            "id once it is uploaded, so the Hub links the two.")


def summary(task, parameters, data, base_model, compressed) -> str:
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


def model_description(config: dict, task: str) -> str:
    architecture = (config.get("architectures") or ["PostformerForCausalLM"])[0]
    head = {"text-generation": "a language-model head tied to the token embeddings"
            if config.get("tie_word_embeddings", True) else "a language-model head",
            "text-classification": {
                "mean": "a linear head on the mean of the post's token states",
                "weighted_mean": "a linear head on the position-weighted mean of the post's token states",
                "mean_last": "a linear head on the mean of the post's token states plus its last token's state",
            }.get(config.get("classifier_pooling"), "a linear head on the last non-padding token"),
            }.get(task, "no head")
    return (f"`{architecture}`: a decoder-only transformer (pre-norm blocks of causal self-attention and a "
            f"feed-forward layer) with {head}. The numbers below are read from `config.json` and the saved weights.")


def architecture_rows(config: dict, parameters: int | None) -> list[tuple[str, str]]:
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    grouped = isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads < heads
    positions = config.get("position_embedding_type")
    if positions is not None and config.get("use_relative_position"):
        positions += f" + relative (Shaw et al., clipped at {config.get('max_relative_position')})"
    kinds = config.get("layer_types") or []
    window = None
    if "sliding_attention" in kinds:
        sliding = kinds.count("sliding_attention")
        window = f"sliding window of {config.get('sliding_window')} tokens" + (
            "" if sliding == len(kinds) else f" on {sliding} of {len(kinds)} layers (`layer_types` in config.json)")
    rows = [
        ("Parameters", format_cell(parameters)),
        ("Hidden size", format_cell(config.get("hidden_size"))),
        ("Layers", format_cell(config.get("num_hidden_layers"))),
        ("Attention heads", format_cell(heads)),
        ("Key-value heads", format_cell(kv_heads) + (" (grouped-query attention)" if grouped else "")),
        ("Intermediate (feed-forward) size", format_cell(config.get("intermediate_size"))),
        ("Activation", format_cell(config.get("hidden_act"))),
        ("Positions", format_cell(positions)),
        ("Attention", format_cell(window)),
        ("Context (tokens)", format_cell(config.get("max_position_embeddings"))),
        ("Vocabulary", format_cell(config.get("vocab_size"))),
        ("Tied input and output embeddings", format_cell(config.get("tie_word_embeddings"))),
        ("Weights dtype", format_cell(config.get("dtype") or config.get("torch_dtype"))),
    ]
    if config.get("id2label") and task_of(config)[0] == "text-classification":
        rows.append(("Labels", ", ".join(f"`{label}`" for label in label_names(config))))
    return [(label, value) for label, value in rows if value != "-"]


def hyperparameter_rows(training: dict) -> list[tuple[str, str]]:
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
        rows.append((key, format_cell(value)))
    return rows


def run_facts(metrics: dict) -> list[tuple[str, str]]:
    """metrics.json's numbers about the run itself (runtime, training loss, ...), not the evaluation."""
    return [(key, format_cell(value)) for key, value in metrics.items()
            if not key.startswith("eval_") and key != "parameters" and isinstance(value, (int, float))
            and not isinstance(value, bool)]


def flatten(report: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """A JSON report as table rows with dotted keys; long or deep parts are summarised, not spelled out."""
    rows = []
    for key, value in report.items():
        label = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) <= 8 and depth < 2:
            rows += flatten(value, label + ".", depth + 1)
            continue
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        if len(items) > 8 or any(isinstance(item, (dict, list)) for item in items):
            rows.append((f"`{label}`", f"{len(items)} entries (see `compression_report.json`)"))
        else:
            rows.append((f"`{label}`", format_cell(value)))
    return rows


def format_cell(value) -> str:
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
        return ", ".join(format_cell(v) if not isinstance(v, str) else repr(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_cell(v)}" for k, v in value.items()) or "(none)"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _approximate(count: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return str(count)


def format_metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else format_cell(value)


def generation_defaults(generation: dict | None, config: dict) -> str | None:
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
