"""PPO (Llama 2 §3.2.3) on the trainer engine: the formulas (GAE, the clipped policy and value losses, the
KL controller) and the loop that turns rollouts into optimizer steps of the policy and of the critic.

One iteration: answer ``rollout_batch_size`` prompts with the policy (stages/generation.py), score the answers
with the one reward function (reward/combine.py: both RMs, the safety gate, LOGIT), whiten the scores, add the
per-token KL penalty to the reference (``kl_penalized_rewards``), estimate advantages with GAE from the critic's
values, then run ``train.epochs`` passes of clipped-objective steps over mini-batches of ``train.batch_size``
answers: one optimizer step of the policy engine and one of the critic engine per mini-batch. Everything
random is a pure function of (seed, iteration, epoch) and the models run without dropout, so a run resumed
from a checkpoint repeats the uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from data.runtime import phase
from data.records import Conversation, prompt_key
from data.templates import render_prompt
from reward.combine import Whitener, kl_penalized_rewards
from stages.common import StageError
from stages.engine import TrainEngine, TrainSettings, grad_accumulation, keeps_logits, latest_checkpoint
from stages.generation import SamplingConfig, answer, generate, token_logprobs
from stages.recipe import PPOSection, RecipeError

log = logging.getLogger("chatalign.ppo")

BEST_DIR = "best"  # the trainable weights of the best held-out evaluation so far, inside the work directory


# ---------------------------------------------------------------------------------------------------------
# Formulas. Tensors are (answers, response tokens), padded on the right; ``mask`` is 1 on response tokens.

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: ``δ_t = r_t + γ V_{t+1} - V_t``, ``A_t = δ_t + γλ A_{t+1}``, with
    V = 0 after an answer's last token (the episode ends there). Returns (advantages, returns = A + V), zero off
    the mask."""
    mask = mask.to(rewards.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate ``max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε))``, ρ = π_θ/π_old, summed over response tokens,
    and the number of tokens where the clipped term was taken. Outside the clip range, on the side the clip
    binds, the loss is a constant in θ: its gradient is zero."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = torch.maximum(unclipped, clipped)
    return (loss * mask).sum(), ((clipped > unclipped).float() * mask).sum()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """``½ max((V - R)², (V_clip - R)²)`` with ``V_clip = V_old + clip(V - V_old, -ε, ε)``, summed over response
    tokens (ε = 0: the plain squared error)."""
    loss = (values - returns) ** 2
    if clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * (loss * mask).sum()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over response tokens: 1 = the critic predicts the returns, 0 = no better than
    their mean."""
    m = mask.bool()
    target = returns[m].double()
    if target.numel() < 2 or float(target.var()) == 0:
        return float("nan")
    return float(1 - (target - values[m].double()).var() / target.var())


class KLController:
    """β of the KL penalty: fixed, or adaptive (Ziegler et al. 2019): ``β ← β·(1 + clip(KL/target - 1, ±0.2)·n/
    horizon)`` after each batch of ``n`` answers whose mean KL was ``KL``."""

    def __init__(self, beta: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000):
        self.beta, self.adaptive, self.target, self.horizon = float(beta), adaptive, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


# ---------------------------------------------------------------------------------------------------------
# Models

class ValueModel(torch.nn.Module):
    """The critic: a sequence-classification model (a reward model) whose scalar head is read at every token,
    so V(s_t) is its score of the text up to token t."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        backbone = getattr(self.model, self.model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.model.score(hidden).squeeze(-1).float()


def disable_dropout(model: Any) -> None:
    """No dropout anywhere: π_old and π_θ must be the same function at the first step (ratio exactly 1), and a
    resumed run must repeat an uninterrupted one without replaying dropout masks."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# ---------------------------------------------------------------------------------------------------------
# Rollouts

@dataclass
class Rollout:
    """One answer and what PPO keeps of it (response-aligned tensors have one entry per answer token)."""

    prompt_index: int
    ids: list[int]                 # prompt + answer tokens
    prompt_len: int
    finish_reason: str
    text: str
    behaviour_logprobs: torch.Tensor   # from the sampling engine, log-probs of the distribution sampled from
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def response_len(self) -> int:
        return len(self.ids) - self.prompt_len


def collate_rollouts(rows: list[Rollout], pad_id: int, keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Right-padded sequences and response-aligned tensors: ``index`` (the logit position that predicts each
    answer token), ``tokens``, ``mask``, and the rows' ``values[key]`` for each key."""
    width = max(len(r.ids) for r in rows)
    resp = max(r.response_len for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    index = torch.zeros((len(rows), resp), dtype=torch.long)
    tokens = torch.zeros((len(rows), resp), dtype=torch.long)
    mask = torch.zeros((len(rows), resp), dtype=torch.float32)
    out = {k: torch.zeros((len(rows), resp), dtype=torch.float32) for k in keys}
    for i, r in enumerate(rows):
        n = r.response_len
        input_ids[i, :len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        attention_mask[i, :len(r.ids)] = 1
        index[i, :n] = torch.arange(r.prompt_len - 1, len(r.ids) - 1)
        tokens[i, :n] = torch.tensor(r.ids[r.prompt_len:], dtype=torch.long)
        mask[i, :n] = 1
        for k in keys:
            out[k][i, :n] = r.values[k]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "index": index, "tokens": tokens,
            "mask": mask, **out}


def answer_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float logits (answers, response tokens, vocab) of the positions that predict the answer tokens. The
    output head (a vocabulary-wide matrix product) runs only from the first position that predicts an answer
    token onwards, not over the prompts before it."""
    index, width = batch["index"], batch["input_ids"].shape[1]
    answer_positions = index[batch["mask"].bool()]
    first = int(answer_positions.min()) if answer_positions.numel() and keeps_logits(model) else 0
    kwargs = {"logits_to_keep": width - first} if first > 0 else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                   **kwargs).logits
    index = (index - first).clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index).float()


def answer_values(critic: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """V(s_t) at the positions that predict the answer tokens (the text up to, not including, token t)."""
    return critic(batch["input_ids"], batch["attention_mask"]).gather(1, batch["index"])


# ---------------------------------------------------------------------------------------------------------
# The loop

def iteration_prompts(n_prompts: int, batch: int, iteration: int, seed: int) -> list[int]:
    """Prompt indices of iteration ``iteration`` (0-based, all processes): consecutive slices of a fresh seeded
    permutation per pass over the prompts, so every prompt is used once before any is used again."""
    out, position = [], iteration * batch
    while len(out) < batch:
        epoch, offset = divmod(position, n_prompts)
        order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        take = order[offset:offset + batch - len(out)]
        out += take
        position += len(take)
    return out


def minibatch_order(n: int, seed: int, iteration: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + iteration) * 1_009 + epoch)
    return torch.randperm(n, generator=generator).tolist()


@dataclass
class Models:
    policy: Any                     # the trained causal LM (a peft model when LoRA is on)
    reference: Any | None           # a frozen copy of the starting policy; None with LoRA (adapter disabled)
    critic: ValueModel
    tokenizer: Any


def gathered(engine: TrainEngine, modifier_rank: int | None = None):
    """Every process's context in which ``engine``'s model holds its full weights under DeepSpeed ZeRO-3 (entered
    by all processes together; with ``modifier_rank`` that process's changes are kept); a no-op otherwise."""
    import contextlib

    plugin = getattr(engine.accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(engine.model.parameters()), modifier_rank=modifier_rank)


class PPOLoop:
    """Runs the iterations of one PPO stage on two trainer engines (policy and critic)."""

    def __init__(self, models: Models, section: PPOSection, prompts: list[Conversation],
                 heldout: list[Conversation], reward_fn: Any, template: str, seed: int, workdir: Path,
                 critic_settings: TrainSettings, policy_settings: TrainSettings, resume: bool = False,
                 log_fn: Callable[[dict, int], None] | None = None, oracle: Callable[[list, list], dict] | None = None,
                 save_best: Callable[[Any], None] | None = None):
        self.section, self.prompts, self.heldout, self.reward_fn = section, prompts, heldout, reward_fn
        self.template, self.seed, self.workdir, self.resume = template, seed, Path(workdir), resume
        self.log_fn = log_fn or (lambda values, step: None)
        self.oracle = oracle
        self.tokenizer = models.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.reference = models.reference
        world = int(os.environ.get("WORLD_SIZE", 1))
        if section.rollout_batch_size % (policy_settings.batch_size) or policy_settings.batch_size % world:
            raise RecipeError(f"ppo: rollout_batch_size {section.rollout_batch_size} must split into mini-batches of "
                              f"train.batch_size {policy_settings.batch_size}, each split over {world} processes")
        self.minibatches = section.rollout_batch_size // policy_settings.batch_size
        self.epochs = int(policy_settings.epochs)
        self.total_steps = section.iterations * self.epochs * self.minibatches
        grad_accum = grad_accumulation(policy_settings, world)
        for model in (models.policy, models.critic):
            disable_dropout(model)
        if models.reference is not None:
            disable_dropout(models.reference)
            models.reference.eval().requires_grad_(False)
        self.policy_engine = TrainEngine(models.policy, policy_settings, self.total_steps, grad_accum, workdir,
                                         "ppo policy", checkpoints="checkpoints/policy")
        self.critic_engine = TrainEngine(models.critic, critic_settings, self.total_steps, grad_accum, workdir,
                                         "ppo critic", checkpoints="checkpoints/critic")
        self.acc = self.policy_engine.accelerator
        self.whitener = Whitener(section.whiten)  # "batch": only its eps is used
        self.kl = KLController(section.kl_coef, section.adaptive_kl, section.kl_target, section.kl_horizon)
        self.prompt_ids = [render_prompt(self.tokenizer, p.messages, template).input_ids for p in prompts]

    # -- models ----------------------------------------------------------------------------------------
    @property
    def policy(self) -> Any:
        """The plain policy (for sampling and no-grad forwards; training goes through the engine's wrapper)."""
        return self.acc.unwrap_model(self.policy_engine.model)

    @property
    def critic(self) -> Any:
        return self.critic_engine.accelerator.unwrap_model(self.critic_engine.model)

    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is not None:
            return answer_logits(self.reference, batch)
        with self.policy.disable_adapter():  # LoRA: π0 is the policy with its adapter off, at no extra memory
            return answer_logits(self.policy, batch)

    def gathered_weights(self, modifier_rank: int | None = None):
        """Under DeepSpeed ZeRO-3, the policy's full weights for a whole rollout phase (gathered once, not at every
        decoding step); a no-op otherwise."""
        return gathered(self.policy_engine, modifier_rank)

    @property
    def zero3(self) -> bool:
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        return plugin is not None and plugin.zero_stage == 3

    # -- rollouts --------------------------------------------------------------------------------------
    def rollouts(self, iteration: int) -> list[Rollout]:
        """This process's share of the iteration's answers (rows rank::world of the global batch)."""
        section = self.section
        indices = iteration_prompts(len(self.prompts), section.rollout_batch_size, iteration, self.seed)
        mine = indices[self.acc.process_index::self.acc.num_processes]
        cfg = SamplingConfig(num_samples=1, temperature=section.temperature, top_p=section.top_p,
                             max_new_tokens=section.max_new_tokens, seed=self.seed, batch_size=section.batch_size,
                             return_logprobs=True, logprobs_of="sampling")
        keys = [prompt_key([{"role": "stream", "content": f"ppo-{iteration}"}, *self.prompts[i].messages])
                for i in mine]
        with self.gathered_weights():
            completions = generate(self.policy, self.tokenizer, [self.prompt_ids[i] for i in mine], cfg,
                                   prompt_keys=keys)
        rows = []
        for i, (completion,) in zip(mine, completions):
            prompt = list(self.prompt_ids[i])
            rows.append(Rollout(i, prompt + completion.token_ids, len(prompt), completion.finish_reason,
                                completion.text, torch.tensor(completion.logprobs, dtype=torch.float32)))
        return rows

    @torch.no_grad()
    def score_forward(self, rows: list[Rollout]) -> dict[str, float]:
        """Old log-probs (the distribution sampled from), the KL's log-probs of policy and reference, the critic's
        values and the entropy, by micro-batches; stored in each row's ``values``."""
        section, mbs = self.section, self.policy_engine.settings.micro_batch_size
        entropy_sum, tokens, gap = 0.0, 0.0, 0.0
        self.policy.eval()
        by_length = sorted(rows, key=lambda r: len(r.ids))  # micro-batches of similar lengths: less padding
        for start in range(0, len(by_length), mbs):
            chunk = by_length[start:start + mbs]
            batch = self.policy_engine.to_device(collate_rollouts(chunk, self.pad_id))
            logits = answer_logits(self.policy, batch)
            old = token_logprobs(logits, batch["tokens"], section.temperature, section.top_p)
            # The KL is between the sampling distributions of π_θ and π_0 without the top-p cut: the reference's
            # nucleus need not hold the sampled token, which would make the penalty infinite.
            kl_policy = token_logprobs(logits, batch["tokens"], section.temperature)
            kl_reference = token_logprobs(self.reference_logits(batch), batch["tokens"], section.temperature)
            values = answer_values(self.critic, batch)
            scaled = torch.log_softmax(logits / section.temperature, dim=-1)
            entropy = -(scaled.exp() * scaled).sum(-1)
            mask = batch["mask"]
            entropy_sum += float((entropy * mask).sum())
            tokens += float(mask.sum())
            for j, row in enumerate(chunk):
                n = row.response_len
                row.values.update({"old_logprobs": old[j, :n].cpu(), "kl_logprobs": kl_policy[j, :n].cpu(),
                                   "ref_logprobs": kl_reference[j, :n].cpu(), "old_values": values[j, :n].cpu()})
                gap = max(gap, float((old[j, :n].cpu() - row.behaviour_logprobs).abs().max()))
        self.policy.train()
        return {"entropy_sum": entropy_sum, "tokens": tokens, "behaviour_logprob_gap": gap}

    def gather_floats(self, values: list[float]) -> list[float]:
        """Every process's values, in global row order (row k of process r is global row r + k·world)."""
        if self.acc.num_processes == 1:
            return list(values)
        n = torch.tensor([len(values)], device=self.acc.device)
        width = int(self.acc.gather(n).max())
        padded = torch.full((width,), float("nan"), dtype=torch.float64, device=self.acc.device)
        padded[:len(values)] = torch.tensor(values, dtype=torch.float64)
        gathered = self.acc.gather(padded).view(self.acc.num_processes, width)
        return [float(v) for v in gathered.t().flatten() if not math.isnan(float(v))]

    def sum_all(self, *values: float) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(tensor, reduction="sum").tolist() if self.acc.num_processes > 1 else tensor.tolist()

    def make_rewards(self, rows: list[Rollout], iteration: int) -> dict[str, Any]:
        """Scores, whitening, truncation penalty, KL penalty, GAE and advantage whitening over the global batch."""
        section = self.section
        conversations = [self.prompts[r.prompt_index].messages for r in rows]
        flags = [bool(self.prompts[r.prompt_index].meta.get("is_safety", False)) for r in rows]
        rewards = self.reward_fn(conversations, [r.text for r in rows], flags)
        truncated = [r.finish_reason == "length" for r in rows]
        # Whitening statistics are global and come from scored (not truncated) training answers only.
        all_scores = torch.tensor(self.gather_floats([float(c) for c, t in zip(rewards.combined, truncated)
                                                      if not t]), dtype=torch.float64)
        if section.whiten == "running":
            self.whitener.update(all_scores)
            mean, std = self.whitener.mean, self.whitener.std
        else:
            mean, std = (float(all_scores.mean()), float(all_scores.std(correction=0))) if len(all_scores) else (0, 1)
        whitened = (rewards.combined.double() - mean) / (std + self.whitener.eps)
        if section.truncation_penalty is not None:
            whitened = torch.where(torch.tensor(truncated), torch.tensor(float(section.truncation_penalty),
                                                                         dtype=torch.float64), whitened)
        batch = collate_rollouts(rows, self.pad_id, ("kl_logprobs", "ref_logprobs", "old_values"))
        token_rewards, kl = kl_penalized_rewards(whitened.float(), batch["kl_logprobs"], batch["ref_logprobs"],
                                                 batch["mask"], self.kl.beta, section.kl_estimator)
        advantages, returns = gae(token_rewards, batch["old_values"], batch["mask"], section.gamma, section.lam)
        mask = batch["mask"]
        if section.whiten_advantages:
            n, total, squares = self.sum_all(float(mask.sum()), float((advantages * mask).sum()),
                                             float((advantages ** 2 * mask).sum()))
            mean = total / max(n, 1)
            std = math.sqrt(max(squares / max(n, 1) - mean * mean, 0.0))
            advantages = (advantages - mean) / (std + 1e-8) * mask
        for j, row in enumerate(rows):
            n = row.response_len
            row.values.update({"rewards": token_rewards[j, :n], "advantages": advantages[j, :n],
                               "returns": returns[j, :n]})
        stats = {"reward_sum": float(rewards.combined.sum()), "helpful_sum": float(rewards.helpful.sum()),
                 "safety_sum": float(rewards.safety.sum()), "gated_sum": float(rewards.unsafe.sum()),
                 "kl_sum": float(kl.sum()), "truncated_sum": float(sum(truncated)),
                 "length_sum": float(sum(r.response_len for r in rows)), "answers": float(len(rows)),
                 "score_sum": float(whitened.sum())}
        if not all(math.isfinite(v) for v in stats.values()) or not torch.isfinite(advantages).all():
            self.stop(iteration, f"a non-finite reward, KL or advantage ({stats})")
        stats["explained_variance"] = explained_variance(batch["old_values"], returns, mask)
        return stats

    # -- update ----------------------------------------------------------------------------------------
    def update(self, rows: list[Rollout], iteration: int, steps_done: int) -> tuple[int, dict[str, float]]:
        """train.epochs passes over this process's rows in mini-batches; one policy and one critic step each."""
        settings, section = self.policy_engine.settings, self.section
        world = self.acc.num_processes
        local_mb, mbs = settings.batch_size // world, settings.micro_batch_size
        keys = ("old_logprobs", "old_values", "advantages", "returns")
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "clipped": 0.0, "tokens": 0.0, "approx_kl": 0.0}

        def policy_loss_fn(model, batch):
            logprobs = token_logprobs(answer_logits(model, batch), batch["tokens"], section.temperature, section.top_p)
            loss, clipped = policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], batch["mask"],
                                        section.clip)
            with torch.no_grad():
                log_ratio = torch.nan_to_num(logprobs - batch["old_logprobs"], neginf=-30.0, posinf=30.0)
                sums["approx_kl"] += float((0.5 * log_ratio ** 2 * batch["mask"]).sum())
            sums["policy_loss"] += float(loss.detach())
            sums["clipped"] += float(clipped)
            sums["tokens"] += float(batch["mask"].sum())
            return loss, batch["mask"].sum(), {}

        def value_loss_fn(model, batch):
            values = answer_values(model, batch)
            loss = value_loss(values, batch["old_values"], batch["returns"], batch["mask"], section.critic.value_clip)
            sums["value_loss"] += float(loss.detach())
            return loss, batch["mask"].sum(), {}

        grad_norms = []
        for epoch in range(self.epochs):
            order = minibatch_order(len(rows), self.seed, iteration, epoch)
            for m in range(self.minibatches):
                # grouped by length into micro-batches (less padding); the step's loss is a sum over all of its
                # answers, so the grouping does not change it
                chunk = sorted((rows[i] for i in order[m * local_mb:(m + 1) * local_mb]), key=lambda r: len(r.ids))
                micro = [self.policy_engine.to_device(collate_rollouts(chunk[k:k + mbs], self.pad_id, keys))
                         for k in range(0, len(chunk), mbs)]
                (units,) = self.sum_all(float(sum(r.response_len for r in chunk)))
                result = self.policy_engine.step(steps_done, micro, int(units), policy_loss_fn)
                self.critic_engine.step(steps_done, micro, int(units), value_loss_fn)
                if result.grad_norm is not None:
                    grad_norms.append(result.grad_norm)
                steps_done += 1
        total = self.sum_all(*sums.values())
        stats = dict(zip(sums, total))
        tokens = max(stats.pop("tokens"), 1.0)
        out = {k: v / tokens for k, v in stats.items()}
        out["clip_fraction"] = out.pop("clipped")
        out["grad_norm"] = max(grad_norms) if grad_norms else float("nan")
        return steps_done, out

    # -- evaluation ------------------------------------------------------------------------------------
    @phase("evaluation")
    def evaluate(self) -> dict[str, Any]:
        """Greedy answers of the policy to the held-out prompts, scored with the reward function (main process;
        the result is shared with every process so they all take the same early-stopping decision)."""
        from accelerate.utils import broadcast_object_list

        result: list[Any] = [None]
        with self.gathered_weights():
            # Under ZeRO-3 a forward takes part in collectives, so every process answers (the same greedy answers)
            texts = answer(self.policy, self.tokenizer, self.heldout, self.template, self.section.max_new_tokens,
                           self.section.batch_size) if self.heldout and (self.acc.is_main_process or self.zero3) else []
            if self.acc.is_main_process and self.heldout:
                rewards = self.reward_fn([p.messages for p in self.heldout], texts,
                                         [bool(p.meta.get("is_safety", False)) for p in self.heldout])
                n = len(texts)
                metrics = {"reward_mean": float(rewards.combined.mean()), "helpful_mean": float(rewards.helpful.mean()),
                           "safety_mean": float(rewards.safety.mean()), "gated_rate": float(rewards.unsafe.sum()) / n,
                           "answers": texts}
                if self.oracle is not None:
                    metrics["oracle"] = self.oracle(self.heldout, texts)
                result = [metrics]
        self.policy.train()
        if self.acc.num_processes > 1:
            broadcast_object_list(result)
        return result[0] or {}

    # -- guards and checkpoints ------------------------------------------------------------------------
    def stop(self, iteration: int, why: str) -> None:
        ckpt = latest_checkpoint(self.policy_engine.ckpt_dir)
        kept = (f"the last good checkpoint, {ckpt.name} (after iteration {ckpt.name.split('-')[1]}), is kept: "
                f"--resume with an unchanged recipe continues from it" if ckpt is not None else
                f"no checkpoint was saved before it (train.checkpoint_every is "
                f"{self.policy_engine.settings.checkpoint_every} iterations)")
        raise StageError(f"ppo: stopped at iteration {iteration + 1} of {self.section.iterations}: {why}; {kept}. "
                         f"Try a lower learning rate (train.optim.lr), a larger kl_coef, or adaptive_kl: true")

    def save(self, iteration: int, state: dict[str, Any]) -> None:
        state = {**state, "whitener": self.whitener.state_dict(), "kl": self.kl.state_dict()}
        self.policy_engine.save(iteration, state)
        self.critic_engine.save(iteration, {})

    def save_best(self, iteration: int) -> None:
        """The trainable weights of the policy as it is now (the best held-out evaluation so far)."""
        with self.gathered_weights():
            trainable = {n: p.detach().cpu().clone() for n, p in self.policy.named_parameters() if p.requires_grad}
        if not self.acc.is_main_process:
            return
        best = self.workdir / BEST_DIR
        best.mkdir(exist_ok=True)
        save_file(trainable, str(best / "trainable.safetensors.tmp"))
        os.replace(best / "trainable.safetensors.tmp", best / "trainable.safetensors")
        (best / "best.json").write_text(json.dumps({"iteration": iteration}))

    def load_best(self) -> int | None:
        """Put the best evaluation's weights back into the policy; its iteration, or None when there is none."""
        best = self.workdir / BEST_DIR / "trainable.safetensors"
        if not best.exists():
            return None
        weights = load_file(str(best))
        missing = [n for n in weights if n not in dict(self.policy.named_parameters())]
        if missing:
            raise StageError(f"ppo: {best} holds weights the policy does not have ({missing[:3]}); rerun without "
                             f"--resume")
        with torch.no_grad(), self.gathered_weights(modifier_rank=0):
            params = dict(self.policy.named_parameters())
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return json.loads((best.parent / "best.json").read_text())["iteration"]

    # -- the run ---------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        section, settings = self.section, self.policy_engine.settings
        start, state = (0, {})
        if self.resume:
            start, state = self.policy_engine.resume()
            critic_start, _ = self.critic_engine.resume()
            if critic_start != start:
                raise StageError(f"ppo: the policy's last checkpoint is after iteration {start} but the critic's "
                                 f"after {critic_start}; rerun without --resume")
            if state:
                self.whitener.load_state_dict(state["whitener"])
                self.kl.load_state_dict(state["kl"])
        history: list[dict[str, Any]] = state.get("history", [])
        evals: list[dict[str, Any]] = state.get("evals", [])
        best = state.get("best", None)
        patience_left = state.get("patience_left", section.early_stopping_patience)
        steps_done = state.get("steps_done", 0)
        stopped_early = state.get("stopped_early", False)
        if start == 0 and self.heldout:
            evals.append({"iteration": 0, **self.evaluate()})
            best = {"iteration": 0, "reward_mean": evals[-1]["reward_mean"]}
            self.save_best(0)
        bar = tqdm(total=section.iterations, initial=start, desc="ppo", unit="iter", dynamic_ncols=True,
                   disable=not self.acc.is_main_process)
        iteration = start
        try:
            for iteration in range(start, section.iterations):
                if stopped_early:
                    break
                t0 = time.time()
                rows = self.rollouts(iteration)
                t_sampled = time.time()
                forward = self.score_forward(rows)
                stats = self.make_rewards(rows, iteration)
                (kl_sum, answers_sum) = self.sum_all(stats["kl_sum"], stats["answers"])
                if not math.isfinite(kl_sum) or kl_sum / answers_sum > section.kl_stop:
                    self.stop(iteration, f"the mean KL to the reference per answer is {kl_sum / answers_sum:.3g} "
                                         f"nats, above kl_stop ({section.kl_stop:g}), before this iteration's update")
                steps_done, update = self.update(rows, iteration, steps_done)
                t_done = time.time()
                sums = self.sum_all(stats["reward_sum"], stats["helpful_sum"], stats["safety_sum"],
                                    stats["gated_sum"], stats["kl_sum"], stats["truncated_sum"], stats["length_sum"],
                                    stats["answers"], forward["entropy_sum"], forward["tokens"], stats["score_sum"])
                (reward, helpful, safety, gated, kl, truncated, length, answers, entropy, tokens, score) = sums
                record = {"iteration": iteration + 1, "reward_mean": reward / answers,
                          "helpful_mean": helpful / answers,
                          "safety_mean": safety / answers, "gated_rate": gated / answers, "kl": kl / answers,
                          "beta": self.kl.beta, "entropy": entropy / max(tokens, 1), "answer_length": length / answers,
                          "truncated_rate": truncated / answers, "whitened_score_mean": score / answers,
                          "explained_variance": stats["explained_variance"],
                          "behaviour_logprob_gap": forward["behaviour_logprob_gap"], **update,
                          "rollout_s": round(t_sampled - t0, 2), "update_s": round(t_done - t_sampled, 2),
                          "tokens_per_s": length / max(t_sampled - t0, 1e-9),
                          "samples_per_s": answers / max(t_done - t0, 1e-9)}
                self.kl.update(record["kl"], int(answers))
                done = iteration + 1
                if self.heldout and (done % settings.eval_every == 0 or done == section.iterations):
                    evaluation = {"iteration": done, **self.evaluate()}
                    evals.append(evaluation)
                    record["heldout_reward_mean"] = evaluation["reward_mean"]
                    if evaluation["reward_mean"] > best["reward_mean"]:
                        best = {"iteration": done, "reward_mean": evaluation["reward_mean"]}
                        patience_left = section.early_stopping_patience
                        self.save_best(done)
                    elif patience_left is not None:
                        patience_left -= 1
                        if patience_left <= 0:
                            stopped_early = True
                            log.info("ppo: held-out reward has not improved on iteration %d's %.4f for %d "
                                     "evaluations: stopping early at iteration %d", best["iteration"],
                                     best["reward_mean"], section.early_stopping_patience, done)
                history.append(record)
                self.log_fn({f"ppo/{k}": v for k, v in record.items()}, done)
                bar.set_postfix(R_c=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.3f}",
                                vloss=f"{record['value_loss']:.3f}", clip=f"{record['clip_fraction']:.2f}")
                bar.update(1)
                if done % settings.checkpoint_every == 0 and done < section.iterations and not stopped_early:
                    self.save(done, {"history": history, "evals": evals, "best": best,
                                     "patience_left": patience_left, "steps_done": steps_done,
                                     "stopped_early": stopped_early})
        finally:
            bar.close()
        final_iteration = history[-1]["iteration"] if history else start
        committed = final_iteration
        if best is not None and best["iteration"] != final_iteration:
            committed = self.load_best()
        return {"history": history, "evals": evals, "best": best, "iterations_run": final_iteration,
                "committed_iteration": committed, "stopped_early": stopped_early, "optimizer_steps": steps_done,
                "whitener": self.whitener.state_dict(), "kl_coef_final": self.kl.beta}


def strip(evaluation: dict[str, Any]) -> dict[str, Any]:
    """An evaluation without its answers (checkpoint state and manifests stay small)."""
    return {k: v for k, v in evaluation.items() if k != "answers"}
