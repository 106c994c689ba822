"""The trainer engine every training loop is written on (the supervised loop in stages/trainer.py; PPO next).

It owns what does not depend on where the examples come from: the accelerate setup (DDP, DeepSpeed ZeRO and
FSDP come in through accelerate's launch configs; nothing here is specific to one engine), the AdamW
optimizer, a learning rate that is a pure function of the step, the unit-weighted optimizer step, the
non-finite guard, and resumable checkpoints. A loop hands it each step's micro-batches, the number of loss
units in the whole step (trained tokens, pairs, ...: the examples carry them) and a loss function; the step's
loss is the sum over every micro-batch of every process divided by those units, so it does not depend on how
the step is split into micro-batches or processes.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs

from data.runtime import phase
from stages.common import StageError
from stages.recipe import OptimSection, RecipeError, TrainSection

log = logging.getLogger("chatalign.trainer")

Batch = dict[str, torch.Tensor]
# A loss function returns (sum of per-unit losses, number of units, extra metrics) for one micro-batch.
LossFn = Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor, dict[str, float]]]
TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainSettings:
    """What the engine needs from a stage's training section (recipe ``train:``)."""

    optim: OptimSection
    batch_size: int
    micro_batch_size: int
    epochs: float
    max_steps: int | None
    precision: str
    checkpoint_every: int
    eval_every: int
    gradient_checkpointing: bool = False
    seed: int = 0

    @classmethod
    def from_section(cls, section: TrainSection, seed: int) -> "TrainSettings":
        return cls(optim=section.optim, batch_size=section.batch_size, micro_batch_size=section.micro_batch_size,
                   epochs=section.epochs, max_steps=section.max_steps, precision=section.precision,
                   checkpoint_every=section.checkpoint_every, eval_every=section.eval_every,
                   gradient_checkpointing=section.gradient_checkpointing, seed=seed)


def keeps_logits(model: Any) -> bool:
    """Whether the causal LM under ``model`` (a DDP / DeepSpeed wrapper or a peft model around it, whose own
    signatures hide it) takes ``logits_to_keep``: the output head then runs only on the positions asked for."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def resolve_precision(precision: str) -> str:
    """accelerate's mixed_precision value for a recipe's precision."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def lr_at(step: int, total_steps: int, optim: OptimSection) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    warmup = max(int(optim.warmup_ratio * total_steps), optim.warmup_min_steps)
    warmup = min(warmup, max(total_steps - 1, 0))
    if step < warmup:
        return optim.lr * (step + 1) / (warmup + 1)
    if optim.schedule == "constant":
        return optim.lr
    progress = (step - warmup) / max(total_steps - warmup, 1)
    floor = optim.min_lr_ratio
    if optim.schedule == "linear":
        return optim.lr * (floor + (1 - floor) * (1 - progress))
    return optim.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def grad_accumulation(settings: TrainSettings, world: int) -> int:
    """Micro-batches per process in one optimizer step; the batch must split evenly over processes."""
    per_pass = settings.micro_batch_size * world
    if settings.batch_size % per_pass:
        raise RecipeError(f"batch_size {settings.batch_size} must be a multiple of micro_batch_size "
                          f"({settings.micro_batch_size}) x processes ({world})")
    return settings.batch_size // per_pass


def build_optimizer(model: Any, optim: OptimSection) -> torch.optim.Optimizer:
    """AdamW; norms and biases (1-D tensors) get no weight decay, as is usual for transformers."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=(optim.beta1, optim.beta2),
                             eps=optim.eps)


def make_accelerator(settings: TrainSettings, grad_accum: int) -> Accelerator:
    # Without cpu=True accelerate ignores torchrun's world size on a machine with no GPU; with it,
    # accelerate turns DeepSpeed off, which does run on CPU (gloo), so DeepSpeed launches keep it False.
    # DeepSpeed on CPU also needs the gloo backend named, or accelerate counts one process.
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = []
    if use_deepspeed and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(mixed_precision=resolve_precision(settings.precision),
                              gradient_accumulation_steps=grad_accum, kwargs_handlers=handlers,
                              cpu=not torch.cuda.is_available() and not use_deepspeed)
    ds = AcceleratorState().deepspeed_plugin
    if ds is not None:  # no dataloader goes through prepare(), so tell DeepSpeed the batch sizes
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = settings.micro_batch_size
        ds.deepspeed_config["gradient_accumulation_steps"] = grad_accum
        ds.deepspeed_config["train_batch_size"] = settings.batch_size
        ds.deepspeed_config["gradient_clipping"] = settings.optim.grad_clip
    return accelerator


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = [p for p in ckpt_dir.glob("step-*") if (p / TRAINER_STATE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


@phase("saving")
def save_checkpoint(accelerator: Any, ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> None:
    """accelerate state (model, optimizer, RNG) + the loop's own state; visible only once complete."""
    final = ckpt_dir / f"step-{step}"
    tmp = ckpt_dir / f".tmp-step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps({"step": step, **state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(ckpt_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@dataclass
class StepResult:
    """What one optimizer step did: the mean loss per unit over all processes, its learning rate, the gradient
    norm before clipping, and the tokens this process ran through the model."""

    train_loss: float
    lr: float
    grad_norm: float | None
    tokens: int


class TrainEngine:
    """A model prepared for training (``self.model``, ``self.optimizer``, ``self.accelerator``), stepped by a loop."""

    def __init__(self, model: Any, settings: TrainSettings, total_steps: int, grad_accum: int, workdir: Path,
                 desc: str = "train", checkpoints: str = "checkpoints"):
        """``checkpoints``: the folder of ``workdir`` this engine checkpoints into (a loop that trains two models,
        as PPO's policy and critic, gives each engine its own)."""
        self.settings, self.total_steps, self.grad_accum, self.desc = settings, total_steps, grad_accum, desc
        self.ckpt_dir = Path(workdir) / checkpoints
        self.accelerator = make_accelerator(settings, grad_accum)
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        optimizer = build_optimizer(model, settings.optim)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    @phase("training")
    def step(self, step: int, micro_batches: Sequence[Batch], units: int, loss_fn: LossFn) -> StepResult:
        """Optimizer step ``step`` (0-based) over this process's micro-batches; ``units`` counts the loss units of
        the whole step on every process. Raises StageError at a non-finite loss or gradient norm."""
        acc = self.accelerator
        lr = lr_at(step, self.total_steps, self.settings.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        units = max(units, 1)
        step_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
        tokens = 0
        for batch in micro_batches:
            with acc.accumulate(self.model), acc.autocast():
                loss_sum, _, _ = loss_fn(self.model, batch)
                # accelerate divides by the accumulation steps, and DDP and DeepSpeed average gradients over
                # processes; undo both so the gradient is that of the step's loss, the mean over all of its
                # trained units, however they fall into micro-batches and processes
                acc.backward(loss_sum / units * self.grad_accum * acc.num_processes)
            step_loss += loss_sum.detach().double()
            tokens += int(batch["input_ids"].numel() if "attention_mask" not in batch
                          else batch["attention_mask"].sum())
        # The norm is taken even without clipping (an infinite bound scales by 1), so a NaN or inf
        # gradient is seen before the optimizer writes it into the weights.
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.settings.optim.grad_clip or math.inf)
        train_loss = float(acc.reduce(step_loss, reduction="sum")) / units
        self.check_finite(step, train_loss, grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(train_loss, lr, None if grad_norm is None else float(grad_norm), tokens)

    def check_finite(self, step: int, loss: float, grad_norm: Any) -> None:
        """Stop at the first non-finite loss or gradient norm, before it reaches a checkpoint (and, except under
        DeepSpeed, whose engine steps inside backward, before it reaches the weights).

        Under fp16 the gradient scaler skips steps whose gradients overflow, so there only the loss counts.
        """
        norm = None if grad_norm is None else float(grad_norm)
        bad_norm = norm is not None and not math.isfinite(norm) and self.accelerator.scaler is None
        if math.isfinite(loss) and not bad_norm:
            return
        ckpt = latest_checkpoint(self.ckpt_dir)
        if ckpt is None:
            kept = (f"no checkpoint was saved before it (checkpoint_every is {self.settings.checkpoint_every}), "
                    f"so a rerun starts from step 0")
        else:
            kept = (f"the last good checkpoint, {ckpt}, is kept: --resume with an unchanged recipe continues from "
                    f"it, a changed recipe starts afresh")
        raise StageError(
            f"{self.desc}: non-finite training loss {loss} (gradient norm {norm}) at optimizer step {step + 1} of "
            f"{self.total_steps}; stopped there, and {kept}. Try a lower learning rate (optim.lr, now "
            f"{self.settings.optim.lr:g}), gradient clipping (optim.grad_clip), fp32 precision, or look for "
            f"extreme values in the data")

    def save(self, step: int, state: dict[str, Any]) -> None:
        """A resumable checkpoint after ``step`` optimizer steps, with the loop's own JSON ``state``."""
        save_checkpoint(self.accelerator, self.ckpt_dir, step, state)

    def resume(self) -> tuple[int, dict[str, Any]]:
        """(finished steps, the loop's state) from the latest checkpoint, restored into model, optimizer and
        RNG; (0, {}) when there is none."""
        ckpt = latest_checkpoint(self.ckpt_dir)
        if ckpt is None:
            return 0, {}
        self.accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / TRAINER_STATE).read_text())
        log.info("%s: resumed from %s at step %d/%d", self.desc, ckpt.name, state["step"], self.total_steps)
        return state["step"], state

    def unwrapped_state(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """The plain model and a full state dict (gathered under ZeRO-3 / FSDP)."""
        return self.accelerator.unwrap_model(self.model), self.accelerator.get_state_dict(self.model)
