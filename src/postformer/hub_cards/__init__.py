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
  the model-index's dataset (a short name: the data's path is in the text only, and `datasets` stays empty, as
  it takes Hub dataset ids), the hyper-parameter table, the prompt of the usage snippet.
- `metrics.json`: `model-index` and the evaluation table (`eval_*` or plain names), the run facts.
- `compression_report.json`: the compression table, the `compressed` tag, and the evaluation of the compressed
  model when it records one (a compressed folder's metrics.json is the source model's, copied along).
- `loss_curve.png`: the loss-curve section.
- the README.md beside user data: embedded in the training-data section; its `license` is the card's licence.

A missing optional file drops its section.

Where things live: `rendering` (render and write), `validation` (the offline check), `metadata` (the Hub's
vocabularies, Hub ids, the model-index), `folder` (task, labels, parameter count from the saved files),
`training_data` (the data section and licence), `sections` (the card's prose and tables), `usage` (the snippet).
"""

from .metadata import HUB_LICENSES, PIPELINE_TAGS
from .rendering import render_model_card, write_model_card
from .validation import validate_model_card

__all__ = ["render_model_card", "write_model_card", "validate_model_card", "HUB_LICENSES", "PIPELINE_TAGS"]
