"""The training loop every fine-tuning stage shares (SFT, rejection sampling, GAtt, distillation, RMs).

Own code on accelerate rather than a library trainer because the stages need exact control of
four things: token-weighted loss over a whole optimizer step (prompt tokens never count), packed
sequences whose examples cannot see each other, resumption that reproduces an uninterrupted run
(data order is a pure function of seed and epoch, so skipping finished steps is exact), and a
learning rate that is a pure function of the step. DeepSpeed ZeRO and FSDP come in through
accelerate's launch configs; nothing here is specific to one engine.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from stages.common import StageError
from stages.recipe import OptimSection, RecipeError

log = logging.getLogger("chatalign.trainer")

Batch = dict[str, torch.Tensor]
# A loss function returns (sum of per-unit losses, number of units, extra metrics) for one micro-batch.
LossFn = Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor, dict[str, float]]]


@dataclass
class TrainSettings:
    """What the loop needs from a stage's recipe section (SFT-like sections all carry these)."""

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
    def from_section(cls, section: Any, seed: int) -> "TrainSettings":
        return cls(optim=section.optim, batch_size=section.batch_size, micro_batch_size=section.micro_batch_size,
                   epochs=section.epochs, max_steps=section.max_steps, precision=section.precision,
                   checkpoint_every=section.checkpoint_every, eval_every=section.eval_every,
                   gradient_checkpointing=section.gradient_checkpointing, seed=seed)


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


def causal_lm_loss(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Summed next-token cross-entropy over trained (label != -100) tokens, and their count."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=-100, reduction="sum")
    return loss_sum, (labels != -100).sum(), {}


def example_units(example: dict) -> int:
    """Units the loss averages over: trained tokens of an LM example, 1 for a preference pair."""
    if "labels" in example:
        return sum(1 for label in example["labels"][1:] if label != -100)
    return 1


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def plan_steps(n_examples: int, settings: TrainSettings, world: int) -> tuple[int, int, int]:
    """(grad_accum, steps_per_epoch, total_steps); the batch splits evenly over processes."""
    per_pass = settings.micro_batch_size * world
    if settings.batch_size % per_pass:
        raise RecipeError(f"batch_size {settings.batch_size} must be a multiple of micro_batch_size "
                          f"({settings.micro_batch_size}) x processes ({world})")
    grad_accum = settings.batch_size // per_pass
    steps_per_epoch = max(1, n_examples // settings.batch_size)
    if n_examples < settings.batch_size:
        if world > 1 and math.ceil(n_examples / settings.micro_batch_size) % world:
            # every process must run as many forward/backward passes as the others
            raise RecipeError(f"only {n_examples} examples for a batch of {settings.batch_size}: they do not split "
                              f"into micro-batches of {settings.micro_batch_size} evenly over {world} processes; "
                              f"use more data or a smaller batch_size")
        log.warning("only %d examples for a batch of %d: one smaller step per epoch", n_examples,
                    settings.batch_size)
    total = max(1, math.ceil(steps_per_epoch * settings.epochs))
    if settings.max_steps:
        total = min(total, settings.max_steps)
    return grad_accum, steps_per_epoch, total


def example_length(example: dict[str, Any]) -> int:
    """Tokens of the longest sequence an example puts into a batch row (what padding is sized by)."""
    keys = [k for k in ("input_ids", "chosen_ids", "rejected_ids") if k in example]
    return max((len(example[k]) for k in keys), default=0)


def step_examples(step: int, n: int, steps_per_epoch: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the examples in optimizer step ``step`` (all processes)."""
    epoch, index = divmod(step, steps_per_epoch)
    order = epoch_order(n, seed, epoch)
    return order[index * batch_size:(index + 1) * batch_size]


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


def make_accelerator(settings: TrainSettings, grad_accum: int) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Without cpu=True accelerate ignores torchrun's world size on a machine with no GPU; with it,
    # accelerate turns DeepSpeed off, which does run on CPU (gloo), so DeepSpeed launches keep it False.
    # DeepSpeed on CPU also needs the gloo backend named, or accelerate counts one process.
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = []
    if use_deepspeed and not torch.cuda.is_available():
        from accelerate.utils import InitProcessGroupKwargs

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
    done = [p for p in ckpt_dir.glob("step-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator: Any, ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> None:
    """accelerate state (model, optimizer, RNG) + our trainer state; visible only once complete."""
    final = ckpt_dir / f"step-{step}"
    tmp = ckpt_dir / f".tmp-step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(ckpt_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class Trainer:
    """Trains ``model`` on a list of ready micro-batchable examples with ``loss_fn``."""

    def __init__(self, model: Any, train_examples: list[dict], heldout_examples: list[dict],
                 collate: Callable[[list[dict]], Batch], settings: TrainSettings, workdir: Path,
                 loss_fn: LossFn = causal_lm_loss, log_fn: Callable[[dict, int], None] | None = None,
                 resume: bool = False, desc: str = "train", final_eval: bool = True):
        if not train_examples:
            raise RecipeError(f"{desc}: no training examples")
        self.settings, self.collate, self.loss_fn = settings, collate, loss_fn
        self.train_examples, self.heldout_examples = train_examples, heldout_examples
        self.ckpt_dir = Path(workdir) / "checkpoints"
        self.resume, self.desc, self.final_eval = resume, desc, final_eval
        self.log_fn = log_fn or (lambda values, step: None)
        world = int(os.environ.get("WORLD_SIZE", 1))
        self.grad_accum, self.steps_per_epoch, self.total_steps = plan_steps(len(train_examples), settings, world)
        self.accelerator = make_accelerator(settings, self.grad_accum)
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        optimizer = build_optimizer(model, settings.optim)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    # -- data -----------------------------------------------------------------------------------
    def micro_batches(self, step: int) -> list[Batch]:
        """This process's micro-batches of one optimizer step (round-robin over processes)."""
        acc = self.accelerator
        indices = step_examples(step, len(self.train_examples), self.steps_per_epoch, self.settings.batch_size,
                                self.settings.seed)
        mbs = self.settings.micro_batch_size
        # Longest first, so each micro-batch holds examples of similar length and pads little; the step's
        # loss is a sum over all of its examples, so how they are grouped does not change the update.
        indices = sorted(indices, key=lambda i: -example_length(self.train_examples[i]))
        chunks = [indices[i:i + mbs] for i in range(0, len(indices), mbs)]
        mine = chunks[acc.process_index::acc.num_processes]
        return [self.to_device(self.collate([self.train_examples[i] for i in c])) for c in mine]

    def step_units(self, step: int) -> int:
        """Loss units (trained tokens or pairs) in the whole step, over all processes."""
        indices = step_examples(step, len(self.train_examples), self.steps_per_epoch, self.settings.batch_size,
                                self.settings.seed)
        return sum(example_units(self.train_examples[i]) for i in indices)

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if not self.heldout_examples:
            return {}
        acc, mbs = self.accelerator, self.settings.micro_batch_size
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)
        extras: dict[str, float] = {}
        shard = self.heldout_examples[acc.process_index::acc.num_processes]
        # Every process runs the same number of forward passes: under ZeRO-3 (and FSDP) each forward
        # gathers parameters from all processes, so a process with one batch fewer would leave the
        # others waiting. A process whose shard has run out scores a stand-in batch and discards it.
        n_batches = -(-math.ceil(len(self.heldout_examples) / acc.num_processes) // mbs)
        for b in range(n_batches):
            examples = shard[b * mbs:(b + 1) * mbs]
            batch = self.to_device(self.collate(examples or self.heldout_examples[:1]))
            with acc.autocast():
                loss_sum, units, extra = self.loss_fn(self.model, batch)
            keep = 1.0 if examples else 0.0  # the extras' keys still register, so every process reduces the same
            total += keep * torch.stack([loss_sum.double(), units.double()])
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + keep * float(v)
        total = acc.reduce(total, reduction="sum")
        self.model.train()
        out = {"heldout_loss": float(total[0] / total[1].clamp(min=1))}
        n = max(float(total[1]), 1.0)
        for k, v in extras.items():  # extra metrics are sums over units, e.g. correct pairs
            out[f"heldout_{k}"] = float(acc.reduce(torch.tensor(v, device=acc.device), reduction="sum")) / n
        return out

    # -- training -------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        acc, settings = self.accelerator, self.settings
        start_step, history = 0, []
        ckpt = latest_checkpoint(self.ckpt_dir) if self.resume else None
        if ckpt is not None:
            acc.load_state(str(ckpt))
            state = json.loads((ckpt / "trainer_state.json").read_text())
            start_step, history = state["step"], state.get("history", [])
            log.info("%s: resumed from %s at step %d/%d", self.desc, ckpt.name, start_step, self.total_steps)
        if start_step == 0:
            initial = self.evaluate()
            history.append({"step": 0, **initial})
        else:
            initial = json.loads((ckpt / "trainer_state.json").read_text()).get("initial", {})
        metrics: dict[str, Any] = {f"initial_{k}": v for k, v in initial.items()}
        self.model.train()
        tokens_seen, t0 = 0, time.time()
        bar = None
        if acc.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=start_step, desc=self.desc, unit="step", dynamic_ncols=True)
        train_loss = float("nan")
        try:  # the bar is closed before any error is printed, so the error stays the last line
            for step in range(start_step, self.total_steps):
                lr = lr_at(step, self.total_steps, settings.optim)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                units = max(self.step_units(step), 1)
                step_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
                for batch in self.micro_batches(step):
                    with acc.accumulate(self.model), acc.autocast():
                        loss_sum, _, _ = self.loss_fn(self.model, batch)
                        # accelerate divides by the accumulation steps; undo it so the step's loss is
                        # the mean over all of its trained units, however they fall into micro-batches
                        acc.backward(loss_sum / units * self.grad_accum)
                    step_loss += loss_sum.detach().double()
                    tokens_seen += int(batch["input_ids"].numel() if "attention_mask" not in batch
                                       else batch["attention_mask"].sum())
                # The norm is taken even without clipping (an infinite bound scales by 1), so a NaN or inf
                # gradient is seen before the optimizer writes it into the weights.
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), settings.optim.grad_clip or math.inf)
                train_loss = float(acc.reduce(step_loss, reduction="sum")) / units
                self.check_finite(step, train_loss, grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                record = {"step": step + 1, "train_loss": train_loss, "lr": lr}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                done = step + 1
                if done % settings.eval_every == 0 or (done == self.total_steps and self.final_eval):
                    record.update(self.evaluate())
                history.append(record)
                self.log_fn(record, done)
                if bar is not None:
                    elapsed = max(time.time() - t0, 1e-9)
                    bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}",
                                    tok_s=f"{tokens_seen * acc.num_processes / elapsed:.0f}")
                    bar.update(1)
                if done % settings.checkpoint_every == 0 and done < self.total_steps:
                    save_checkpoint(acc, self.ckpt_dir, done, {"history": history, "initial": initial})
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.time() - t0
        final = history[-1]
        metrics.update({"train_loss": train_loss, "steps": self.total_steps,
                        "tokens_per_s": tokens_seen * acc.num_processes / max(elapsed, 1e-9),
                        "train_time_s": round(elapsed, 2), "history": history})
        metrics.update({k: v for k, v in final.items() if k.startswith("heldout_")})
        return metrics

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

    def unwrapped_state(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """The plain model and a full state dict (gathered under ZeRO-3 / FSDP)."""
        return self.accelerator.unwrap_model(self.model), self.accelerator.get_state_dict(self.model)
