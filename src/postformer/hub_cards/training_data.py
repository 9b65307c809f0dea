"""What a card says about the training data, from `training_config.json`: the bundled posts sample (its licence,
its data card embedded), or the user's posts (the licence and text of the README beside them)."""

import re
from pathlib import Path

import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from .metadata import HUB_LICENSES

BUNDLED_DATA_CARD = Path(__file__).resolve().parent.parent / "data" / "posts" / "README.md"
BUNDLED_DATA_LICENSE = "mit"
BUNDLED_DATASET_ID = "fb-posts"


def training_data(training: dict | None) -> dict:
    """What the card says about the training data: its licence, its `type` and `name` in the model-index, its
    description and section text.

    None of it is a Hub dataset id, so the card's `datasets` metadata stays empty: a local file or folder means
    nothing on the Hub (and its path, which can name the user and their folders, belongs in the text only), and
    the bundled sample's source is a GitHub repository, not a Hub dataset. The model-index needs a dataset `type`
    and `name` all the same: a short name, never a path."""
    if training is None:
        return dict(bundled=False, license="other", type="posts", name="posts", description="the held-out posts",
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
        return dict(bundled=True, license=BUNDLED_DATA_LICENSE, type=BUNDLED_DATASET_ID,
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
    return dict(bundled=False, license=license, type=short_name(data), name=data.name or "posts",
                description=f"`{data}`",
                section=section,
                nature=f"This model was trained on the posts in `{data}` (see Training data): it knows those "
                "posts, their authors' opinions and their time, not social media, the public or the world in general.")


def short_name(data: Path) -> str:
    """A name for data in the model-index: the file's stem or the folder's name, in the characters of a Hub id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", data.stem if data.suffix else data.name).strip("-.") or "posts"


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
