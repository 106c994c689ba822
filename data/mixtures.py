"""The training mixtures of the two reward models (Llama 2 §3.2.2), built from preference pairs.

Helpfulness RM: all helpfulness pairs + as many again (``helpful_mix_ratio``) sampled uniformly from
the safety and other (open-source) pairs. Safety RM: all safety pairs (Anthropic Harmless belongs in
``safety``) mixed 90/10 with sampled helpfulness pairs. Pairs whose chosen answer is unsafe and whose
rejected answer is safe are dropped from both. docs/DATA.md states the rules and the rounding.
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence, TypeVar

from data.records import Preference

T = TypeVar("T")


def is_unsafe_chosen(pair: Preference) -> bool:
    """The paper's drop rule: the chosen answer is labelled unsafe and the rejected one safe."""
    return pair.chosen_safe is False and pair.rejected_safe is True


def sample_uniform(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """k items drawn uniformly: without replacement while ``items`` lasts; beyond that, whole copies
    of ``items`` plus a sample without replacement for the remainder (each item used at most once
    more than any other)."""
    if k <= 0 or not items:
        return []
    copies, remainder = divmod(k, len(items))
    return list(items) * copies + rng.sample(list(items), remainder)


def _round(x: float) -> int:
    # half up, not Python's half-to-even, so a count is what a reader computes by hand
    return math.floor(x + 0.5 + 1e-9)


def build_rm_mixtures(helpful: Sequence[Preference], safety: Sequence[Preference], other: Sequence[Preference],
                      helpful_mix_ratio: float = 1.0, safety_mix_helpful_share: float = 0.1,
                      drop_unsafe_chosen: bool = True,
                      seed: int = 0) -> tuple[list[Preference], list[Preference], dict[str, Any]]:
    """(helpful_rm_pairs, safety_rm_pairs, stats), each mix shuffled, deterministic for a seed.

    helpful_mix_ratio: extra pairs for the helpfulness RM, as a multiple of the helpfulness pairs kept,
        drawn uniformly from safety + other together (paper: 1.0, an equal amount).
    safety_mix_helpful_share: share of helpfulness pairs in the safety RM's final mix (paper: 0.1);
        their count is round(share / (1 - share) * safety pairs kept).
    drop_unsafe_chosen: drop pairs with chosen_safe False and rejected_safe True, before anything is
        counted or sampled (pairs with unknown safety labels are kept).
    stats: {"helpful_rm": {source: count, "total": n}, "safety_rm": {...}, "dropped_unsafe_chosen":
        {source: count}, "kept": {source: count}, "resampled": {mix: bool}}; ``resampled`` is True where
        a mix needed more pairs than its source had, so some pairs appear more than once.
    """
    if helpful_mix_ratio < 0:
        raise ValueError(f"helpful_mix_ratio: expected >= 0, got {helpful_mix_ratio}")
    if not 0 <= safety_mix_helpful_share < 1:
        raise ValueError(f"safety_mix_helpful_share: expected a share in [0, 1), got {safety_mix_helpful_share}")
    sources = {"helpful": list(helpful), "safety": list(safety), "other": list(other)}
    dropped = {name: 0 for name in sources}
    if drop_unsafe_chosen:
        for name, pairs in sources.items():
            kept = [pair for pair in pairs if not is_unsafe_chosen(pair)]
            dropped[name] = len(pairs) - len(kept)
            sources[name] = kept
    helpful, safety, other = sources["helpful"], sources["safety"], sources["other"]

    # Separate random streams, so changing one mix's knob leaves the other mix as it was.
    helpful_rng, safety_rng = random.Random(f"{seed}:helpful-rm"), random.Random(f"{seed}:safety-rm")

    pool = [("safety", pair) for pair in safety] + [("other", pair) for pair in other]
    n_extra = _round(helpful_mix_ratio * len(helpful)) if pool else 0
    extra = sample_uniform(pool, n_extra, helpful_rng)
    helpful_mix = [("helpful", pair) for pair in helpful] + extra
    helpful_rng.shuffle(helpful_mix)

    share = safety_mix_helpful_share
    n_helpful = _round(share / (1 - share) * len(safety)) if helpful else 0
    safety_mix = [("safety", pair) for pair in safety] + [("helpful", pair) for pair in
                                                          sample_uniform(helpful, n_helpful, safety_rng)]
    safety_rng.shuffle(safety_mix)

    def counts(mix: list[tuple[str, Preference]], names: tuple[str, ...]) -> dict[str, int]:
        tally = {name: sum(1 for source, _ in mix if source == name) for name in names}
        return {**tally, "total": len(mix)}

    stats = {
        "helpful_rm": counts(helpful_mix, ("helpful", "safety", "other")),
        "safety_rm": counts(safety_mix, ("safety", "helpful")),
        "dropped_unsafe_chosen": dropped,
        "kept": {name: len(pairs) for name, pairs in sources.items()},
        "resampled": {"helpful_rm": n_extra > len(pool), "safety_rm": n_helpful > len(helpful)},
    }
    return [pair for _, pair in helpful_mix], [pair for _, pair in safety_mix], stats


def on_policy_pairs(prompts: Sequence[Any], answers: Sequence[str],
                    key: str = "on_policy") -> tuple[list[Preference], list[Preference], dict[str, Any]]:
    """Preference pairs from a policy's own answers, annotated by the built-in oracle (data.builtin.oracle).

    Each prompt (a Conversation ending with a user turn) needs ``meta.kind`` (helpful, borderline or harmful)
    and ``meta.reference`` (a good answer; built-in prompts carry both). A refusal of a helpful or borderline
    prompt gives a helpfulness pair, the reference above the refusal, both safe; an answer to a harmful
    request that the oracle judges unsafe gives a safety pair, the (safe) reference above it. Every other
    answer gives no pair. Ratings come from the oracle's score gap, as the built-in pairs'.

    Returns (helpful_pairs, safety_pairs, stats) with stats = {"prompts", "refused_benign", "unsafe_harmful",
    "per_kind": {kind: {"n", "pairs"}}}.
    """
    from data.builtin import oracle

    if len(prompts) != len(answers):
        raise ValueError(f"{key}: {len(prompts)} prompts but {len(answers)} answers")
    helpful: list[Preference] = []
    safety: list[Preference] = []
    per_kind: dict[str, dict[str, int]] = {}
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        meta = dict(getattr(prompt, "meta", {}) or {})
        kind, reference = meta.get("kind"), meta.get("reference")
        where = f"{key}: prompt {i} ({meta.get('id', 'no id')})"
        if kind not in ("helpful", "borderline", "harmful"):
            raise ValueError(f"{where}: meta.kind must be helpful, borderline or harmful, got {kind!r}; on-policy "
                             "pairs need prompts the oracle can judge (built-in prompts carry their kind)")
        if isinstance(reference, list):
            reference = reference[0] if reference else None
        if not isinstance(reference, str) or not reference.strip():
            raise ValueError(f"{where}: expected meta.reference, a good answer to put above the policy's own")
        tally = per_kind.setdefault(kind, {"n": 0, "pairs": 0})
        tally["n"] += 1
        if kind == "harmful":
            harmful_meta = {"kind": "harmful", "task": meta.get("task", "harmful")}
            own, good = oracle.judge(harmful_meta, answer), oracle.judge(harmful_meta, reference)
            if own["safe"] or not good["safe"]:
                continue
            gap = good["score"] - own["score"]
            pair_type, target, labels = "safe_vs_own_unsafe", safety, (True, False)
        else:
            if not oracle.is_refusal(answer) or oracle.is_refusal(reference):
                continue
            gap, pair_type, target, labels = 1.0, "answer_vs_own_refusal", helpful, (True, True)
        tally["pairs"] += 1
        target.append(Preference(prompt=list(prompt.messages), chosen=reference, rejected=answer.strip(),
                                 rating=oracle.rating_from_gap(gap), chosen_safe=labels[0], rejected_safe=labels[1],
                                 meta={"id": f"{meta.get('id', i)}-on-policy", "source": key, "kind": kind,
                                       "pair_type": pair_type, "on_policy": True}))
    stats = {"prompts": len(prompts), "refused_benign": len(helpful), "unsafe_harmful": len(safety),
             "per_kind": per_kind}
    return helpful, safety, stats
