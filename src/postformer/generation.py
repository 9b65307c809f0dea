"""Text generation with a trained model: continue prompts, optionally stream to the terminal.

The model and its tokenizer come from `postformer.model_files.load_model(folder_or_hub_id)`: a folder holds what
`save_pretrained` of a `PostformerForCausalLM` and of its tokenizer write, side by side (config.json,
model.safetensors and the tokenizer files). Importing this package registers the model with transformers' Auto
classes, so no `trust_remote_code` is needed here.

Prompts are encoded as the tokenizer encodes a post: "<s>" then the text, with no end-of-post, so that the
model continues it. An empty prompt is just "<s>": the model starts a new post. Generation stops at
end-of-post ("</s>") or at the separator ("<sep>"), the model's `generation_config.eos_token_id`.

`generate_to_file` continues the prompts of a file of any size into a JSON lines file, a window of prompts at a
time, resuming after a crash and shared among the processes of a launch (`postformer.processing`).

Sampling settings not given take the model's own (its generation_config.json, where `postformer train` writes
`POSTS_SAMPLING`, so `model.generate` and `pipeline("text-generation")` sample the same way), else
`POSTS_SAMPLING`: the settings benchmarks/bench_sampling.py found to read most like posts.
"""

import inspect
import math
import numbers
from collections.abc import Sequence

import torch
from transformers import CompileConfig, GenerationConfig, TextStreamer, set_seed

from . import modeling  # noqa: F401  (registers the Auto classes)
from ._text import check_text

# Chosen by benchmarks/bench_sampling.py (results/sampling.md; the README's "Sampling"): of the settings whose
# samples repeat themselves no more than real posts and keep 90% of their variety, the one whose samples a
# 30-minute model finds likeliest. (0.2 sampled at temperature 1.0, top-k 50, top-p 0.95.)
POSTS_SAMPLING = dict(do_sample=True, temperature=0.7, top_k=0, top_p=0.9, repetition_penalty=1.2,
                      no_repeat_ngram_size=0)


def sampling_defaults(model) -> dict:
    """The sampling settings a model generates with when none are given: those its generation config sets (those
    that differ from transformers' defaults), the rest from POSTS_SAMPLING."""
    own = model.generation_config.to_diff_dict()
    return {name: own.get(name, value) for name, value in POSTS_SAMPLING.items()}


def compiled_generation_options() -> dict:
    """`generate` options for transformers' compiled path: a static key-value cache (preallocated, fixed shapes)
    and a decoding step compiled with `torch.compile`, on every device (transformers compiles on GPUs only by
    default). The first call pays the compilation (seconds to a minute on a CPU); later calls with the same batch
    size and length budget reuse it. Outputs equal the plain path's (tested). On a CPU, plain `generate` already
    takes Postformer's lean decoding loop (modeling/generation_postformer.py), which ran ~3x faster than this
    compiled path on the small preset; these options take transformers' own loop, for accelerators."""
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    # A private attribute: transformers 5 has no public switch that compiles generation off GPUs; it is its own
    # flag for that (tested: test_compiled_generation_options_turn_on_compilation_on_the_cpu fails if it goes).
    compile_config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": compile_config}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_arguments(prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                     num_return_sequences, seed, batch_size):
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt (an empty string starts a new post)")
    for number, prompt in enumerate(prompts, start=1):  # numbered from 1, as the output numbers them
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {number} must be a string, got {type(prompt).__name__}")
        check_text(prompt, f"prompt {number}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not _is_number(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r} (use greedy decoding instead of 0)")
    if not _is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 turns it off), got {top_k!r}")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if not _is_number(repetition_penalty) or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a number > 0 (1.0 turns it off), got {repetition_penalty!r}")
    if not _is_int(no_repeat_ngram_size) or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be an integer >= 0 (0 turns it off), got {no_repeat_ngram_size!r}")
    if not _is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be an integer >= 1, got {num_return_sequences!r}")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _stop_token_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = [tokenizer.eos_token_id, tokenizer.sep_token_id]
    ids = [eos] if _is_int(eos) else list(eos)
    return [int(i) for i in ids if i is not None]


def until_stop(ids: list[int], stop_ids) -> list[int]:
    """`ids` up to and including the first stop token (what follows it is padding), or all of them."""
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[: index + 1]
    return list(ids)


def generate_token_ids(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 60,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    num_return_sequences: int = 1,
    seed: int | None = None,
    do_sample: bool | None = None,
    streamer=None,
    batch_size: int = 8,
    compile: bool = False,
) -> list[list[list[int]]]:
    """What `generate_posts` generates, as token ids: per prompt, per sequence, the new tokens up to and
    including the stop token (end-of-post or separator) when one was generated, without padding.
    compile=True: transformers' compiled path, `compiled_generation_options` (the first call compiles). Sampling
    settings left None take `sampling_defaults(model)`."""
    encoded, options, stop_ids = _prepare(model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p,
                                          repetition_penalty, no_repeat_ngram_size, num_return_sequences, seed,
                                          do_sample, streamer, batch_size, compile)
    if seed is not None:
        set_seed(int(seed))
    device = model.device
    results = []
    for start in range(0, len(prompts), batch_size):
        batch = [{"input_ids": ids} for ids in encoded[start : start + batch_size]]
        inputs = tokenizer.pad(batch, padding=True, padding_side="left", return_tensors="pt")
        input_ids = inputs["input_ids"].to(device)
        attention_mask = inputs["attention_mask"].to(device)
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        for row in range(len(batch)):
            rows = new_tokens[row * num_return_sequences : (row + 1) * num_return_sequences]
            results.append([until_stop(ids, stop_ids) for ids in rows])
    return results


def _check_lengths(model, lengths: list[int], max_new_tokens: int, name=lambda i: f"prompt {i + 1}") -> None:
    """Each prompt's tokens plus max_new_tokens must fit the model's positions; `name(i)` names prompt i."""
    limit = model.config.max_position_embeddings
    for i, length in enumerate(lengths):
        if length + max_new_tokens > limit:
            raise ValueError(
                f"{name(i)} is too long: {length} tokens + max_new_tokens={max_new_tokens} = "
                f"{length + max_new_tokens} exceeds the model's limit of {limit} positions "
                "(max_position_embeddings); shorten the prompt or lower max_new_tokens"
            )


def _prepare(model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
             no_repeat_ngram_size, num_return_sequences, seed, do_sample, streamer, batch_size, compile):
    """`generate_token_ids`'s checks and `generate` options: (the prompts' token ids, the options, the stop ids)."""
    given = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                 repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
    settings = {name: value if given[name] is None else given[name] for name, value in sampling_defaults(model).items()}
    do_sample = bool(settings.pop("do_sample"))
    _check_arguments(prompts, max_new_tokens, **settings, num_return_sequences=num_return_sequences, seed=seed,
                     batch_size=batch_size)
    if streamer is not None and (len(prompts) != 1 or num_return_sequences != 1):
        raise ValueError(
            f"streaming needs one prompt and one sequence, got {len(prompts)} prompt(s) and "
            f"num_return_sequences={num_return_sequences}; print the results after generation instead"
        )
    if streamer is True:
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    elif streamer is False:
        streamer = None

    # verbose=False: a prompt longer than the context gets the clear error below, not the tokenizer's warning first
    encoded = [tokenizer(prompt, verbose=False)["input_ids"] for prompt in prompts]
    _check_lengths(model, [len(ids) for ids in encoded], max_new_tokens)

    stop_ids = _stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = stop_ids[0]
    options = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )
    if do_sample:
        options.update(temperature=float(settings["temperature"]), top_k=int(settings["top_k"]),
                       top_p=float(settings["top_p"]))
    else:  # greedy: the model's sampling defaults must not reach generate (transformers warns about them)
        options.update(temperature=1.0, top_k=50, top_p=1.0)
    options.update(repetition_penalty=float(settings["repetition_penalty"]),
                   no_repeat_ngram_size=int(settings["no_repeat_ngram_size"]))
    if compile:
        options.update(compiled_generation_options())
    # transformers' own checks of how the options combine (greedy decoding with several sequences, ...); the
    # ranges of the sampling values above are checked here, since transformers checks those only while generating.
    GenerationConfig(**options).validate(strict=True)
    if streamer is not None:
        options["streamer"] = streamer
    return encoded, options, stop_ids


def generate_posts(model, tokenizer, prompts: list[str], **options) -> list[list[str]]:
    """Continue each prompt; per prompt, its `num_return_sequences` continuations (text without the prompt,
    special tokens skipped). `options` are those of `generate_token_ids`: max_new_tokens (60), do_sample,
    temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size (by default the model's generation config,
    else `POSTS_SAMPLING`), num_return_sequences (1), seed (None), streamer (None), batch_size (8), compile (False).

    do_sample=False is greedy decoding (temperature, top_k and top_p are then unused). The same `seed` gives
    the same text. `streamer`: None, True (print the continuation to the terminal as it is generated, with a
    `transformers.TextStreamer`) or a transformers streamer; streaming needs one prompt and one sequence.
    Prompts are left-padded into batches of `batch_size`. Raises ValueError for out-of-range values and for a
    prompt whose tokens plus `max_new_tokens` do not fit the model's `max_position_embeddings`.
    """
    token_ids = generate_token_ids(model, tokenizer, prompts, **options)
    return [
        [tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) for ids in sequences]
        for sequences in token_ids
    ]


def window_seed(seed: int, window: int) -> int:
    """The seed of a window of prompts in a run over a file: `seed` itself for the first, then one per window (a
    resumed or shared-out run reseeds at each window, so its text is that of an uninterrupted run)."""
    return (seed + 1_000_003 * window) % 2**32


class GenerateJob:
    """`postformer generate`'s work on a window of prompts (see `postformer.processing.Job`): each prompt's
    {"prompt", "generations"} (the --json records), or {"prompt", "error"} for a blank line. The prompts of a
    window are sorted by length and generated in left-padded batches of neighbours; with a seed, each window is
    seeded with `window_seed`. `options`: those of `generate_token_ids` (streamer aside). The options are checked
    when the job is made, before any prompt."""

    command = "generate"

    def __init__(self, model, tokenizer, describe=lambda record: f"prompt {record.index + 1}", **options):
        self.model, self.tokenizer, self.describe = model, tokenizer, describe
        self.seed, self.options = options.pop("seed", None), options
        _prepare(model, tokenizer, [""], **{**_PREPARE_DEFAULTS, **options, "seed": self.seed})

    def process(self, number, records) -> list[dict]:
        prompts = [r.text for r in records]
        lengths = [len(ids) for ids in self.tokenizer(prompts, verbose=False)["input_ids"]]
        max_new_tokens = self.options.get("max_new_tokens", _PREPARE_DEFAULTS["max_new_tokens"])
        _check_lengths(self.model, lengths, max_new_tokens, lambda i: self.describe(records[i]))
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        seed = None if self.seed is None else window_seed(self.seed, number)
        token_ids = generate_token_ids(self.model, self.tokenizer, [prompts[i] for i in order], seed=seed,
                                       **self.options)
        generations = [None] * len(prompts)
        for index, sequences in zip(order, token_ids):
            generations[index] = [self.tokenizer.decode(ids, skip_special_tokens=True,
                                                        clean_up_tokenization_spaces=False) for ids in sequences]
        return [{"prompt": p, "generations": g} for p, g in zip(prompts, generations)]

    def failed(self, record) -> dict:
        return {"prompt": record.text, "error": record.problem}


def prompt_name(source):
    """How `GenerateJob`'s errors name a prompt of `source`: by its line in a file, else by its number."""
    from .processing import Lines

    if isinstance(source, Lines):
        return lambda record: f"the prompt on line {record.index + 1} of {source.name}"
    return lambda record: f"prompt {record.index + 1}"


# generate_token_ids' defaults, for the options a GenerateJob is not given
_PREPARE_DEFAULTS = {name: parameter.default
                     for name, parameter in inspect.signature(generate_token_ids).parameters.items()
                     if parameter.default is not inspect.Parameter.empty}


def generate_to_file(model_dir, source, output, *, window: int | None = None, overwrite: bool = False,
                     progress: bool = False, **options) -> dict:
    """Continue every prompt of `source` (`postformer.processing.Lines(file, "prompt")`, `Texts(list)`) into the
    JSON lines file `output`: one line per input line, in input order (`GenerateJob`'s records), written window by
    window; a rerun after a crash resumes, under any launcher (`postformer.processing.runs`). `options`: those of
    `generate_token_ids`; with a `seed`, the text is that of an uninterrupted 1-process run. The model is loaded
    only when there is work to do. Returns the run's summary (`runs.run_to_file`)."""
    from .model_files import load_model
    from .processing.runs import WINDOW, model_identity, processes, run_to_file

    def job():
        model, tokenizer = load_model(model_dir)
        return GenerateJob(model.to(processes().device), tokenizer, prompt_name(source), **options)

    # compile changes no text; batch_size changes the random draws of sampling, so it is recorded
    recorded = {**model_identity(model_dir), **{k: v for k, v in options.items() if k != "compile"}}
    return run_to_file("generate", source, output, recorded, job, window=window or WINDOW, overwrite=overwrite,
                       progress=progress)


def find_loop(ids: list[int], min_repeats: int = 3, min_span: int = 12, max_period: int = 32) -> dict | None:
    """The loop a generation ends in, if any: a unit of `period` tokens repeated back to back at least
    `min_repeats` times, covering at least `min_span` tokens, at the end of `ids` (a greedy decoder that loops
    never leaves its loop). Returns {"period", "repeats", "start"} (the loop's first index) for the shortest
    such unit, or None."""
    ids = list(ids)
    for period in range(1, min(max_period, len(ids) // min_repeats) + 1):
        start = len(ids) - period
        while start - period >= 0 and ids[start - period:start] == ids[start:start + period]:
            start -= period
        # the loop may begin part-way through a unit
        while start > 0 and ids[start - 1] == ids[start - 1 + period]:
            start -= 1
        repeats = (len(ids) - start) // period
        if repeats >= min_repeats and len(ids) - start >= min_span:
            return {"period": period, "repeats": repeats, "start": start}
    return None


def format_generations(prompts: list[str], generations: list[list[str]], first: int = 1) -> str:
    """Each prompt and its continuations, readably: the prompt (numbered from `first`), then each full post
    (prompt + continuation)."""
    lines = []
    for index, (prompt, continuations) in enumerate(zip(prompts, generations), start=first):
        lines.append(f"prompt {index}: {prompt!r}")
        for number, continuation in enumerate(continuations, start=1):
            post = (prompt + continuation).replace("\n", "\n      ")
            lines.append(f"  [{number}] {post}")
    return "\n".join(lines)


__all__ = ["compiled_generation_options", "generate_token_ids", "generate_posts", "format_generations", "GenerateJob",
           "generate_to_file", "window_seed"]
