"""Assembles the built-in data: demonstrations (``build``), prompts for sampling and evaluation
(``prompts``) and graded preference pairs for the two reward models (``preference_pairs``)."""
from __future__ import annotations

import random
from typing import Callable, Mapping, Sequence

from ..records import Conversation, Preference
from . import oracle
from .helpful import TASKS
from .items import Item
from .safety import CATEGORIES, SUBCATEGORIES, borderline, harmful
from .splits import check_split

KINDS = ("helpful", "harmful", "borderline")
# Open questions ("explain") are one helpful task of eight and get extra weight: they are what people
# mostly ask. Harmful requests and benign look-alikes get enough weight to teach the line between them.
DEFAULT_MIX = {"helpful": 0.45, "explain": 0.10, "harmful": 0.25, "borderline": 0.20}

Sampler = Callable[[random.Random, str], Item]


def _leaves(name: str) -> dict[str, Sampler]:
    """The generators a mix key stands for: a kind, a helpful task, a risk category or subcategory."""
    if name == "helpful":
        return dict(TASKS)
    if name in TASKS:
        return {name: TASKS[name]}
    if name == "harmful":
        subs = sorted(SUBCATEGORIES)
    elif name in CATEGORIES:
        subs = list(CATEGORIES[name])
    elif name in SUBCATEGORIES:
        subs = [name]
    elif name == "borderline":
        return {"borderline": borderline}
    else:
        known = [*KINDS, *TASKS, *CATEGORIES, *sorted(SUBCATEGORIES)]
        raise ValueError(f"builtin mix: unknown key {name!r}; expected one of {known}")
    return {f"harmful/{s}": (lambda rng, split, s=s: harmful(rng, split, s)) for s in subs}


def _apportion(n: int, weights: Mapping[str, float], rng: random.Random) -> dict[str, int]:
    """Split n into integer counts proportional to weights (largest remainder; ties by a seeded order)."""
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"builtin mix: weights must be >= 0 with a positive sum, got {dict(weights)}")
    names = list(weights)
    rng.shuffle(names)
    exact = {k: n * weights[k] / total for k in names}
    counts = {k: int(exact[k]) for k in names}
    for k in sorted(names, key=lambda k: exact[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _items(split: str, n: int, seed: int, mix: Mapping[str, float] | None, purpose: str) -> list[Item]:
    """n items for a split, spread over the mix's generators, without repeated prompts while the
    split's pools allow, in a seeded random order."""
    check_split(split)
    if n < 0:
        raise ValueError(f"builtin: n must be >= 0, got {n}")
    rng = random.Random(f"builtin:{purpose}:{split}:{seed}")
    leaves: dict[str, float] = {}
    for name, weight in (mix or DEFAULT_MIX).items():
        generators = _leaves(name)
        for leaf in generators:
            leaves[leaf] = leaves.get(leaf, 0.0) + weight / len(generators)
    samplers = {leaf: fn for name in (mix or DEFAULT_MIX) for leaf, fn in _leaves(name).items()}
    seen: set[str] = set()
    items = []
    for leaf, count in sorted(_apportion(n, leaves, rng).items()):
        attempts = 30  # draws to find an unseen prompt; once a pool runs dry, repeats are accepted
        for _ in range(count):
            for _attempt in range(attempts):
                item = samplers[leaf](rng, split)
                if item.prompt not in seen:
                    break
            else:
                attempts = 1
            seen.add(item.prompt)
            items.append(item)
    rng.shuffle(items)
    return items


def _meta(item: Item, split: str, seed: int, index: int, prefix: str) -> dict:
    return {"id": f"builtin-{prefix}{split}-s{seed}-{index:05d}", "source": "builtin", "split": split, **item.meta}


def _mix_for(kinds: Sequence[str] | None, mix: Mapping[str, float] | None) -> Mapping[str, float] | None:
    if mix is not None or kinds is None:
        return mix
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"builtin: unknown kinds {unknown}; expected some of {KINDS} (use mix= for finer control)")
    return {k: w for k, w in DEFAULT_MIX.items() if k in kinds or (k in TASKS and "helpful" in kinds)}


def build(split: str, n: int, seed: int, mix: Mapping[str, float] | None = None,
          kinds: Sequence[str] | None = None) -> list[Conversation]:
    """n demonstrations (user prompt + reference assistant answer) for a split.

    ``mix`` maps kinds ("helpful", "harmful", "borderline"), helpful task names, risk categories or
    subcategories to weights; default DEFAULT_MIX (55% helpful, a fifth of it open questions, 25%
    harmful, 20% borderline); ``kinds`` keeps only those kinds of the default mix, in its proportions.
    """
    items = _items(split, n, seed, _mix_for(kinds, mix), "items")
    pick = random.Random(f"builtin:answers:{split}:{seed}")
    out = []
    for i, item in enumerate(items):
        answer = pick.choice(item.variants["reference"])
        meta = {**_meta(item, split, seed, i, ""), "reference": answer}
        out.append(Conversation(messages=[*item.messages, {"role": "assistant", "content": answer}], meta=meta))
    return out


def prompts(split: str, n: int, seed: int, kinds: Sequence[str] | None = None,
            mix: Mapping[str, float] | None = None) -> list[Conversation]:
    """n prompts (conversations ending with the user turn) whose meta carries what the oracle needs
    and a ``reference`` answer. With the same seed and mix, the prompts are those of ``build``."""
    items = _items(split, n, seed, _mix_for(kinds, mix), "items")
    return [Conversation(messages=item.messages,
                         meta={**_meta(item, split, seed, i, ""), "reference": item.variants["reference"][0]})
            for i, item in enumerate(items)]


# ---------------------------------------------------------------- preference pairs
HELPFUL_REFUSALS = ("I'm sorry, but I can't help with that.", "I cannot answer that question.",
                    "Sorry, I'm not able to help with this request.")
# Short pleasantries: an answer with one stays within the oracle's verbosity budget, so it ties with
# the bare answer ("negligibly better" pairs) - a pleasantry alone is not what makes an answer worse.
PLEASANTRIES = ("Sure!", "Happy to help.", "Good question.", "Of course.", "Here you go.", "Glad you asked.")
# A wrong answer given as a guess: still an attempt (the oracle's wrong-attempt score), not a refusal.
GUESS_HEDGES = ("I'm not completely sure about this one, but my best guess is this.",
                "I might be wrong here, so please double-check it yourself.",
                "This is only a rough guess on my part, I haven't checked it.",
                "Hmm, I'm not certain, but I think it goes like this.")

# pair type -> (variant of the chosen answer, variant of the rejected answer); the rating then follows
# from the oracle's score gap. Every type is a difference people agree on, in the direction they agree:
# an answer beats a refusal, an answer to the question beats a fluent answer to another question, an
# answer that keeps the prompt's instruction on its form beats the same content that ignores it, a
# correct answer beats a wrong one, a complete answer beats one cut off, a fuller explanation beats a
# bare one; two correct paraphrases, or an answer with and without a short pleasantry (in either order),
# tie. Nothing rewards being shorter: human raters mostly prefer the fuller of two relevant answers (the
# earlier "concise beats padded" pairs taught the opposite, and the RM trained on them fell below chance
# on human-labelled pairs).
HELPFUL_PAIR_TYPES = {
    "correct_vs_refusal": ("reference", "helpful_refusal"),
    "relevant_vs_off_topic": ("reference", "off_topic"),
    "correct_vs_guess": ("reference", "hedged_far"),
    "correct_vs_far": ("reference", "far"),
    "follows_vs_ignores_instruction": ("reference", "ignores_instruction"),
    "complete_vs_truncated": ("reference", "truncated"),
    "correct_vs_near_miss": ("reference", "wrong"),
    "detailed_vs_bare": ("reference", "bare"),
    "paraphrase_vs_paraphrase": ("reference", "reference"),
    "plain_vs_pleasantry": ("reference", "pleasantry"),
}
# The pair types of each rating level the tiers aim at, taken in turn (the oracle's gap decides the
# recorded rating). A type an item cannot give (open questions have no near miss, checkable tasks no
# "bare" answer) is made from another item that can; failing that, from FALLBACK.
HELPFUL_TIERS = (("correct_vs_refusal", "relevant_vs_off_topic"),
                 ("correct_vs_guess", "correct_vs_far", "complete_vs_truncated", "follows_vs_ignores_instruction"),
                 ("correct_vs_near_miss", "detailed_vs_bare"),
                 ("paraphrase_vs_paraphrase", "plain_vs_pleasantry"))
FALLBACK = {"paraphrase_vs_paraphrase": "plain_vs_pleasantry", "plain_vs_pleasantry": "paraphrase_vs_paraphrase"}
# The paper's three safety bins, each with its pair types (borderline prompts give both-safe pairs
# where the helpful answer beats a needless refusal).
SAFETY_BINS = {
    "both_safe": {"safe_vs_refusal": ("reference", "refusal"), "safe_vs_safe": ("reference", "reference"),
                  "helpful_vs_refusal": ("reference", "refusal")},
    "one_safe": {"safe_vs_unsafe": ("reference", "unsafe_any"), "refusal_vs_unsafe": ("refusal", "unsafe_any")},
    "both_unsafe": {"hedged_vs_unsafe": ("unsafe_hedged", "unsafe"), "unsafe_vs_unsafe": ("unsafe", "unsafe")},
}


def _answer(item: Item, variant: str, rng: random.Random, avoid: str | None = None) -> str:
    if variant == "helpful_refusal":
        return rng.choice(HELPFUL_REFUSALS)
    if variant == "truncated" and "truncated" not in item.variants:
        words = rng.choice(item.variants["reference"]).split()
        return " ".join(words[:max(1, len(words) // 2)])
    if variant == "hedged_far":
        return f"{rng.choice(GUESS_HEDGES)} {rng.choice(item.variants['far'])}"
    if variant == "pleasantry":
        options = [a for a in item.variants["reference"] if a != avoid] or item.variants["reference"]
        return f"{rng.choice(PLEASANTRIES)} {rng.choice(options)}"
    if variant == "unsafe_any":
        variant = rng.choice(["unsafe", "unsafe_hedged"])
    options = [a for a in item.variants[variant] if a != avoid] or item.variants[variant]
    return rng.choice(options)


def _can_give(item: Item, pair_type: str) -> bool:
    """Whether an item has the answers a pair type needs (a near miss, a bare answer, two paraphrases)."""
    if pair_type == "correct_vs_near_miss":
        return "wrong" in item.variants and oracle.near_miss(
            item.meta, oracle.judge(item.meta, item.variants["wrong"][0])["claimed"])
    if pair_type == "detailed_vs_bare":
        return "bare" in item.variants and item.variants["bare"][0] != item.variants["reference"][0]
    if pair_type == "paraphrase_vs_paraphrase":
        return len(set(item.variants["reference"])) > 1
    if pair_type == "plain_vs_pleasantry":  # a pleasantry in front breaks an instruction on the form
        return not item.meta.get("style")
    if pair_type in ("correct_vs_guess", "correct_vs_far"):
        return "far" in item.variants
    if pair_type == "follows_vs_ignores_instruction":
        return "ignores_instruction" in item.variants
    return True


def _item_for(item: Item, pair_type: str, rng: random.Random, split: str) -> tuple[Item, str]:
    """An item that can give ``pair_type``: this one, else one drawn from a task that can (near misses
    exist for numbers, counts, sorting and reversal; bare answers for open questions), else a fallback type."""
    for _ in range(12):
        if _can_give(item, pair_type):
            return item, pair_type
        item = TASKS[rng.choice(sorted(TASKS))](rng, split)
    pair_type = FALLBACK.get(pair_type, "complete_vs_truncated")
    return item, pair_type if _can_give(item, pair_type) else "complete_vs_truncated"


def preference_pairs(kind: str, split: str, n: int, seed: int) -> list[Preference]:
    """n graded preference pairs for the helpfulness ("helpful") or safety ("safety") reward model.

    Pair types are spread evenly (see HELPFUL_PAIR_TYPES, SAFETY_BINS); ``rating`` comes from the
    oracle's score gap (oracle.rating_from_gap), chosen_safe/rejected_safe from the oracle's verdict,
    and meta carries the prompt's oracle keys plus pair_type, safety_bin and both scores.
    """
    if kind not in ("helpful", "safety"):
        raise ValueError(f"preference_pairs: kind must be 'helpful' or 'safety', got {kind!r}")
    rng = random.Random(f"builtin:pairs:{kind}:{split}:{seed}")
    plan: list[tuple[str | None, str, tuple[str, str]]] = []  # (safety bin, pair type, variants)
    for i in range(n):
        if kind == "helpful":
            tier = HELPFUL_TIERS[i % 4]
            pair_type = tier[(i // 4) % len(tier)]
            plan.append((None, pair_type, HELPFUL_PAIR_TYPES[pair_type]))
        else:
            safety_bin = list(SAFETY_BINS)[i % 3]
            types = list(SAFETY_BINS[safety_bin])
            pair_type = types[(i // 3) % len(types)]
            plan.append((safety_bin, pair_type, SAFETY_BINS[safety_bin][pair_type]))
    if kind == "helpful":
        items = _items(split, n, seed, {"helpful": 1.0}, "pairs-helpful")
    else:
        n_borderline = sum(1 for _, t, _ in plan if t == "helpful_vs_refusal")
        harmful_items = iter(_items(split, n - n_borderline, seed, {"harmful": 1.0}, "pairs-safety"))
        borderline_items = iter(_items(split, n_borderline, seed, {"borderline": 1.0}, "pairs-borderline"))
        items = [next(borderline_items) if t == "helpful_vs_refusal" else next(harmful_items) for _, t, _ in plan]

    pairs = []
    for i, ((safety_bin, pair_type, (chosen_variant, rejected_variant)), item) in enumerate(zip(plan, items)):
        if kind == "helpful":
            item, pair_type = _item_for(item, pair_type, rng, split)
            chosen_variant, rejected_variant = HELPFUL_PAIR_TYPES[pair_type]
        chosen = _answer(item, chosen_variant, rng)
        if rejected_variant == "off_topic":  # a fluent, correct answer to a question of another task
            for _ in range(20):
                other = TASKS[rng.choice(sorted(t for t in TASKS if t != item.meta["task"]))](rng, split)
                rejected = rng.choice(other.variants["reference"])
                if not oracle.judge(item.meta, rejected)["correct"]:
                    break
        else:
            rejected = _answer(item, rejected_variant, rng, avoid=chosen)
        if pair_type == "complete_vs_truncated" and oracle.judge(item.meta, rejected)["correct"] and \
                "far" in item.variants:  # cut after the answer itself ("Paris is the capital"): not a worse answer
            pair_type, rejected = "correct_vs_far", _answer(item, "far", rng)
        if pair_type == "plain_vs_pleasantry" and rng.random() < 0.5:
            chosen, rejected = rejected, chosen  # a tie: which one is "chosen" carries no signal
        chosen_verdict, rejected_verdict = oracle.judge(item.meta, chosen), oracle.judge(item.meta, rejected)
        gap = chosen_verdict["score"] - rejected_verdict["score"]
        # answers to a benign prompt are safe whatever they say; harmful ones as the oracle judges
        chosen_safe = True if chosen_verdict["safe"] is None else chosen_verdict["safe"]
        rejected_safe = True if rejected_verdict["safe"] is None else rejected_verdict["safe"]
        if safety_bin and (chosen_safe + rejected_safe) != {"both_safe": 2, "one_safe": 1, "both_unsafe": 0}[safety_bin]:
            raise AssertionError(f"builtin pair {pair_type}: oracle safety verdicts do not match bin {safety_bin}")
        meta = {**_meta(item, split, seed, i, f"pair-{kind}-"), "pair_type": pair_type, "safety_bin": safety_bin,
                "chosen_score": chosen_verdict["score"], "rejected_score": rejected_verdict["score"]}
        pairs.append(Preference(prompt=item.messages, chosen=chosen, rejected=rejected,
                                rating=oracle.rating_from_gap(gap), chosen_safe=chosen_safe,
                                rejected_safe=rejected_safe, meta=meta))
    return pairs
