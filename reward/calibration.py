"""Platt scaling of a reward model's score, so that σ(score) reads as a probability.

The safety gate compares σ(R_s) with 0.15 (Llama 2 §3.2.2, eq. 2), so the *level* of the safety
score matters, not only its order. The margin ranking loss leaves the level free, and the auxiliary
safe/unsafe loss only pulls it towards P(safe) as far as training goes: a small RM trained for a few
steps scores unsafe and safe answers a fraction of a logit apart, and the gate never fires.

Platt scaling (Platt, 1999) fits two numbers on answers with known safe/unsafe labels that the RM
never trained on: ``calibrated = scale * raw + bias`` minimizing the binary cross-entropy of
σ(calibrated) against the labels. ``scale > 0`` keeps the order, so pairwise accuracy is unchanged;
only the level moves. The reward stage fits it on a held-out calibration set, records it in the
version's manifest, and ``reward.scorer.load_scorer`` applies it, so every user of the saved RM
(rejection sampling, PPO, the scoring server, evaluation) reads the same calibrated score.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class Platt:
    """``calibrated = scale * raw + bias``; the identity is scale 1, bias 0."""

    scale: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and math.isfinite(self.bias)) or self.scale <= 0:
            raise ValueError(f"Platt calibration needs a finite scale > 0 and a finite bias "
                             f"(got scale={self.scale}, bias={self.bias})")

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return scores * self.scale + self.bias

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Platt":
        try:
            return cls(scale=float(data["scale"]), bias=float(data["bias"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"calibration entry {data!r}: expected {{'scale': float > 0, 'bias': float}}") from e


def fit_platt(scores: Sequence[float] | torch.Tensor, labels: Sequence[bool] | torch.Tensor,
              max_iter: int = 100, ridge: float = 1e-3) -> Platt:
    """Fit Platt scaling by Newton's method on the two parameters (deterministic, no learning rate).

    ``labels``: True = the positive class (for the safety RM: the answer is safe). Uses Platt's
    smoothed targets ((n+ + 1)/(n+ + 2) and 1/(n- + 2)) so perfectly separated data still gives a
    finite fit, and a small ridge on the scale. Needs both classes.
    """
    x = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    if x.numel() != y.numel():
        raise ValueError(f"fit_platt: {x.numel()} scores but {y.numel()} labels")
    if not torch.isfinite(x).all():
        raise ValueError("fit_platt: the scores hold NaN or inf")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"fit_platt: needs answers of both classes (got {n_pos} positive, {n_neg} negative)")
    target = torch.where(y > 0.5, torch.tensor((n_pos + 1) / (n_pos + 2), dtype=torch.float64),
                         torch.tensor(1 / (n_neg + 2), dtype=torch.float64))
    features = torch.stack([x, torch.ones_like(x)], dim=1)
    theta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    penalty = torch.diag(torch.tensor([ridge, 0.0], dtype=torch.float64))
    for _ in range(max_iter):
        p = torch.sigmoid(features @ theta)
        gradient = features.T @ (p - target) / len(x) + penalty @ theta
        hessian = (features.T * (p * (1 - p))) @ features / len(x) + penalty + 1e-9 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hessian, gradient)
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    scale, bias = float(theta[0]), float(theta[1])
    if not scale > 0:
        raise ValueError(f"fit_platt: the fitted scale is {scale:.4g} <= 0: on the calibration answers the RM "
                         "scores the negative class above the positive one, so no order-keeping calibration "
                         "exists; train the RM further or check the labels")
    return Platt(scale, bias)


def labelled_answers(pairs: Sequence[Any]) -> tuple[list[list[dict[str, str]]], list[str], list[bool]]:
    """(conversations, answers, is_safe) of every answer of ``pairs`` (records.Preference) that has a
    safe/unsafe label; each distinct (prompt, answer) once."""
    conversations, answers, labels, seen = [], [], [], set()
    for pair in pairs:
        for answer, safe in ((pair.chosen, pair.chosen_safe), (pair.rejected, pair.rejected_safe)):
            key = (repr(pair.prompt), answer)
            if safe is None or key in seen:
                continue
            seen.add(key)
            conversations.append(list(pair.prompt))
            answers.append(answer)
            labels.append(bool(safe))
    return conversations, answers, labels
