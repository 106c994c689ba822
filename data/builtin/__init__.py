"""The project's own built-in data, written by this project and deterministic for a seed: helpful
tasks with checkable answers, harmful requests in the paper's risk categories with safe answers,
borderline prompts that only sound risky, graded preference pairs, GAtt constraints, and an
oracle that judges any answer by program.

    build(split, n, seed, mix=None)            -> list[Conversation]  demonstrations
    prompts(split, n, seed, kinds=None, mix=None) -> list[Conversation]  prompts (end with user turn)
    preference_pairs(kind, split, n, seed)     -> list[Preference]    kind "helpful" | "safety"
    gatt_constraints(seed, split=None)         -> {type: [constraint]}
    judge(record, answer) / score_answers(records, answers) / check_constraint(constraint, answer)

Splits "train", "heldout" and "test" never share an item (a country, an operand pair, a harmful
act), so they never share a prompt in any phrasing.
"""
from .dataset import DEFAULT_MIX, KINDS, build, preference_pairs, prompts
from .gatt import check_constraint, gatt_constraints
from .oracle import is_refusal, judge, rating_from_gap, score_answers
from .splits import SPLITS

__all__ = ["DEFAULT_MIX", "KINDS", "SPLITS", "build", "prompts", "preference_pairs", "gatt_constraints",
           "check_constraint", "judge", "score_answers", "is_refusal", "rating_from_gap"]
