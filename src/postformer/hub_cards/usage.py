"""The card's usage snippet: Auto classes and a pipeline on the folder, as the tests run it."""

import json
from pathlib import Path

DEFAULT_PROMPT = "Breaking news:"


def _literal(text: str) -> str:
    """A Python string literal in double quotes (JSON's string syntax is valid Python)."""
    return json.dumps(text, ensure_ascii=False)


def local_model_id(model_dir: str | Path) -> str:
    """The folder as the snippet loads it: the path as the command was given it, so that the snippet runs as
    written from where the command ran. A relative path starts with "./": transformers takes "runs/small" for a
    Hub id whenever no such folder is in the current directory (and then fails on the Hub, or loads someone
    else's model), while "./runs/small" can only be a folder."""
    path = Path(model_dir)
    text = path.as_posix()
    return text if path.is_absolute() or text in (".", "..") or text.startswith("../") else f"./{text}"


def usage_snippet(task: str, auto_class: str, model_id: str, name: str, training: dict | None) -> str:
    """A snippet that runs as written from where the folder was saved (`model_id`, see `local_model_id`), and
    anywhere once `model_id` is the Hub id the comment names (`name`: the folder's name)."""
    prompts = (training or {}).get("sample_prompts") or []
    prompt = next((p for p in prompts if isinstance(p, str) and p.strip()), DEFAULT_PROMPT)
    head = (
        f"from transformers import {auto_class}, AutoTokenizer, pipeline"
        f"{', set_seed' if task == 'text-generation' else ''}\n\n"
        f"model_id = {_literal(model_id)}  # this folder; after `postformer push`, its Hub id: \"your-name/{name}\"\n"
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
