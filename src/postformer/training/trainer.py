"""`PostformerTrainer`: transformers' Trainer (on Accelerate) plus what posts language models need.

- evaluation reports perplexity and bits per character next to the loss;
- training logs report tokens/second and model-FLOP utilisation against the machine's measured matmul peak;
- a non-finite loss stops training with a clear error, before anything is saved from the bad step;
- weight decay applies to matrices only (not to norms, biases or embeddings);
- checkpoints and saved models are whole or absent (`postformer.saving`), and nothing is pickled but the
  optimizer, scheduler and RNG states that resuming needs (and loads with `torch.load(weights_only=True)`).
Sample generations at each evaluation come from `SampleGenerationCallback`.
"""

import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SchedulerType, rotate_checkpoints

from ..saving import PARTIAL_PREFIX, _fsync, _fsync_tree, remove_partial_saves, staged_save, write_atomically


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """Best observed FLOP/s of a square matmul on the default device: the yardstick for MFU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # A private generator: drawing from the global one would change dropout masks, so a resumed run (which
    # measures at a different step) would no longer reproduce an uninterrupted one.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def compute_dtype(args) -> torch.dtype:
    """The dtype the matrix multiplies of a run with these TrainingArguments run in (MFU's yardstick)."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def flops_per_token(model: nn.Module, sequence_length: int) -> float:
    """Training FLOPs per token (forward + backward): 6 per parameter (tied embeddings count once, for the LM
    head's matmul) plus attention's 12 * layers * hidden * sequence length (PaLM, appendix B). A model without an
    LM head (a classifier) only looks its embeddings up: the table is left out."""
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    if model.get_output_embeddings() is None:
        n_params -= model.get_input_embeddings().weight.numel()
    return 6 * n_params + 12 * config.num_hidden_layers * config.hidden_size * sequence_length


def embedding_weight_ids(model: nn.Module) -> set[int]:
    """The ids of the model's embedding tables (a tied LM head is one of them): neither decayed nor given to Muon."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def muon_parameter_names(model: nn.Module) -> list[str]:
    """What Muon trains: the hidden weight matrices, i.e. the trainable 2-D parameters of the transformer body (the
    base model) other than its embeddings. Muon orthogonalises updates of matrices that map hidden states to hidden
    states, so never a head either: the LM head, a classifier's score (both outside the body) or a tied head (the
    embedding)."""
    body = {id(p) for p in getattr(model, "base_model", model).parameters()}
    outside = embedding_weight_ids(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:  # a wrapper's (PEFT's) base_model holds the whole model, its LM head included
        outside.add(id(head.weight))
    return [n for n, p in model.named_parameters()
            if p.requires_grad and p.ndim == 2 and id(p) in body and id(p) not in outside]


def layer_depth(name: str, num_layers: int) -> int:
    """A parameter's depth for layer-wise learning-rate decay: 0 for embeddings, i + 1 inside block i, and
    num_layers + 1 above the blocks (final norm and heads)."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embed" in name else num_layers + 1


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one, for Trainer's single optimizer and scheduler: `param_groups` is the list of
    their groups (the same dicts), so the scheduler scales each group's learning rate in its own optimizer, and
    the state dict holds each one's state, so resuming restores them all."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers
        params = [p for optimizer in optimizers.values() for group in optimizer.param_groups for p in group["params"]]
        super().__init__(params, {})
        self.param_groups = [group for optimizer in optimizers.values() for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])


class PostformerTrainer(Trainer):
    """A `transformers.Trainer` for Postformer language models.

    tokens_per_character: tokens per character of the evaluation text (see `training.data.tokens_per_character`),
    to report bits per character. peak_flops: the matmul FLOP/s that MFU is measured against (measured at the
    first log when None).
    """

    def __init__(self, *args, tokens_per_character: float | None = None, peak_flops: float | None = None, **kwargs):
        self._staging = None  # while a checkpoint is saved: the temporary folder it goes into (see _save_checkpoint)
        super().__init__(*args, **kwargs)
        # Log lines as JSON with numbers as numbers (Trainer's printers quote them: {'loss': '6.166'}).
        for plain, ours in ((ProgressCallback, JSONProgressCallback), (PrinterCallback, JSONPrinterCallback)):
            if self.callback_handler.pop_callback(plain) is not None:
                self.add_callback(ours)
        self.tokens_per_character = tokens_per_character
        self.peak_flops = peak_flops
        self._last_log = None  # (time, tokens seen) at the previous training log
        self._sequence_length = None

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        embeddings = embedding_weight_ids(model)
        return [
            name
            for name, param in model.named_parameters()
            if param.ndim >= 2 and id(param) not in embeddings
        ]

    def create_optimizer(self, model=None):
        """Trainer's optimizer (--optim, with matrix-only decay), or with `optimizer="muon"` Muon for the hidden
        weight matrices beside it: transformers' `optim` has no Muon, so this is where it comes in."""
        if self.optimizer is None and getattr(self.args, "layer_lr_decay", 1.0) != 1.0:
            return self._create_layerwise_optimizer(self.model if model is None else model)
        if self.optimizer is not None or getattr(self.args, "optimizer", "adamw") != "muon":
            return super().create_optimizer(model)
        model = self.model if model is None else model
        matrices = set(muon_parameter_names(model))
        hidden = [p for n, p in model.named_parameters() if n in matrices]
        muon = torch.optim.Muon(hidden, lr=self.args.muon_learning_rate, momentum=self.args.muon_momentum,
                                weight_decay=self.args.weight_decay)
        # The rest through Trainer's own optimizer: the parameters Muon takes are frozen while it builds it.
        for p in hidden:
            p.requires_grad_(False)
        try:
            adamw = super().create_optimizer(model)
        finally:
            for p in hidden:
                p.requires_grad_(True)
        self.optimizer = CombinedOptimizer({"adamw": adamw, "muon": muon})
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Trainer's scheduler; warmup_stable_decay (which needs its decay steps) decays over `decay_fraction` of
        the run unless lr_scheduler_kwargs gives num_decay_steps."""
        kwargs = self.args.lr_scheduler_kwargs or {}
        if (self.lr_scheduler is None and self.args.lr_scheduler_type == SchedulerType.WARMUP_STABLE_DECAY
                and "num_decay_steps" not in kwargs):
            decay_steps = max(1, round(getattr(self.args, "decay_fraction", 0.2) * num_training_steps))
            self.args.lr_scheduler_kwargs = {**kwargs, "num_decay_steps": decay_steps}  # recorded with the run
        return super().create_scheduler(num_training_steps, optimizer)

    def _create_layerwise_optimizer(self, model):
        """--optim with layer-wise learning-rate decay: one parameter group per depth (and weight decay or not),
        the learning rate times layer_lr_decay ** (distance below the head). The head's group comes first, so
        the logged learning rate is --learning_rate's."""
        decay_names = set(self.get_decay_parameter_names(model))
        num_layers = model.config.num_hidden_layers
        groups = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                groups.setdefault((layer_depth(name, num_layers), name in decay_names), []).append(param)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        lr = kwargs.pop("lr", self.args.learning_rate)
        self.optimizer = optimizer_cls(
            [
                {"params": params, "lr": lr * self.args.layer_lr_decay ** (num_layers + 1 - depth),
                 "weight_decay": self.args.weight_decay if decays else 0.0}
                for (depth, decays), params in sorted(groups.items(), reverse=True)
            ],
            lr=lr,
            **kwargs,
        )
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._sequence_length = inputs["input_ids"].shape[-1]
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}: training stopped "
                f"and nothing from this step was saved; the last good checkpoint in {self.args.output_dir} is "
                "kept. Lower the learning rate, clip harder, or use fp32."
            )
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs and self.model.get_output_embeddings() is not None:  # a language model's loss
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 700.0))
            if self.tokens_per_character is not None:
                logs["eval_bits_per_character"] = logs["eval_loss"] / math.log(2) * self.tokens_per_character
        if "loss" in logs:
            now, seen = time.perf_counter(), self.state.num_input_tokens_seen
            if self._last_log is not None and now > self._last_log[0]:
                tokens_per_second = (seen - self._last_log[1]) / (now - self._last_log[0])
                logs["tokens_per_second"] = tokens_per_second
                if self.peak_flops is None:
                    self.peak_flops = measure_matmul_peak(compute_dtype(self.args))
                    now = time.perf_counter()  # do not count the measurement as training time
                flops = flops_per_token(self.model, self._sequence_length)
                if tokens_per_second * flops > self.peak_flops:
                    # The peak was measured while something else slowed the machine: measure again, keep the best.
                    self.peak_flops = max(self.peak_flops, measure_matmul_peak(compute_dtype(self.args)))
                    now = time.perf_counter()
                logs["mfu"] = tokens_per_second * flops / self.peak_flops
            self._last_log = (now, seen)
        super().log(logs, start_time)

    def _issue_warnings_after_load(self, load_result) -> None:
        # A checkpoint holds a tied LM head once, under the embedding's name (safetensors stores no aliases), so on
        # resume the head is "missing": tie it again, silently, and warn only about keys really missing.
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or {})
        if tied & set(load_result.missing_keys):
            self.model.tie_weights()
            load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)

    def _get_eval_sampler(self, eval_dataset):
        # Evaluation and predict() in the dataset's order, whatever the training sampler: transformers'
        # "group_by_length" also reorders evaluation, and predictions would then not line up with their rows.
        if self.args.train_sampling_strategy == "group_by_length":
            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
        return super()._get_eval_sampler(eval_dataset)

    # ---- Saving: whole or absent (see `staged_save`) ----

    def train(self, *args, **kwargs):
        if self.args.should_save:
            remove_partial_saves(self.args.output_dir)
        self.accelerator.wait_for_everyone()  # no process starts saving before the leftovers are gone
        return super().train(*args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return run_dir if self._staging is None else os.path.join(run_dir, self._staging)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written into `.tmp-checkpoint-N/checkpoint-N` and renamed to `checkpoint-N` once
        complete.

        Trainer itself writes straight into `checkpoint-N` (trainer_state.json last), then deletes the oldest
        checkpoints beyond save_total_limit. Here `_get_output_dir` points it at the temporary folder while it
        saves (so its own rotation there finds only this checkpoint and deletes nothing); rotation runs after the
        rename, so old checkpoints are only deleted once the new one is in place.
        """
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        run_dir = self._get_output_dir(trial)
        self._staging = PARTIAL_PREFIX + name
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, FSDP shards)
        if self.args.should_save:
            staging = os.path.join(run_dir, PARTIAL_PREFIX + name)
            written, final = os.path.join(staging, name), os.path.join(run_dir, name)
            if self.state.best_model_checkpoint == written:  # Trainer noted where it wrote the best checkpoint
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(written, TRAINER_STATE_NAME))
            _fsync_tree(written)
            if os.path.exists(final):  # this step saved by an earlier attempt (resumed from an older checkpoint)
                os.replace(final, os.path.join(staging, "replaced"))
            os.replace(written, final)
            _fsync(run_dir)
            shutil.rmtree(staging)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,  # as Trainer
            )
        self.accelerator.wait_for_everyone()  # no process looks for checkpoint-N before it is in place

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self._staging is not None:  # part of a checkpoint, whose whole folder is already temporary
            return super().save_model(output_dir, _internal_call)
        with staged_save(output_dir or self.args.output_dir, main_process=self.args.should_save) as staging:
            super().save_model(str(staging), _internal_call=True)  # True: no Hub push before the files are in place
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            # Trainer also pickles the TrainingArguments into training_args.bin "for reference". Nothing loads it
            # (resuming reads trainer_state.json, the weights, and optimizer/scheduler/RNG states), and opening a
            # pickle can run code, so it is replaced by the same arguments as JSON (tokens redacted).
            folder = Path(output_dir or self.args.output_dir)
            (folder / TRAINING_ARGS_NAME).unlink(missing_ok=True)
            (folder / "training_args.json").write_text(self.args.to_json_string() + "\n", encoding="utf-8")

    def save_state(self) -> None:
        if self.is_world_process_zero():
            path = Path(self.args.output_dir, TRAINER_STATE_NAME)
            write_atomically(path, lambda tmp: self.state.save_to_json(str(tmp)))


def format_logs(logs: dict) -> str:
    """A log entry as one JSON line, floats to 4 significant digits and kept numbers."""
    return json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"})


class JSONProgressCallback(ProgressCallback):
    """Trainer's progress bar, with log lines from `format_logs`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(format_logs(logs))


class JSONPrinterCallback(PrinterCallback):
    """Trainer's printer (no progress bar), with log lines from `format_logs`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero:
            print(format_logs(logs))


class SampleGenerationCallback(TrainerCallback):
    """At each evaluation, continue a few fixed post prompts greedily (no RNG is drawn, so sampling here never
    changes the course of training) and append them to `samples.jsonl` in the output folder, each with the loop
    it ends in, if any (`postformer.generation.find_loop`), which the printed line also reports."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int = 30):
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not self.prompts or not state.is_world_process_zero or model is None:
            return
        was_training = model.training
        model.eval()
        batch = self.tokenizer(self.prompts, return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
        from ..generation import find_loop, until_stop

        new_tokens = out[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        with open(Path(args.output_dir) / "samples.jsonl", "a", encoding="utf-8") as f:
            for prompt, text, ids in zip(self.prompts, texts, new_tokens.tolist()):
                loop = find_loop(until_stop(ids, [self.tokenizer.eos_token_id]))  # greedy decoding that repeats itself never stops repeating
                f.write(json.dumps({"step": state.global_step, "prompt": prompt, "text": text, "loop": loop},
                                   ensure_ascii=False) + "\n")
                note = f"  (greedy loop: {loop['period']} tokens repeated {loop['repeats']} times)" if loop else ""
                print(f"[step {state.global_step}] {prompt}{' '.join(text.split())}{note}")  # one line per sample
        model.train(was_training)
