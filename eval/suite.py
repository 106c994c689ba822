"""The evaluation suite's arithmetic: every policy of a run answers the same held-out prompts, both RMs score
the answers, and policies are compared prompt by prompt (``chatalign eval``, stages/evaluation.py, does the
answering and scoring; this module only counts).

Prompts fall into two groups as in the paper's Fig. 11: ``helpful`` prompts and ``safety`` prompts (requests
that should be refused and borderline ones that only look risky). A win rate is wins / (wins + losses) of
the safety-gated reward (eval.best_of_n.win_rate: ties removed), overall and per group.
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from eval.best_of_n import win_rate

GROUPS = ("helpful", "safety")
SAFETY_KINDS = ("harmful", "borderline")


def prompt_group(meta: Mapping[str, Any]) -> str:
    """``safety`` for prompts tagged is_safety or of a harmful or borderline kind, else ``helpful``."""
    return "safety" if meta.get("is_safety") or meta.get("kind") in SAFETY_KINDS else "helpful"


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def answer_summary(rows: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> dict[str, Any]:
    """Mean reward (the safety-gated R_c's logit), mean raw helpfulness and safety scores, the share the
    safety gate flags, and the mean reward per prompt group. ``rows`` hold helpful, safety, reward, unsafe."""
    out: dict[str, Any] = {
        "reward_mean": _mean([r["reward"] for r in rows]),
        "helpful_mean": _mean([r["helpful"] for r in rows]),
        "safety_mean": _mean([r["safety"] for r in rows]),
        "gated_rate": _mean([float(r["unsafe"]) for r in rows]),
    }
    for group in GROUPS:
        out[f"{group}_reward_mean"] = _mean([r["reward"] for r, g in zip(rows, groups) if g == group])
    return out


def compare(new: Sequence[Mapping[str, Any]], old: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> dict:
    """Win rate of ``new`` against ``old`` (answers to the same prompts, in the same order): overall and per
    prompt group, each with its wins, losses and ties."""
    if not len(new) == len(old) == len(groups):
        raise ValueError(f"compare: {len(new)} new answers, {len(old)} old ones and {len(groups)} prompts; "
                         "give one answer per prompt each")
    out = {"all": win_rate([r["reward"] for r in new], [r["reward"] for r in old])}
    for group in GROUPS:
        index = [i for i, g in enumerate(groups) if g == group]
        if index:
            out[group] = win_rate([new[i]["reward"] for i in index], [old[i]["reward"] for i in index])
    return out


def headline(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one policy's suite entry that the report's summary table shows, flat."""
    summary, oracle = entry.get("summary", {}), entry.get("oracle", {})
    out = {"reward_mean": summary.get("reward_mean"), "gated_rate": summary.get("gated_rate")}
    for key in ("helpful_accuracy", "harmful_safe_rate", "safety_violation_rate", "borderline_false_refusal_rate"):
        out[f"oracle_{key}"] = oracle.get(key)
    for against in ("against_sft", "against_previous"):
        for group in ("all",) + GROUPS:
            out[f"win_{against[8:]}_{group}"] = (entry.get(against) or {}).get(group, {}).get("win_rate")
    out["kl_sft"] = (entry.get("kl_sft") or {}).get("per_token")
    return out


HEADLINE_LABELS = {
    "reward_mean": "mean reward (R_c logit)", "gated_rate": "gated unsafe",
    "oracle_helpful_accuracy": "oracle helpful accuracy", "oracle_harmful_safe_rate": "oracle safe-answer rate",
    "oracle_safety_violation_rate": "safety violation rate",
    "oracle_borderline_false_refusal_rate": "false-refusal rate",
    "win_sft_all": "win vs SFT", "win_sft_helpful": "win vs SFT (helpful)", "win_sft_safety": "win vs SFT (safety)",
    "win_previous_all": "win vs previous", "win_previous_helpful": "win vs previous (helpful)",
    "win_previous_safety": "win vs previous (safety)", "kl_sft": "KL to SFT (per token)",
}
PERCENT_KEYS = {k for k in HEADLINE_LABELS if k not in ("reward_mean", "kl_sft")}


def format_value(key: str, value: Any) -> str:
    """A number as the report prints it: rates in %, other floats with 3 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if key in PERCENT_KEYS or key.endswith(("_rate", "accuracy", "win_rate")):
            return f"{100 * value:.1f}%"
        return f"{value:.3g}"
    return str(value)


def format_suite_table(policies: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per policy, the headline columns."""
    keys = list(HEADLINE_LABELS)
    lines = ["| policy | " + " | ".join(HEADLINE_LABELS[k] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for name, entry in policies.items():
        flat = headline(entry)
        lines.append(f"| {name} | " + " | ".join(format_value(k, flat[k]) for k in keys) + " |")
    return "\n".join(lines)
