"""The supervised loop every fine-tuning stage shares (SFT, rejection sampling, GAtt, distillation, the RMs),
written on the trainer engine (stages/engine.py).

Own code rather than a library trainer because the stages need exact control of four things: a loss
weighted by the units each example carries over a whole optimizer step (prompt tokens never count),
packed sequences whose examples cannot see each other, resumption that reproduces an uninterrupted run
(data order is a pure function of seed and epoch, so skipping finished steps is exact), and a learning
rate that is a pure function of the step (the engine's).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data.runtime import phase
from stages.engine import Batch, LossFn, TrainEngine, TrainSettings, grad_accumulation, keeps_logits
from stages.recipe import RecipeError

log = logging.getLogger("chatalign.trainer")


def causal_lm_loss(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Summed next-token cross-entropy over trained (label != -100) tokens, and their count. The output head (a
    vocabulary-wide matrix product, a fifth of a small model's compute) runs only at positions whose next token
    is trained in some row: never over prompts alone."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    labels = batch["labels"][:, 1:]
    if keeps_logits(model):
        keep = (labels != -100).any(0).nonzero().squeeze(1)
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits.float()
        labels = labels[:, keep]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=-100, reduction="sum")
    return loss_sum, (labels != -100).sum(), {}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def plan_steps(n_examples: int, settings: TrainSettings, world: int) -> tuple[int, int, int]:
    """(grad_accum, steps_per_epoch, total_steps); the batch splits evenly over processes."""
    grad_accum = grad_accumulation(settings, world)
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


class Trainer:
    """Trains ``model`` on a list of ready micro-batchable examples with ``loss_fn``; every example carries its
    loss ``units`` (trained tokens of a sequence, 1 for a preference pair)."""

    def __init__(self, model: Any, train_examples: list[dict], heldout_examples: list[dict],
                 collate: Callable[[list[dict]], Batch], settings: TrainSettings, workdir: Path,
                 loss_fn: LossFn = causal_lm_loss, log_fn: Callable[[dict, int], None] | None = None,
                 resume: bool = False, desc: str = "train", final_eval: bool = True):
        if not train_examples:
            raise RecipeError(f"{desc}: no training examples")
        if any("units" not in example for example in train_examples):
            raise ValueError(f"{desc}: every training example must carry its loss 'units' (trained tokens, or 1 "
                             f"for a pair)")
        self.settings, self.collate, self.loss_fn = settings, collate, loss_fn
        self.train_examples, self.heldout_examples = train_examples, heldout_examples
        self.resume, self.desc, self.final_eval = resume, desc, final_eval
        self.log_fn = log_fn or (lambda values, step: None)
        world = int(os.environ.get("WORLD_SIZE", 1))
        self.grad_accum, self.steps_per_epoch, self.total_steps = plan_steps(len(train_examples), settings, world)
        self.engine = TrainEngine(model, settings, self.total_steps, self.grad_accum, workdir, desc)
        self.accelerator, self.model = self.engine.accelerator, self.engine.model

    # -- data -----------------------------------------------------------------------------------
    def step_indices(self, step: int) -> list[int]:
        return step_examples(step, len(self.train_examples), self.steps_per_epoch, self.settings.batch_size,
                             self.settings.seed)

    def micro_batches(self, step: int) -> list[Batch]:
        """This process's micro-batches of one optimizer step (round-robin over processes)."""
        acc, mbs = self.accelerator, self.settings.micro_batch_size
        # Longest first, so each micro-batch holds examples of similar length and pads little; the step's
        # loss is a sum over all of its examples, so how they are grouped does not change the update.
        indices = sorted(self.step_indices(step), key=lambda i: -example_length(self.train_examples[i]))
        chunks = [indices[i:i + mbs] for i in range(0, len(indices), mbs)]
        mine = chunks[acc.process_index::acc.num_processes]
        return [self.engine.to_device(self.collate([self.train_examples[i] for i in c])) for c in mine]

    def step_units(self, step: int) -> int:
        """Loss units in the whole step, over all processes, as the examples carry them."""
        return sum(self.train_examples[i]["units"] for i in self.step_indices(step))

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    @phase("evaluation")
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
            batch = self.engine.to_device(self.collate(examples or self.heldout_examples[:1]))
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
        start_step, state = self.engine.resume() if self.resume else (0, {})
        history = state.get("history", [])
        if start_step == 0:
            initial = self.evaluate()
            history.append({"step": 0, **initial})
        else:
            initial = state.get("initial", {})
        metrics: dict[str, Any] = {f"initial_{k}": v for k, v in initial.items()}
        self.model.train()
        tokens_seen, t0 = 0, time.time()
        bar = None
        if acc.is_main_process:
            bar = tqdm(total=self.total_steps, initial=start_step, desc=self.desc, unit="step", dynamic_ncols=True)
        train_loss = float("nan")
        try:  # the bar is closed before any error is printed, so the error stays the last line
            for step in range(start_step, self.total_steps):
                units = self.step_units(step)
                result = self.engine.step(step, self.micro_batches(step), units, self.loss_fn)
                train_loss, tokens_seen = result.train_loss, tokens_seen + result.tokens
                record = {"step": step + 1, "train_loss": train_loss, "lr": result.lr}
                if result.grad_norm is not None:
                    record["grad_norm"] = result.grad_norm
                done = step + 1
                if done % settings.eval_every == 0 or (done == self.total_steps and self.final_eval):
                    record.update(self.evaluate())
                history.append(record)
                self.log_fn(record, done)
                if bar is not None:
                    elapsed = max(time.time() - t0, 1e-9)
                    bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{result.lr:.2e}",
                                    tok_s=f"{tokens_seen * acc.num_processes / elapsed:.0f}")
                    bar.update(1)
                if done % settings.checkpoint_every == 0 and done < self.total_steps:
                    self.engine.save(done, {"history": history, "initial": initial})
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

    def unwrapped_state(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """The plain model and a full state dict (gathered under ZeRO-3 / FSDP)."""
        return self.engine.unwrapped_state()
