"""The rollouts kit: prompts from a recipe's data sources, K answers per prompt from the sampling engine, and
their scores from the one reward function (reward.combine.RewardFunction: both RMs and the safety gate).

Rejection sampling uses it (PPO, GAtt and context distillation next), and stages answer the built-in oracle's
prompts with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data import builtin
from data.records import Conversation, prompt_key
from data.runtime import default_device, phase
from data.sources import DataSource, load_conversations, prompt_messages
from data.templates import render_prompt
from eval.oracle import oracle_metrics
from reward.combine import RewardFunction
from reward.scorer import load_scorer
from stages.checkpoint import is_adapter, load_causal_lm, load_tokenizer
from stages.generation import SamplingConfig, answer, get_engine
from stages.recipe import Recipe, RecipeError
from stages.registry import Registry, Version


def load_prompts(sources: list[DataSource], seed: int, key: str) -> list[Conversation]:
    """Prompts (conversations cut after their last user turn) with their meta; an answer that followed
    is kept as meta.reference when the meta has none (built-in records carry their own)."""
    prompts = []
    for i, record in enumerate(load_conversations(sources, seed, key)):
        messages = prompt_messages(record)
        if not messages or messages[-1].get("role") != "user":
            raise RecipeError(f"{key}: record {i} ({record.meta.get('id', 'no id')}) has no user turn to answer; "
                              "give prompts that end with a user message")
        meta = dict(record.meta)
        if len(record.messages) > len(messages) and "reference" not in meta:
            meta["reference"] = record.messages[len(messages)]["content"]
        prompts.append(Conversation(messages=messages, meta=meta))
    if not prompts:
        raise RecipeError(f"{key}: no prompts; give at least one data source with prompts")
    return prompts


@dataclass
class Answer:
    """One sampled answer: its text and why sampling stopped ("stop": end of turn; "length": cut)."""

    text: str
    finish_reason: str = "stop"

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def sample_answers(model_path: Path, registry: Registry, prompts: list[Conversation], template: str,
                   num_samples: int, temperature: float, top_p: float, max_new_tokens: int, batch_size: int,
                   seed: int, stream: str, backend: str = "hf") -> list[list[Answer]]:
    """``num_samples`` answers per prompt. Every sample has its own random stream keyed by (seed, the
    prompt's messages, ``stream``, sample index), so a rerun, a resumed run or another batching draws the
    same answers, and two rounds (different ``stream``) draw independent ones."""
    tokenizer = load_tokenizer(model_path)
    ids = [render_prompt(tokenizer, p.messages, template).input_ids for p in prompts]
    keys = [prompt_key([{"role": "stream", "content": stream}, *p.messages]) for p in prompts]
    cfg = SamplingConfig(num_samples=num_samples, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    if backend == "vllm":
        if is_adapter(model_path):
            raise RecipeError(f"backend: vllm loads full checkpoints, but {model_path} is a LoRA adapter; use "
                              f"backend: hf, or train.lora.enabled: false in the stage's section")
        model: Any = model_path  # vLLM loads the checkpoint itself
    else:
        model = load_causal_lm(model_path, registry).to(default_device())
    completions = get_engine(backend).generate(model, tokenizer, ids, cfg, prompt_keys=keys)
    del model
    return [[Answer(c.text, c.finish_reason) for c in samples] for samples in completions]


@dataclass
class Scores:
    """Scores of one answer: raw helpfulness and safety RM scores, the safety-gated combination
    (= LOGIT(R_c)), and whether the safety gate found it unsafe."""

    helpful: float
    safety: float
    reward: float
    unsafe: bool = False

    def selection_key(self) -> tuple[bool, float]:
        """As reward.combine.Rewards.selection_key: a gated (unsafe) answer ranks below every other."""
        return (not self.unsafe, self.reward)


def load_reward_fn(helpful_rm: Version, safety_rm: Version, batch_size: int, threshold: float) -> RewardFunction:
    """The reward function over two saved RMs, each scoring ``batch_size`` answers per forward pass."""
    return RewardFunction(load_scorer(helpful_rm.path, batch_size=batch_size, device=default_device()),
                          load_scorer(safety_rm.path, batch_size=batch_size, device=default_device()),
                          threshold=threshold)


def score_answers(prompts: list[Conversation], answers: list[list[str]], reward_fn: Any) -> list[list[Scores]]:
    """Score every answer with the shared reward function (reward.combine.RewardFunction: both RMs, the
    safety gate on the prompt's ``meta.is_safety`` tag and on σ(R_s) < threshold, the combination)."""
    flat_prompts = [p.messages for p, group in zip(prompts, answers) for _ in group]
    flat_answers = [a for group in answers for a in group]
    flat_safety_prompt = [bool(p.meta.get("is_safety", False)) for p, group in zip(prompts, answers) for _ in group]
    if not flat_answers:
        return [[] for _ in prompts]
    flat = [Scores(**row) for row in reward_fn(flat_prompts, flat_answers, flat_safety_prompt).rows()]
    out, start = [], 0
    for group in answers:
        out.append(flat[start:start + len(group)])
        start += len(group)
    return out


@phase("evaluation")
def oracle_eval(model: Any, tokenizer: Any, recipe: Recipe, n: int | None = None, template: str = "model",
                split: str = "heldout") -> dict[str, Any]:
    """Greedy answers of ``model`` to ``n`` built-in prompts of ``split`` (default eval.oracle_prompts), judged
    by the built-in oracle: metrics prefixed ``oracle_``."""
    if default_device() == "cuda" and next(model.parameters()).device.type != "cuda":
        model = model.to("cuda")  # answering on the CPU of a GPU machine would take most of the stage
    prompts = builtin.prompts(split=split, n=n or recipe.eval.oracle_prompts, seed=recipe.seed)
    answers = answer(model, tokenizer, prompts, template, recipe.eval.max_new_tokens, recipe.eval.batch_size)
    return oracle_metrics(prompts, answers)
