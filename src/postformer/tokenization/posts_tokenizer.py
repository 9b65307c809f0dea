"""The posts tokenizer: byte-level BPE trained with `tokenizers`, saved as a `PreTrainedTokenizerFast`.

Byte-level BPE can encode any Unicode string and decode it back unchanged. What makes it a *posts* tokenizer
is the pre-tokenizer: URLs, hashtags, @mentions and emoji sequences (ZWJ families, skin tones, flags) are kept
as single pieces, so BPE learns them as units instead of splitting them on punctuation like a book tokenizer.
Everything lives in `tokenizer.json`, so `AutoTokenizer.from_pretrained(folder)` needs no custom code. Beside a
model it still wants `trust_remote_code=True` (or False): transformers 5's AutoTokenizer loads the folder's
config with AutoConfig before it reads any tokenizer file, and the model's `auto_map` makes AutoConfig ask
whether to run the model's code. Nothing saved with the tokenizer is read early enough to avoid that (see the
README, Publishing).
"""

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, SEP = "<pad>", "<s>", "</s>", "<sep>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SEP]  # ids 0-3, the defaults of PostformerConfig
URL_TOKEN, MENTION_TOKEN = "<url>", "<user>"

# A URL does not end in sentence punctuation: "(see https://x.org/a)." keeps its ")." outside.
URL_PATTERN = r"(?:https?://|www\.)\S*[^\s.,;:!?'\")\]}>]"
HASHTAG_OR_MENTION_PATTERN = r"[#@][\p{L}\p{N}_]+"
_EMOJI_PART = r"(?:\p{Extended_Pictographic}|\p{Regional_Indicator}{2}|[0-9#*]\x{FE0F}?\x{20E3})"
_EMOJI_TAIL = r"[\x{FE0F}\x{20E3}\x{1F3FB}-\x{1F3FF}\x{E0020}-\x{E007F}]*"
EMOJI_PATTERN = _EMOJI_PART + _EMOJI_TAIL + r"(?:\x{200D}" + _EMOJI_PART + _EMOJI_TAIL + r")*"

# One alternative per kind of piece, tried in order; each may carry the space before it (as GPT-2's does).
POSTS_SPLIT_PATTERN = "|".join(
    [
        r" ?" + URL_PATTERN,
        r" ?" + HASHTAG_OR_MENTION_PATTERN,
        r" ?" + EMOJI_PATTERN,
        r"'(?:[sdmt]|ll|ve|re)",
        r" ?\p{L}+",
        r" ?\p{N}+",
        r" ?[^\s\p{L}\p{N}]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)


def minimum_vocab_size(normalize: bool = False) -> int:
    """The 256 byte symbols, the special tokens and (when normalising) the two placeholders."""
    return 256 + len(SPECIAL_TOKENS) + (2 if normalize else 0)


def build_tokenizer(normalize: bool = False, posts_pre_tokenizer: bool = True) -> Tokenizer:
    """An untrained byte-level BPE tokenizer.

    normalize: map URLs to "<url>" and @mentions to "<user>" (a `Replace` normaliser kept in tokenizer.json).
    posts_pre_tokenizer: split with POSTS_SPLIT_PATTERN; False gives GPT-2's plain byte-level splitting (the
    baseline the benchmark compares against).
    """
    tokenizer = Tokenizer(models.BPE())
    if normalize:
        tokenizer.normalizer = normalizers.Sequence(
            [
                normalizers.Replace(Regex(URL_PATTERN), URL_TOKEN),
                normalizers.Replace(Regex(r"(?<![\p{L}\p{N}_])@[\p{L}\p{N}_]+"), MENTION_TOKEN),  # not e-mails
            ]
        )
    if posts_pre_tokenizer:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(POSTS_SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # A post starts with <s>; a pair of posts is joined by the design's <sep>. End-of-post (</s>) is added by
    # the training pipeline, not here, so that a prompt is not closed before generation continues it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {SEP} $B",
        special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS)), (SEP, SPECIAL_TOKENS.index(SEP))],
    )
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    normalize: bool = False,
    posts_pre_tokenizer: bool = True,
    model_max_length: int = 512,
    min_frequency: int = 2,
    show_progress: bool = True,
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE posts tokenizer on `texts`; returns a transformers fast tokenizer.

    Special tokens get ids 0-3: <pad>, <s> (beginning of post), </s> (end of post), <sep>. Padding is on the
    left, as generation needs.
    """
    minimum = minimum_vocab_size(normalize)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size!r} is too small: byte-level BPE needs the 256 byte symbols plus "
            f"{minimum - 256} special tokens, so at least {minimum}"
        )
    placeholders = [URL_TOKEN, MENTION_TOKEN] if normalize else []
    tokenizer = build_tokenizer(normalize=normalize, posts_pre_tokenizer=posts_pre_tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(placeholders),
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    seen = [0]

    def non_empty_posts():
        for text in texts:
            if text and not text.isspace():
                seen[0] += 1
                yield text

    tokenizer.train_from_iterator(non_empty_posts(), trainer=trainer, length=length)
    if seen[0] == 0:
        raise ValueError("no posts to train the tokenizer on: the corpus is empty")
    # Placeholders are matched after normalisation and decode as their own text.
    tokenizer.add_tokens([AddedToken(token, normalized=True, special=False) for token in placeholders])
    return wrap_tokenizer(tokenizer, model_max_length=model_max_length)


def wrap_tokenizer(tokenizer: Tokenizer, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        sep_token=SEP,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def posts_generation_config(tokenizer: PreTrainedTokenizerFast):
    """The generation defaults of a model trained on posts with this tokenizer, written to the model folder's
    generation_config.json: a post ends at end-of-post ("</s>") or at the separator ("<sep>"), so generation
    stops at either; padding and beginning-of-post are never a continuation, so they are suppressed; and it
    samples with `postformer.generation.POSTS_SAMPLING`, the settings measured to read most like posts. (The model
    class itself generates plainly: these belong to the trained model, not the architecture.)"""
    from transformers import GenerationConfig

    from ..generation import POSTS_SAMPLING

    stop = [i for i in (tokenizer.eos_token_id, tokenizer.sep_token_id) if i is not None]
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[i for i in (tokenizer.pad_token_id, tokenizer.bos_token_id) if i is not None],
        **POSTS_SAMPLING,
    )


def config_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    """The config fields a model built for this tokenizer takes from it."""
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )

