"""Reward-model training losses: the margin ranking loss (Llama 2 §3.2.2, Table 27), our reading of
the unstated "safety auxiliary loss", and pairwise accuracy."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from data.records import RATINGS

# Margin m(rating) added inside the ranking loss, per preference level (paper Table 27). "none" is
# the plain Bradley-Terry loss; the paper found "small" and "large" about equal (Table 28).
MARGIN_TABLES: dict[str, dict[str, float]] = {
    "none": {rating: 0.0 for rating in RATINGS},
    "small": {"significantly_better": 1.0, "better": 2.0 / 3.0, "slightly_better": 1.0 / 3.0,
              "negligibly_better": 0.0},
    "large": {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0,
              "negligibly_better": 0.0},
}

REDUCTIONS = ("mean", "sum", "none")


def margins_for(ratings: Sequence[str | None], explicit: Sequence[float | None] | None = None,
                table: str = "none", *, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-pair margins as a float32 tensor of shape (len(ratings),).

    An explicit margin from the data (``Preference.margin``) wins over the table; a pair with
    neither an explicit margin nor a rating gets 0.
    """
    if table not in MARGIN_TABLES:
        raise ValueError(f"unknown margin table {table!r}: expected one of {tuple(MARGIN_TABLES)}")
    if explicit is not None and len(explicit) != len(ratings):
        raise ValueError(f"got {len(ratings)} ratings but {len(explicit)} explicit margins: "
                         "pass one explicit margin (or None) per pair")
    margin_of = MARGIN_TABLES[table]
    margins = []
    for i, rating in enumerate(ratings):
        if explicit is not None and explicit[i] is not None:
            margins.append(float(explicit[i]))
        elif rating is None:
            margins.append(0.0)
        elif rating in margin_of:
            margins.append(margin_of[rating])
        else:
            raise ValueError(f"pair {i}: unknown preference rating {rating!r}: expected one of "
                             f"{RATINGS} or None (map the source's labels to these in its converter)")
    return torch.tensor(margins, dtype=torch.float32, device=device)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r}: expected one of {REDUCTIONS}")


def _check_same_shape(name: str, value: torch.Tensor, reference: torch.Tensor) -> None:
    # Broadcasting (B, 1) against (B,) silently gives (B, B); refuse instead.
    if value.shape != reference.shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)} but chosen_rewards has "
                         f"{tuple(reference.shape)}: give both the same shape (e.g. .squeeze(-1) "
                         "the reward head's output)")


def ranking_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                 margins: torch.Tensor | float | None = None, reduction: str = "mean") -> torch.Tensor:
    """Binary ranking loss with margin: ``-log σ(r_chosen - r_rejected - m)``.

    ``logsigmoid`` keeps it finite for any score gap. ``reduction``: "mean" (default), "sum", or
    "none" for the per-pair values.
    """
    _check_same_shape("rejected_rewards", rejected_rewards, chosen_rewards)
    if margins is None:
        margins = 0.0
    if isinstance(margins, torch.Tensor) and margins.dim() > 0:
        _check_same_shape("margins", margins, chosen_rewards)
        margins = margins.to(chosen_rewards.dtype)
    per_pair = -F.logsigmoid(chosen_rewards - rejected_rewards - margins)
    return _reduce(per_pair, reduction)


def safety_auxiliary_loss(rewards: torch.Tensor, is_safe: Sequence[bool | None] | torch.Tensor,
                          weight: float = 1.0) -> torch.Tensor:
    """Safety auxiliary loss for the Safety RM: ``weight * mean BCE(σ(score), is_safe)``.

    The paper (§3.2.2) reports that a "safety auxiliary loss" raised the Safety RM's recall of unsafe
    responses (measured as σ(score) < 0.5) but does not give its formula. This is our reading: treat
    σ(score) as P(response is safe) and add the binary cross-entropy against each response's
    safe (1) / unsafe (0) label, applied to chosen and rejected responses alike. Call it on both,
    e.g. ``safety_auxiliary_loss(torch.cat([chosen, rejected]), chosen_safe + rejected_safe, w)``,
    and add it to the ranking loss. It is a recipe setting; 1.0 is the default weight when enabled.

    ``is_safe`` holds one label per score: True/False, or None for unknown. A tensor may be bool
    (all known) or float with NaN for unknown. Unknown labels are masked out; the mean is over the
    known ones, and with none known the loss is a zero that still carries the graph (so every
    distributed rank runs the same backward).
    """
    if isinstance(is_safe, torch.Tensor):
        labels = is_safe.to(device=rewards.device, dtype=torch.float32)
    else:
        labels = torch.tensor([float("nan") if s is None else float(bool(s)) for s in is_safe],
                              dtype=torch.float32, device=rewards.device)
    if labels.shape != rewards.shape:
        raise ValueError(f"is_safe has shape {tuple(labels.shape)} but rewards has "
                         f"{tuple(rewards.shape)}: give one label (or None) per score")
    known = ~torch.isnan(labels)
    if not bool(known.any()):
        return rewards.sum() * 0.0
    # BCE with logits is the stable form of BCE(σ(score), label).
    per_response = F.binary_cross_entropy_with_logits(
        rewards[known], labels[known].to(rewards.dtype), reduction="none")
    return weight * per_response.mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs where the chosen response scores strictly higher (ties count as wrong)."""
    _check_same_shape("rejected_rewards", rejected_rewards, chosen_rewards)
    if chosen_rewards.numel() == 0:
        raise ValueError("pairwise_accuracy needs at least one pair")
    return (chosen_rewards > rejected_rewards).float().mean().item()
