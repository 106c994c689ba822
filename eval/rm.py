"""Reward-model evaluation (Llama 2 Tables 7 and 8): accuracy overall and per preference rating,
calibration of σ(score difference) against how often the first answer is preferred, the unsafe-answer
recall of §3.2.2, and plots. ``evaluate_scorer`` writes eval.json and PNGs into a version directory."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from data.records import RATINGS, Preference
from reward.combine import gate_precision_recall

# Table 8's columns, strongest preference first; "avg" is the accuracy over all pairs.
RATING_LABELS = {"significantly_better": "Significantly Better", "better": "Better",
                 "slightly_better": "Slightly Better", "negligibly_better": "Negligibly Better / Unsure"}
UNRATED = "unrated"
EVAL_FILE = "eval.json"
CALIBRATION_PNG = "calibration.png"
SCORES_PNG = "scores.png"


def _accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    return float((chosen > rejected).double().mean()) if chosen.numel() else float("nan")


def calibration_bins(chosen: torch.Tensor, rejected: torch.Tensor, bins: int = 10, seed: int = 0) -> dict[str, Any]:
    """Each pair is shown in a random order (seeded); the predicted P(first preferred) is σ(s_first - s_second),
    the outcome is whether the first is the chosen answer. Equal-width bins on [0, 1]; ``ece`` is the
    n-weighted mean gap between predicted and empirical rates."""
    rng = random.Random(seed)
    first_is_chosen = torch.tensor([rng.random() < 0.5 for _ in range(chosen.numel())], dtype=torch.bool)
    diff = torch.where(first_is_chosen, chosen - rejected, rejected - chosen).double()
    predicted = torch.sigmoid(diff)
    outcome = first_is_chosen.double()
    index = torch.clamp((predicted * bins).long(), max=bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        row = {"lo": b / bins, "hi": (b + 1) / bins, "n": n, "predicted": None, "empirical": None}
        if n:
            row["predicted"] = float(predicted[mask].mean())
            row["empirical"] = float(outcome[mask].mean())
            ece += n * abs(row["predicted"] - row["empirical"])
        rows.append(row)
    return {"bins": rows, "ece": ece / max(chosen.numel(), 1)}


SAFETY_GATE = 0.15  # the paper's threshold on σ(R_s); precision 0.89 / recall 0.55 on Meta Safety


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, ratings: Sequence[str | None],
                 chosen_safe: Sequence[bool | None] | None = None, rejected_safe: Sequence[bool | None] | None = None,
                 seed: int = 0, bins: int = 10) -> dict[str, Any]:
    """Accuracy (ties count as wrong) overall and per rating, calibration, score statistics, and where
    answers carry safety labels the recall of unsafe answers at σ(score) < 0.5 (the paper's threshold) and the
    precision and recall of the safety gate σ(score) < 0.15."""
    chosen, rejected = chosen.float().cpu(), rejected.float().cpu()
    out: dict[str, Any] = {"n": int(chosen.numel()), "accuracy": _accuracy(chosen, rejected), "per_rating": {}}
    for rating in list(RATINGS) + [UNRATED]:
        mask = torch.tensor([(r or UNRATED) == rating for r in ratings], dtype=torch.bool)
        if mask.any():
            out["per_rating"][rating] = {"n": int(mask.sum()), "accuracy": _accuracy(chosen[mask], rejected[mask])}
    out["calibration"] = calibration_bins(chosen, rejected, bins, seed)
    gap = chosen - rejected
    out["scores"] = {"chosen_mean": float(chosen.mean()), "chosen_std": float(chosen.std(unbiased=False)),
                     "rejected_mean": float(rejected.mean()), "rejected_std": float(rejected.std(unbiased=False)),
                     "gap_mean": float(gap.mean())}
    if chosen_safe is not None and rejected_safe is not None:
        scores = torch.cat([chosen, rejected])
        labels = list(chosen_safe) + list(rejected_safe)
        unsafe = torch.tensor([label is False for label in labels], dtype=torch.bool)
        if unsafe.any():
            flagged = torch.sigmoid(scores[unsafe]) < 0.5
            out["unsafe_recall"] = float(flagged.float().mean())
            out["unsafe_answers"] = int(unsafe.sum())
        known = [i for i, label in enumerate(labels) if label is not None]
        if known:  # the PPO / rejection-sampling gate: "unsafe" when σ(score) < 0.15 (§3.2.3)
            out["gate"] = gate_precision_recall(scores[known], [labels[i] for i in known], SAFETY_GATE)
    return out


def evaluate_pairs(scorer: Any, pairs: Sequence[Preference], seed: int = 0) -> tuple[dict[str, Any], dict]:
    """Metrics of one RM on one test set, and the raw scores (for plots)."""
    chosen, rejected = scorer.score_pairs(pairs)
    metrics = pair_metrics(chosen, rejected, [p.rating for p in pairs], [p.chosen_safe for p in pairs],
                           [p.rejected_safe for p in pairs], seed=seed)
    types = [(p.meta or {}).get("pair_type") for p in pairs]
    if any(types):  # built-in pairs say what kind of difference each one is: which kinds the RM gets right
        by_type: dict[str, list[int]] = {}
        for i, t in enumerate(types):
            by_type.setdefault(t or "unknown", []).append(i)
        metrics["per_pair_type"] = {t: {"n": len(ix), "accuracy": _accuracy(chosen[ix].float().cpu(),
                                                                              rejected[ix].float().cpu())}
                                    for t, ix in sorted(by_type.items())}
    return metrics, {"chosen": chosen.tolist(), "rejected": rejected.tolist()}


def evaluate_scorer(scorer: Any, test_sets: Mapping[str, Sequence[Preference]], out_dir: str | Path | None = None,
                    name: str = "reward model", seed: int = 0) -> dict[str, Any]:
    """Evaluate one RM on every named test set; with ``out_dir``, write eval.json, calibration.png and
    scores.png there. Returns ``{"model": name, "test_sets": {set: metrics}}``."""
    results: dict[str, Any] = {}
    raw: dict[str, dict] = {}
    for set_name, pairs in test_sets.items():
        if pairs:
            results[set_name], raw[set_name] = evaluate_pairs(scorer, pairs, seed)
    report = {"model": name, "test_sets": results}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / EVAL_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if results:
            plot_calibration(results, out_dir / CALIBRATION_PNG, title=f"{name}: calibration")
            plot_score_histograms(raw, out_dir / SCORES_PNG, title=f"{name}: scores")
    return report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(results: Mapping[str, Mapping[str, Any]], path: Any, title: str = "") -> None:
    """Empirical rate at which the first answer is preferred against σ(score difference), per test set;
    ``path`` is a file name or a binary file object."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for set_name, metrics in results.items():
        rows = [r for r in metrics["calibration"]["bins"] if r["n"]]
        ax.plot([r["predicted"] for r in rows], [r["empirical"] for r in rows], marker="o",
                label=f"{set_name} (ECE {metrics['calibration']['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(first preferred) = σ(score₁ − score₂)")
    ax.set_ylabel("empirical rate first preferred")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path if hasattr(path, "write") else str(path), format="png", dpi=100)
    plt.close(fig)


def plot_score_histograms(raw: Mapping[str, Mapping[str, list[float]]], path: str | Path, title: str = "") -> None:
    """Histograms of chosen and rejected scores, one panel per test set."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(raw), figsize=(4.5 * len(raw), 3.5), squeeze=False)
    for ax, (set_name, scores) in zip(axes[0], raw.items()):
        values = scores["chosen"] + scores["rejected"]
        lo, hi = min(values), max(values)
        edges = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30
        ax.hist(scores["chosen"], bins=edges, alpha=0.6, label="chosen")
        ax.hist(scores["rejected"], bins=edges, alpha=0.6, label="rejected")
        ax.set_title(set_name)
        ax.set_xlabel("raw score")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("answers")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path if hasattr(path, "write") else str(path), format="png", dpi=100)
    plt.close(fig)


def _percent(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_accuracy_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown table in the layout of the paper's Table 8: one row per (RM, test set), accuracy (%)
    per rating and over all pairs. ``results`` maps an RM's name to ``{test set: metrics}``, e.g.
    ``{"Safety RM": json.load(open(".../rm-safety/v1/eval.json"))["test_sets"]}``."""
    header = ["Reward model", "Test set"] + list(RATING_LABELS.values()) + ["Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for rm_name, sets in results.items():
        for set_name, metrics in sets.items():
            per_rating = metrics.get("per_rating", {})
            cells = [_percent(per_rating.get(r, {}).get("accuracy")) for r in RATING_LABELS]
            lines.append("| " + " | ".join([rm_name, set_name] + cells + [_percent(metrics.get("accuracy"))]) + " |")
    return "\n".join(lines)
