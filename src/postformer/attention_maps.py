"""Attention maps: what each token of a post attends to, for notebooks and `postformer attention`.

`attention_weights(model, tokenizer, text)` runs the model once on the post and returns its attention
probabilities, layer by layer and head by head, with readable token labels. The weights are the model's own
(`output_attentions=True` on the eager attention kernel), not recomputed from queries and keys: whatever the
model adds to the scores (rotary or Shaw relative positions, the causal mask, grouped-query heads) is in them.

`plot_attention(maps, "map.png", layer=0, head=1)` draws one head as a heat-map, queries as rows and keys as
columns; without a layer or head it draws a grid of every head of every layer (or of one layer, or one head
across the layers). Layers and heads are numbered from 0, as in Python.

    from postformer.attention_maps import attention_weights, plot_attention
    from postformer.model_files import load_model

    model, tokenizer = load_model("runs/small")
    maps = attention_weights(model, tokenizer, "can't believe the match #football 😂")
    maps.weights.shape                  # (layers, heads, tokens, tokens), float32
    plot_attention(maps, "match.png")   # in a notebook: IPython.display.Image("match.png")

Plotting needs matplotlib (`pip install 'postformer[extras]'`); it draws on its own Agg figure, without
pyplot, so it neither opens a window nor changes a notebook's backend.
"""

import functools
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._text import check_text

__all__ = ["AttentionMaps", "attention_weights", "plot_attention", "token_labels"]


@dataclass
class AttentionMaps:
    """The attention probabilities of one post.

    tokens: one readable label per token (see `token_labels`), special tokens such as "<s>" as they are.
    weights: float32 array [layers, heads, tokens, tokens]; weights[l, h, i, j] is how much query token i
        attends to key token j in head h of layer l (0-based). Each row sums to one; for a causal model the
        entries above the diagonal (j > i) are zero.
    token_ids: the ids the model was run on.
    text: the post.
    """

    tokens: list[str]
    weights: np.ndarray
    token_ids: list[int]
    text: str

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1])

    def plot(self, output, layer: int | None = None, head: int | None = None) -> Path:
        """`plot_attention(self, output, layer, head)`: write the maps as a PNG heat-map."""
        return plot_attention(self, output, layer=layer, head=head)


# ----------------------------------------------------------------------------------------------------------------
# Token labels


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The printable characters byte-level BPE vocabularies are written in, mapped back to their bytes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {symbol: byte for byte, symbol in bytes_to_unicode().items()}


def _utf8_characters(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, text) of each character of `data`; a byte that starts no valid character is "<0xNN>"."""
    characters, index = [], 0
    while index < len(data):
        lead = data[index]
        if lead < 0x80:
            length = 1
        elif 0xC2 <= lead < 0xE0:
            length = 2
        elif 0xE0 <= lead < 0xF0:
            length = 3
        else:
            length = 4 if 0xF0 <= lead < 0xF5 else 0  # 0: a continuation byte or an invalid lead
        chunk = data[index : index + length] if length else b""
        try:
            text = chunk.decode("utf-8") if len(chunk) == length > 0 else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            characters.append((index, index + 1, f"<0x{lead:02X}>"))
            index += 1
        else:
            characters.append((index, index + length, text))
            index += length
    return characters


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and type(decoder).__name__ == "ByteLevel"


def token_labels(tokenizer, token_ids: list[int]) -> list[str]:
    """A readable label for each token: its text, with spaces and newlines as they are.

    Byte-level BPE tokens are stored as byte symbols ("Ġw" for " w", "ðŁĺĤ" for "😂"); they are decoded here.
    A character split over several tokens (an accent or emoji the vocabulary does not hold whole) is shown
    in each of them, marked with "…" on the side it continues: "ö" as "ö…" then "…ö". Special and added
    tokens ("<s>", "<url>") are shown as they are.
    """
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    pieces = tokenizer.convert_ids_to_tokens(list(token_ids))
    byte_decoder = _byte_decoder() if _is_byte_level(tokenizer) else None
    labels: list[str | None] = [None] * len(pieces)

    # Consecutive byte-level tokens are decoded together, so that a character split between tokens is found.
    run: list[tuple[int, bytes]] = []

    def flush():
        if not run:
            return
        data = b"".join(chunk for _, chunk in run)
        characters = _utf8_characters(data)
        start = 0
        for position, chunk in run:
            end = start + len(chunk)
            parts = [c for c in characters if c[0] < end and c[1] > start]
            label = "".join(text for _, _, text in parts)
            if parts and parts[0][0] < start:
                label = "…" + label
            if parts and parts[-1][1] > end:
                label += "…"
            labels[position] = label
            start = end
        run.clear()

    for position, (token_id, piece) in enumerate(zip(token_ids, pieces)):
        if token_id in special or piece is None:
            flush()
            labels[position] = piece if piece is not None else f"<id {token_id}>"
        elif byte_decoder is not None and piece and all(ch in byte_decoder for ch in piece):
            run.append((position, bytes(byte_decoder[ch] for ch in piece)))
        else:  # not a byte-level token: let the tokenizer decode it
            flush()
            labels[position] = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
    flush()
    return labels


# ----------------------------------------------------------------------------------------------------------------
# Weights


def attention_weights(model, tokenizer, text: str) -> AttentionMaps:
    """The attention probabilities of `model` on the post `text`, as an `AttentionMaps`.

    The text is encoded as the tokenizer encodes a post ("<s>" then the text, no end-of-post) and run once,
    in eval mode (no dropout) and without gradients, with `output_attentions=True`. Fused kernels (sdpa,
    flash, flex) return no probabilities, so the model is switched to the "eager" kernel for the call and
    switched back afterwards, also when the call fails; its training/eval mode is restored too. The model
    object is changed while the call runs: do not share it with another thread meanwhile.

    Raises ValueError for an empty text, for a text longer than the model's context (giving the token
    count and the limit), and for a model that returns no attention weights. TypeError if `text` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("text is empty: give the post whose attention to show")
    check_text(text, "text")
    # verbose=False: the length check below gives the model's limit, not the tokenizer's model_max_length.
    token_ids = [int(i) for i in tokenizer(text, verbose=False)["input_ids"]]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and len(token_ids) > limit:
        with_bos = " (with <s>)" if token_ids[0] == tokenizer.bos_token_id else ""
        raise ValueError(
            f"text is too long: {len(token_ids)} tokens{with_bos}, but the model's context is {limit} positions "
            "(max_position_embeddings); shorten the text"
        )

    previous = getattr(model.config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(model, "set_attn_implementation")
    was_training = model.training
    try:
        if switch:
            model.set_attn_implementation("eager")
        model.eval()
        device = next(model.parameters()).device
        input_ids = torch.tensor([token_ids], device=device)
        with torch.no_grad():
            outputs = model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                output_attentions=True,
                use_cache=False,
            )
    finally:
        model.train(was_training)
        if switch:
            model.set_attn_implementation(previous)

    attentions = getattr(outputs, "attentions", None)
    implementation = getattr(model.config, "_attn_implementation", None)
    if not attentions or any(a is None for a in attentions):
        raise ValueError(
            f"{type(model).__name__} returned no attention weights with output_attentions=True (attention "
            f"implementation {implementation!r}): it needs to run on transformers' eager attention kernel"
        )
    shapes = sorted({tuple(a.shape) for a in attentions})
    length = len(token_ids)
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][0] != 1 or shapes[0][2:] != (length, length):
        raise ValueError(
            f"{type(model).__name__} returned attention weights of shapes {shapes}; expected "
            f"(1, heads, {length}, {length}) for each layer"
        )
    weights = torch.cat([a.float().cpu() for a in attentions], dim=0).numpy()  # (layers, heads, seq, seq)
    return AttentionMaps(
        tokens=token_labels(tokenizer, token_ids),
        weights=np.ascontiguousarray(weights, dtype=np.float32),
        token_ids=token_ids,
        text=text,
    )


# ----------------------------------------------------------------------------------------------------------------
# Plots

# Fonts tried, in order, for token labels: matplotlib's DejaVu Sans covers Latin, Greek, Cyrillic and many
# emoji; the others, when installed, cover more emoji and CJK. (Colour-bitmap emoji fonts cannot be drawn.)
_LABEL_FONTS = (
    "DejaVu Sans", "Noto Sans", "Noto Sans Symbols", "Noto Sans Symbols 2", "Noto Emoji", "Noto Sans CJK JP",
    "Noto Sans CJK SC", "Symbola", "Segoe UI Emoji", "Segoe UI Symbol", "Arial Unicode MS",
)
_VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
MAX_FIGURE_INCHES = 30.0  # a grid of many layers and heads is shrunk to fit this square
MAX_LABEL_CHARS = 18
DPI = 100


@functools.lru_cache(maxsize=1)
def _label_fonts() -> tuple[tuple[str, ...], frozenset[int]]:
    """The installed label fonts, and the code points they can draw."""
    from matplotlib import font_manager, ft2font

    families, covered = [], set()
    for name in _LABEL_FONTS:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
            charmap = ft2font.FT2Font(path).get_charmap()
        except (ValueError, OSError, RuntimeError):  # not installed, or not readable
            continue
        families.append(name)
        covered.update(charmap)
    return tuple(families) or ("sans-serif",), frozenset(covered)


def _is_invisible(ch: str) -> bool:
    """Zero-width characters: format characters (ZWJ, direction marks) and variation selectors."""
    return unicodedata.category(ch) == "Cf" or 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF


def _display_label(label: str, covered: frozenset[int], visible_spaces: bool = True) -> str:
    """`label` as drawn: whitespace made visible (unless `visible_spaces` is False, for titles), and
    characters no installed font has as U+XXXX, since matplotlib would draw an anonymous box for them.

    Zero-width characters (the joiner inside "👩‍👧", the selector after "❤") are left out beside visible
    ones, and spelled U+XXXX in a token made of nothing else, which would otherwise look empty.
    """
    shown, spelled = [], []
    for ch in label:
        category = unicodedata.category(ch)
        code = f"U+{ord(ch):04X}"
        if not visible_spaces and ch.isspace():
            piece = " "
        elif ch in _VISIBLE_WHITESPACE or category == "Zs":
            piece = _VISIBLE_WHITESPACE.get(ch, "␣")
        elif _is_invisible(ch):
            spelled.append(code)
            continue
        elif category in ("Mn", "Me") and ord(ch) not in covered:
            piece = ""  # a combining mark the fonts lack: the base character still reads
        elif ord(ch) in covered and category != "Cc":
            piece = ch
        else:
            piece = code
        shown.append(piece)
        spelled.append(piece)
    text = "".join(shown)
    return text if text.strip("…") else "".join(spelled)


def _check_index(name: str, value, count: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer from 0 to {count - 1}, got {value!r}")
    if not 0 <= value < count:
        plural = "s" if count != 1 else ""
        raise ValueError(
            f"{name} {value} is out of range: the model has {count} {name}{plural}, numbered 0 to {count - 1}"
        )


def _tick_layout(length: int, inches: float, largest: float = 10.0, smallest: float = 6.0) -> tuple[float, int]:
    """Font size (points) and label step for `length` tick labels along `inches`: the largest size up to
    `largest` that fits one label per token, else `smallest` with every step-th token labelled."""
    fitting = 0.8 * 72 * inches / max(length, 1)
    if fitting >= smallest:
        return min(largest, fitting), 1
    return smallest, math.ceil(smallest / fitting)


def _set_token_ticks(ax, labels: list[str], fontsize: float, step: int, fonts, x: bool, y: bool) -> None:
    positions = list(range(0, len(labels), step))
    text = dict(fontsize=fontsize, fontfamily=list(fonts), parse_math=False)  # "$5 and $6" is not TeX
    if x:
        ax.set_xticks(positions, [labels[i] for i in positions], rotation=90, **text)
    else:
        ax.set_xticks([])
    if y:
        ax.set_yticks(positions, [labels[i] for i in positions], **text)
    else:
        ax.set_yticks([])


def _short(text: str, covered: frozenset[int], inches: float) -> str:
    """The post on one line, for a title about `inches` wide (at 10 points, after a 45-character lead)."""
    limit = max(10, int(inches * 12) - 45)
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return _display_label(text, covered, visible_spaces=False)


def plot_attention(maps: AttentionMaps, output, layer: int | None = None, head: int | None = None) -> Path:
    """Write the attention of `maps` as a PNG heat-map to `output` (a .png path; missing folders are made).

    layer and head given: that head alone, tokens as labels (query rows, key columns) and a colour bar.
    Only layer: all heads of that layer in a row. Only head: that head in every layer, in a column. Neither:
    a grid of every layer (rows) by every head (columns). Layers and heads are numbered from 0.

    Colours run from 0 to the largest weight shown, leaving out the first query's (<s> attends only to
    itself, weight 1, which would darken everything else; the colour bar's arrow marks the cap), shared by
    all panels of a grid so that they compare. For a causal model the entries above the diagonal, which no
    query can attend to, are left blank. Labels show spaces as "␣" and newlines as "↵", characters that no
    installed font has as U+XXXX, and are cut at 18 characters; long posts get smaller labels, then every
    n-th one (grids drop labels instead). A single map is at most 12 inches square; grids are capped at
    30 x 30 inches; 100 dpi. Returns the path written. Raises ValueError for a layer or head out of range (naming the valid range)
    and for an output that is not a .png.
    """
    weights = np.asarray(maps.weights)
    if weights.ndim != 4 or weights.shape[2] != weights.shape[3] or weights.shape[2] != len(maps.tokens):
        raise ValueError(
            f"maps.weights must have shape (layers, heads, {len(maps.tokens)}, {len(maps.tokens)}) for "
            f"{len(maps.tokens)} tokens, got {weights.shape}"
        )
    num_layers, num_heads, length = weights.shape[:3]
    if layer is not None:
        _check_index("layer", layer, num_layers)
    if head is not None:
        _check_index("head", head, num_heads)
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {str(path)!r}")
    try:
        import matplotlib
        from matplotlib.colors import Colormap
        from matplotlib.figure import Figure
    except ImportError:
        raise ModuleNotFoundError(
            "plotting attention needs matplotlib: pip install 'postformer[extras]'"
        ) from None

    fonts, covered = _label_fonts()
    # Long tokens (URLs) are cut, so that they leave room for the map.
    labels = [_display_label(token, covered) for token in maps.tokens]
    labels = [label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…" for label in labels]
    layers = [layer] if layer is not None else list(range(num_layers))
    heads = [head] if head is not None else list(range(num_heads))
    shown = weights[np.ix_(layers, heads)]  # (rows, columns, seq, seq)
    # Blank out what the mask forbids (exact zeros above the diagonal), so it does not read as "no attention".
    upper = np.triu(np.ones((length, length), dtype=bool), k=1)
    masked = np.ma.masked_where(upper & (shown == 0), shown)
    # The first query can only attend to itself (weight 1): a scale up to that would leave every other row
    # dark, so colours end at the largest weight of the other queries and the colour bar shows the cap.
    choosing = shown[..., 1:, :] if length > 1 else shown
    vmax = float(choosing.max()) if choosing.max() > 0 else 1.0
    colour_bar = dict(label="attention probability", extend="max" if shown.max() > vmax else "neither")
    cmap: Colormap = matplotlib.colormaps["viridis"].with_extremes(bad="#f2f2f2")
    longest = max((len(label) for label in labels), default=1)
    title_text = dict(fontfamily=list(fonts), parse_math=False)

    if layer is not None and head is not None:
        area = min(12.0, max(3.0, 0.3 * length))
        fontsize, step = _tick_layout(length, area)
        margin = 0.7 + 0.6 * fontsize / 72 * longest  # room for the rotated key labels
        figure = Figure(figsize=(area + margin + 1.3, area + margin + 0.7), dpi=DPI, layout="constrained")
        ax = figure.add_subplot()
        image = ax.imshow(masked[0, 0], cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        _set_token_ticks(ax, labels, fontsize, step, fonts, x=True, y=True)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
        ax.set_title(f"layer {layer}, head {head}: {_short(maps.text, covered, area)}", fontsize=10, **title_text)
        figure.colorbar(image, ax=ax, shrink=0.8, **colour_bar)
    else:
        rows, columns = len(layers), len(heads)
        # Laid out by hand, in inches: matplotlib's layout engines take seconds on a 12 x 12 grid.
        gap_w, gap_h, top, right = 0.15, 0.35, 0.8, 1.3  # between panels, titles above, colour bar right
        cell = min(3.5, max(1.5, 0.12 * length))
        fontsize, step = _tick_layout(length, cell, largest=8.0, smallest=5.0)
        # Token labels on the outer panels only, and only when every token gets a readable one.
        with_labels = step == 1
        margin = 0.5 + 0.6 * fontsize / 72 * longest if with_labels else 0.3
        cell = min(
            cell,
            (MAX_FIGURE_INCHES - margin - right - (columns - 1) * gap_w) / columns,
            (MAX_FIGURE_INCHES - margin - top - (rows - 1) * gap_h) / rows,
        )
        fontsize, step = _tick_layout(length, cell, largest=8.0, smallest=5.0)  # the cap may shrink the panels
        with_labels = with_labels and step == 1
        panels_w, panels_h = columns * cell + (columns - 1) * gap_w, rows * cell + (rows - 1) * gap_h
        width, height = margin + panels_w + right, margin + panels_h + top
        figure = Figure(figsize=(width, height), dpi=DPI)
        axes = figure.subplots(
            rows, columns, squeeze=False,
            gridspec_kw=dict(left=margin / width, right=(margin + panels_w) / width, bottom=margin / height,
                             top=(margin + panels_h) / height, wspace=gap_w / cell, hspace=gap_h / cell),
        )
        for r, layer_index in enumerate(layers):
            for c, head_index in enumerate(heads):
                ax = axes[r, c]
                image = ax.imshow(masked[r, c], cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
                if with_labels:
                    _set_token_ticks(ax, labels, fontsize, step, fonts, x=r == rows - 1, y=c == 0)
                else:
                    ax.set_xticks([])
                    ax.set_yticks([])
                ax.set_title(f"L{layer_index} H{head_index}", fontsize=8)
        figure.suptitle(
            f"attention (rows: queries, columns: keys), {length} tokens: {_short(maps.text, covered, width)}",
            y=1 - 0.15 / height, va="top", fontsize=10, **title_text,
        )
        bar = figure.add_axes([(margin + panels_w + 0.3) / width, margin / height, 0.2 / width, panels_h / height])
        figure.colorbar(image, cax=bar, **colour_bar)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
