"""Rejection-sampling evaluation: best-of-N reward curves (Llama 2 Figs. 7-8) and RM-judged win rates.

For N = 1..K the curve gives the reward of the best (max) and of the typical (median) answer among N
samples, averaged over prompts; the gap between the two is what rejection sampling can gain. From K
samples of a prompt the value at N is the expectation over every N-subset of the K samples (exact,
by order statistics), i.e. what a fresh draw of N samples gives on average: it uses all K samples at
every N, so it is smoother than taking the first N, and equal to it at N = K.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence


def expected_order_statistic(values: Sequence[float], n: int, j: int) -> float:
    """E[j-th smallest of a uniformly random n-subset of ``values``] (1 <= j <= n <= len(values)).

    The i-th smallest value (1-based) of all K is the j-th smallest of the subset when the subset holds it,
    j-1 of the i-1 values below it and n-j of the K-i above: C(i-1, j-1) C(K-i, n-j) of C(K, n) subsets.
    """
    ordered = sorted(values)
    k = len(ordered)
    if not 1 <= j <= n <= k:
        raise ValueError(f"order statistic {j} of {n} samples out of {k}: need 1 <= j <= n <= {k}")
    total = math.comb(k, n)
    return sum(x * math.comb(i - 1, j - 1) * math.comb(k - i, n - j) for i, x in enumerate(ordered, start=1)) / total


def expected_max(values: Sequence[float], n: int) -> float:
    return expected_order_statistic(values, n, n)


def expected_median(values: Sequence[float], n: int) -> float:
    """Median as statistics.median takes it: the middle value, or the mean of the two middle ones."""
    if n % 2:
        return expected_order_statistic(values, n, (n + 1) // 2)
    return (expected_order_statistic(values, n, n // 2) + expected_order_statistic(values, n, n // 2 + 1)) / 2


def best_of_n_curve(rewards: Sequence[Sequence[float]]) -> dict[str, Any]:
    """{"n": [1..K], "max": [...], "median": [...], "prompts": P} from K rewards per prompt (P prompts)."""
    rewards = [list(r) for r in rewards if len(r)]
    if not rewards:
        return {"n": [], "max": [], "median": [], "prompts": 0}
    sizes = {len(r) for r in rewards}
    if len(sizes) != 1:
        raise ValueError(f"best_of_n_curve: every prompt needs the same number of samples, got sizes {sorted(sizes)}")
    k = sizes.pop()
    ns = list(range(1, k + 1))
    return {"n": ns,
            "max": [statistics.fmean(expected_max(r, n) for r in rewards) for n in ns],
            "median": [statistics.fmean(expected_median(r, n) for r in rewards) for n in ns],
            "prompts": len(rewards)}


def win_rate(new: Sequence[float], old: Sequence[float]) -> dict[str, Any]:
    """How often ``new`` scores above ``old`` on the same prompts, ties removed: wins / (wins + losses)
    (the paper's Fig. 11 convention). A tie is an equal reward, e.g. both models gave the same answer."""
    if len(new) != len(old):
        raise ValueError(f"win_rate: {len(new)} new rewards but {len(old)} old ones; give one per prompt each")
    wins = sum(a > b for a, b in zip(new, old))
    losses = sum(a < b for a, b in zip(new, old))
    ties = len(new) - wins - losses
    return {"wins": wins, "losses": losses, "ties": ties,
            "win_rate": wins / (wins + losses) if wins + losses else None}


def plot_best_of_n(curves: Mapping[str, Mapping[str, Any]], path: Any, title: str = "") -> None:
    """Max (solid) and median (dashed) reward against N, one colour per curve (round or temperature); ``path``
    is a file name or a binary file object."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    many = len(curves) > 3  # a legend of more than six lines would cover the curves: put it beside them
    fig, ax = plt.subplots(figsize=(9.5 if many else 6, 4.5))
    for index, (label, curve) in enumerate(curves.items()):
        if not curve.get("n"):
            continue
        color = f"C{index % 10}"
        ax.plot(curve["n"], curve["max"], color=color, marker="o", markersize=3, label=f"{label}: max")
        ax.plot(curve["n"], curve["median"], color=color, linestyle="--", label=f"{label}: median")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("N (samples per prompt)")
    ax.set_ylabel("reward (LOGIT of the safety-gated R_c)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path if hasattr(path, "write") else str(path), format="png", dpi=100)
    plt.close(fig)
