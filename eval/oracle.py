"""The built-in oracle's verdict on a policy's answers, as manifest metrics.

The oracle checks helpful tasks with known answers, safe answers to harmful requests, and
refusals of benign prompts that only look risky, so a stage's effect is measured without an RM.
Answering the prompts is the generation engine's job (stages/generation.py); this module only scores.
"""
from __future__ import annotations

from typing import Any

from data.builtin.oracle import score_answers
from data.records import Conversation


def oracle_metrics(prompts: list[Conversation], answers: list[str]) -> dict[str, Any]:
    """Oracle scores of answers to built-in prompts, prefixed ``oracle_``: the numbers, the first eight
    answers to read, and the per-kind detail."""
    scores = score_answers(prompts, answers)
    flat: dict[str, Any] = {f"oracle_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
    flat["oracle_examples"] = [{"prompt": p.messages[-1]["content"], "answer": a}
                               for p, a in list(zip(prompts, answers))[:8]]
    flat["oracle_detail"] = {k: v for k, v in scores.items() if not isinstance(v, (int, float))}
    return flat
