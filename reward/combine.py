"""The one implementation of the PPO reward (Llama 2 §3.2.3), shared by rejection sampling, PPO and
the scoring API: safety-gated combination of the two RMs, whitening, and the per-token KL penalty.

Whitening default: "running". The paper whitens LOGIT(R_c) "to increase stability and balance
properly with the KL penalty term (β)" without saying over which statistics. Batch statistics (what
most PPO code uses) renormalise every batch to mean 0 / std 1: with small batches (our CPU recipes
use a handful of prompts) the std is noisy (a batch of one has none), and because the batch mean is
subtracted anew each iteration, a policy that improves sees the same mean reward forever while the
critic chases a moving target. A running mean/variance, updated with each batch before whitening it
(so the first iteration equals batch whitening), keeps one reward scale across iterations, so the
balance against β stays fixed, which is the property the paper cites. "fixed" (mean/std measured
on the RM's validation scores) is the fully reproducible choice when those statistics are known.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

WHITEN_MODES = ("batch", "running", "fixed")
KL_ESTIMATORS = ("k1", "k3")


def combine(helpful_scores: torch.Tensor, safety_scores: torch.Tensor,
            is_safety_prompt: torch.Tensor | Sequence[bool], threshold: float = 0.15) -> torch.Tensor:
    """LOGIT(R_c) from the raw scores of the helpfulness and safety RMs.

    ``R_s = σ(safety)``, ``R_h = σ(helpful)``; ``R_c = R_s`` if the prompt is a safety prompt or
    ``R_s < threshold``, else ``R_h``. Since logit(σ(x)) == x, this returns the chosen raw score
    itself: round-tripping through σ would saturate to 0 or 1 (logit ±inf) for large scores in
    float32 and lose precision well before that.

    Boundary: the gate is strict, as in the paper. It is evaluated as ``safety < logit(threshold)``
    in float64, i.e. exactly ``R_s < threshold``; a safety score exactly at the threshold is *not*
    gated and the helpfulness score is used. threshold 0 disables the gate, 1 always gates.
    """
    if helpful_scores.shape != safety_scores.shape:
        raise ValueError(f"helpful_scores has shape {tuple(helpful_scores.shape)} but safety_scores "
                         f"has {tuple(safety_scores.shape)}: give one score of each per response")
    _logit(threshold)  # validates
    is_safety_prompt = torch.as_tensor(is_safety_prompt, dtype=torch.bool, device=safety_scores.device)
    if is_safety_prompt.shape != safety_scores.shape:
        raise ValueError(f"is_safety_prompt has shape {tuple(is_safety_prompt.shape)} but the scores "
                         f"have {tuple(safety_scores.shape)}: give one flag per response")
    unsafe = flag_unsafe(safety_scores, threshold)
    use_safety = is_safety_prompt | unsafe
    dtype = torch.promote_types(helpful_scores.dtype, safety_scores.dtype)
    return torch.where(use_safety, safety_scores.to(dtype), helpful_scores.to(dtype))


def _logit(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"safety threshold must be a probability in [0, 1], got {threshold}")
    if threshold == 0.0:
        return -math.inf
    if threshold == 1.0:
        return math.inf
    return math.log(threshold) - math.log1p(-threshold)


def flag_unsafe(safety_scores: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """``σ(safety) < threshold`` evaluated exactly, as ``safety < logit(threshold)`` in float64."""
    return safety_scores.double() < _logit(threshold)


class Scorer(Protocol):
    """What the reward function needs of a reward model (reward.scorer.RewardScorer is one)."""

    def score(self, conversations: Sequence[list[dict[str, str]]], responses: Sequence[str]) -> torch.Tensor: ...


@dataclass
class Rewards:
    """Scores of a batch of responses: raw helpfulness and safety scores, the gated combination
    LOGIT(R_c), and whether the safety gate found each response unsafe (σ(R_s) < threshold)."""

    helpful: torch.Tensor
    safety: torch.Tensor
    combined: torch.Tensor
    unsafe: torch.Tensor
    is_safety_prompt: torch.Tensor

    def __len__(self) -> int:
        return self.combined.numel()

    def selection_key(self, i: int) -> tuple[bool, float]:
        """Sort key for choosing among answers to one prompt: an answer the gate finds unsafe ranks
        below every answer it does not, whatever the two RMs' levels; within each group, higher R_c wins.

        Why a rule and not the raw R_c: on a helpfulness prompt R_c is R_s for a gated answer and R_h
        for the rest, two models' scores whose levels nothing ties together, so an unsafe answer with
        R_s = -2 would beat a safe one with R_h = -3. On a safety prompt every answer is scored by R_s
        and the gated ones already have the lowest R_s, so the rule changes nothing there.
        """
        return (not bool(self.unsafe[i]), float(self.combined[i]))

    def rows(self) -> list[dict[str, Any]]:
        return [{"helpful": float(h), "safety": float(s), "reward": float(r), "unsafe": bool(u)}
                for h, s, r, u in zip(self.helpful.tolist(), self.safety.tolist(), self.combined.tolist(),
                                      self.unsafe.tolist())]


class RewardFunction:
    """The Llama 2 reward of §3.2.3 from the two reward models: score every response with both RMs
    (one batched pass each), gate on the prompt's safety tag and on ``σ(R_s) < threshold``, combine.

    The one place rejection sampling, PPO and the scoring API compute rewards from text.
    """

    def __init__(self, helpful: Scorer, safety: Scorer, threshold: float = 0.15):
        _logit(threshold)  # validates
        self.helpful, self.safety, self.threshold = helpful, safety, threshold

    def __call__(self, conversations: Sequence[list[dict[str, str]]], responses: Sequence[str],
                 is_safety_prompt: Sequence[bool]) -> Rewards:
        if not len(conversations) == len(responses) == len(is_safety_prompt):
            raise ValueError(f"reward: got {len(conversations)} conversations, {len(responses)} responses and "
                             f"{len(is_safety_prompt)} safety flags; give one of each per response")
        flags = torch.tensor([bool(f) for f in is_safety_prompt], dtype=torch.bool)
        if not responses:
            empty = torch.empty(0, dtype=torch.float64)
            return Rewards(empty, empty, empty, torch.empty(0, dtype=torch.bool), flags)
        helpful = self.helpful.score(conversations, responses).double().cpu()
        safety = self.safety.score(conversations, responses).double().cpu()
        combined = combine(helpful, safety, flags, threshold=self.threshold)
        return Rewards(helpful, safety, combined, flag_unsafe(safety, self.threshold), flags)


def gate_precision_recall(safety_scores: torch.Tensor | Sequence[float], is_safe: Sequence[bool],
                          threshold: float = 0.15) -> dict[str, float | int | None]:
    """How well ``σ(R_s) < threshold`` flags unsafe responses (the paper: precision 0.89, recall 0.55
    at 0.15 on Meta Safety). Unsafe is the positive class; None where a ratio has no denominator."""
    scores = torch.as_tensor(safety_scores, dtype=torch.float64).flatten()
    labels = torch.as_tensor([not bool(s) for s in is_safe], dtype=torch.bool)
    if scores.shape != labels.shape:
        raise ValueError(f"gate_precision_recall: {scores.numel()} scores but {labels.numel()} labels")
    flagged = flag_unsafe(scores, threshold)
    true_pos = int((flagged & labels).sum())
    n_flagged, n_unsafe = int(flagged.sum()), int(labels.sum())
    return {"threshold": threshold, "n": int(scores.numel()), "unsafe": n_unsafe, "flagged": n_flagged,
            "precision": true_pos / n_flagged if n_flagged else None,
            "recall": true_pos / n_unsafe if n_unsafe else None}


class Whitener:
    """``whiten(x) = (x - mean) / (std + eps)`` with statistics from the mode:

    - "batch": mean/std of ``x`` itself;
    - "running": mean/variance of every value seen so far, ``x`` included (parallel merge of
      count/mean/M2 in float64, so the result equals the statistics of all batches concatenated);
    - "fixed": ``mean``/``std`` given at construction.

    std is the population std (divide by n). With data parallelism, gather the scores of all ranks
    before whitening so every rank uses the same statistics.
    """

    def __init__(self, mode: str = "running", mean: float | None = None, std: float | None = None,
                 eps: float = 1e-8):
        if mode not in WHITEN_MODES:
            raise ValueError(f"unknown whitening mode {mode!r}: expected one of {WHITEN_MODES}")
        if mode == "fixed":
            if mean is None or std is None:
                raise ValueError("whitening mode 'fixed' needs both mean and std (e.g. measured on "
                                 "the reward model's validation scores)")
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise ValueError(f"whitening mode 'fixed' needs a finite mean and a std > 0, got mean {mean}, "
                                 f"std {std}: a std of 0 would blow every reward up (scores with no spread "
                                 "cannot be whitened)")
        elif mean is not None or std is not None:
            raise ValueError(f"mean/std are only used by whitening mode 'fixed', not {mode!r}")
        self.mode, self.eps = mode, eps
        self.count = 0
        self.mean = float(mean) if mean is not None else 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean (running mode)
        self._std = float(std) if std is not None else 1.0

    @property
    def std(self) -> float:
        if self.mode == "running":
            return math.sqrt(self._m2 / self.count) if self.count else 1.0
        return self._std

    def update(self, x: torch.Tensor) -> None:
        """Merge the values of ``x`` into the running statistics (Chan et al.'s parallel formula)."""
        values = x.detach().double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_m2 = ((values - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self._m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    def whiten(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        """Whiten ``x`` (running mode: after merging ``x`` into the statistics, unless ``update`` is False)."""
        if x.numel() == 0:
            return x
        if self.mode == "batch":
            values = x.detach().double()
            mean, std = values.mean().item(), values.std(correction=0).item()
            self.mean, self._std = mean, std  # kept for logging
        else:
            if self.mode == "running" and update:
                self.update(x)
            mean, std = self.mean, self.std
        return (x - mean) / (std + self.eps)

    __call__ = whiten

    def frozen(self) -> "Whitener":
        """A "fixed" whitener with this one's current statistics: what a server or an evaluation uses, so
        the requests it whitens never move the statistics that training uses."""
        if self.mode == "batch":
            raise ValueError("a 'batch' whitener has no statistics to freeze: measure them on validation scores "
                             "and use mode 'fixed'")
        return Whitener("fixed", mean=self.mean, std=self.std, eps=self.eps)

    def state_dict(self) -> dict[str, float | int | str]:
        """Statistics to save with a PPO checkpoint so a resumed run keeps the same scale."""
        return {"mode": self.mode, "count": self.count, "mean": self.mean, "m2": self._m2,
                "std": self._std, "eps": self.eps}

    def load_state_dict(self, state: dict[str, float | int | str]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"saved whitening state is mode {state['mode']!r} but this Whitener is "
                             f"{self.mode!r}: set the recipe's whitening mode to match")
        self.count, self.mean, self._m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        self._std, self.eps = float(state["std"]), float(state["eps"])


def kl_penalized_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, beta: float,
                         kl_estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards ``R(g|p) = R̃_c(g|p) - β·KL(π_θ ‖ π_0)``.

    The paper leaves open how the KL enters; we use the standard reading: a per-token penalty
    ``-β·kl_t`` at every response token, plus the sequence score (whitened LOGIT(R_c)) added on the
    last response token. Summed over a sequence this is exactly the paper's R(g|p).

    Shapes: ``score`` (B,); ``logprobs``, ``ref_logprobs`` and ``mask`` (B, T), the log-probs of the
    sampled tokens under the policy and the frozen reference, mask 1 on response tokens (padding and
    prompt 0; the last 1 of a row is where the score goes). KL estimators per token, with
    r = π_0/π_θ of the sampled token: "k1" = -log r = logprobs - ref_logprobs (unbiased, can be
    negative); "k3" = (r - 1) - log r (unbiased, never negative, lower variance).

    Returns ``(rewards, kl)``: rewards (B, T) float32, zero off the mask; kl (B,) the estimated
    KL of each whole sequence (sum over its response tokens); ``kl.mean()`` is the usual log value.
    Everything is detached: rewards are constants to PPO.
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}: expected one of {KL_ESTIMATORS}")
    if beta < 0:
        raise ValueError(f"KL coefficient beta must be >= 0, got {beta}")
    if logprobs.dim() != 2 or logprobs.shape != ref_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, ref_logprobs {tuple(ref_logprobs.shape)} "
                         f"and mask {tuple(mask.shape)} must all be (batch, tokens)")
    if score.shape != logprobs.shape[:1]:
        raise ValueError(f"score has shape {tuple(score.shape)}, expected ({logprobs.shape[0]},): one "
                         "score per sequence")
    mask = mask.detach().bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"sequences {empty} have no response token in the mask: nowhere to put "
                         "their score (keep at least the EOS token of an empty answer)")
    log_ratio = logprobs.detach().float() - ref_logprobs.detach().float()  # log π_θ/π_0 = -log r
    if kl_estimator == "k1":
        per_token_kl = log_ratio
    else:
        per_token_kl = torch.expm1(-log_ratio) + log_ratio
    per_token_kl = per_token_kl.masked_fill(~mask, 0.0)
    rewards = -beta * per_token_kl
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = positions.masked_fill(~mask, -1).max(dim=1).values
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += score.detach().float().to(rewards.device)
    return rewards, per_token_kl.sum(dim=1)
