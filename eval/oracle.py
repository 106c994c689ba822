"""Answer built-in held-out prompts greedily and let the built-in oracle judge them.

The oracle checks helpful tasks with known answers, safe answers to harmful requests, and
refusals of benign prompts that only look risky, so a stage's effect is measured without an RM.
"""
from __future__ import annotations

from typing import Any

from data.records import Conversation


def answer(model: Any, tokenizer: Any, prompts: list[Conversation], template: str, max_new_tokens: int,
           batch_size: int, temperature: float = 0.0, seed: int = 0) -> list[str]:
    """One answer per prompt (greedy by default)."""
    from data.templates import render_prompt
    from stages.generation import SamplingConfig, generate

    ids = [render_prompt(tokenizer, p.messages, template).input_ids for p in prompts]
    cfg = SamplingConfig(num_samples=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                         batch_size=batch_size)
    return [samples[0].text for samples in generate(model, tokenizer, ids, cfg)]


def oracle_eval(model: Any, tokenizer: Any, recipe: Any, n: int | None = None, template: str = "model",
                split: str = "heldout") -> dict[str, Any]:
    """Oracle scores (prefixed ``oracle_``) on ``n`` built-in prompts of ``split``."""
    import torch

    from data import builtin
    from data.builtin.oracle import score_answers

    if torch.cuda.is_available() and next(model.parameters()).device.type != "cuda":
        model = model.to("cuda")  # answering on the CPU of a GPU machine would take most of the stage
    n = n or recipe.eval.oracle_prompts
    prompts = builtin.prompts(split=split, n=n, seed=recipe.seed)
    answers = answer(model, tokenizer, prompts, template, recipe.eval.max_new_tokens, recipe.eval.batch_size)
    scores = score_answers(prompts, answers)
    flat = {f"oracle_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
    flat["oracle_examples"] = [{"prompt": p.messages[-1]["content"], "answer": a}
                               for p, a in list(zip(prompts, answers))[:8]]
    flat["oracle_detail"] = {k: v for k, v in scores.items() if not isinstance(v, (int, float))}
    return flat
