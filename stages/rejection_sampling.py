"""Stage 3: iterative rejection-sampling fine-tuning (Llama 2 §3.2.3).

One round: sample K answers per prompt from the latest model at the round's temperature, score each
with both reward models, combine the scores with the safety gate (reward/combine.py: the safety score
on safety prompts and on answers it finds unsafe, else the helpfulness score), keep each prompt's best
answer (an answer the gate finds unsafe never beats one it does not, and an answer cut at
``max_new_tokens`` is never chosen: trained with an end-of-turn token after it, it would teach the
model to stop mid-sentence), pool it with the best answers of earlier rounds (``pool_rounds``, the paper's fix after
RLHF-V3 regressed), and fine-tune on (prompt -> pooled answer) like SFT. Every round commits its own
version ``rs/v<N>`` with ``samples.jsonl`` (all K answers and their scores), ``pool.jsonl`` (the
training targets), held-out answers and the best-of-N evaluation.

Resumable round by round: the section a round records and hashes is the stage's section with
``rounds`` and ``temperatures`` replaced by its own index and temperature, and its parents are the
model it sampled, the model it fine-tuned, the previous round and both RMs. A finished round is
therefore reused by any later run that asks for more rounds, and the run continues at the first
round with no version. Within a round, ``--resume`` reuses its scored samples and continues the
fine-tuning from its last training checkpoint. All rounds of one chain share the same two RMs (they
are parents of every round), so rewards pooled from earlier rounds compare directly.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data.builtin.oracle import score_answers as oracle_scores
from data.loaders import read_jsonl, write_jsonl
from data.records import Conversation, prompt_key
from data.runtime import default_device, is_main_process, phase
from data.sources import fingerprint
from eval.best_of_n import best_of_n_curve, plot_best_of_n, win_rate
from stages.catalogue import stage
from stages.checkpoint import load_causal_lm, load_tokenizer
from stages.common import StageRun, run_stage
from stages.config import to_dict
from stages.finetune import fine_tune
from stages.generation import answer
from stages.recipe import Recipe, RecipeError, RejectionSamplingSection
from stages.registry import Registry, Version
from stages.rollouts import Answer, Scores, load_prompts, load_reward_fn, sample_answers, score_answers

log = logging.getLogger("chatalign.rs")

STAGE, SECTION = stage("rejection_sampling").versions[0], stage("rejection_sampling").section  # "rs", its section
SAMPLES_FILE = "samples.jsonl"
POOL_FILE = "pool.jsonl"
HELDOUT_FILE = "heldout.jsonl"
EVAL_FILE = "eval.json"
BEST_OF_N_PNG = "best_of_n.png"


# ---------------------------------------------------------------------------------------------
# Round settings
# ---------------------------------------------------------------------------------------------

def round_temperature(section: RejectionSamplingSection, round_index: int) -> float:
    """The temperature of round ``round_index`` (1-based); the last one given repeats."""
    return section.temperatures[min(round_index, len(section.temperatures)) - 1]


def round_section(section: RejectionSamplingSection, round_index: int) -> dict[str, Any]:
    """What one round records and hashes: the section without the round count and the temperature list,
    with the round's index and temperature, so asking for more rounds leaves finished rounds reusable."""
    recorded = {k: v for k, v in to_dict(section).items() if k not in ("rounds", "temperatures")}
    return {**recorded, "round": round_index, "temperature": round_temperature(section, round_index)}


# ---------------------------------------------------------------------------------------------
# Selection and pooling
# ---------------------------------------------------------------------------------------------

@dataclass
class Candidate:
    """A prompt's best answer so far: a training target."""

    prompt_key: int
    messages: list[dict[str, str]]
    answer: str
    reward: float
    helpful: float
    safety: float
    round: int
    sample: int
    unsafe: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def selection_key(self) -> tuple[bool, float]:
        return (not self.unsafe, self.reward)


def best_of_round(prompts: list[Conversation], answers: list[list[Answer]], scores: list[list[Scores]],
                  round_index: int) -> dict[int, Candidate]:
    """Each prompt's best answer of this round: an answer the safety gate finds unsafe ranks below every
    answer it does not, then the highest reward wins (the first sample wins a tie). Empty answers and
    answers cut at the length limit are never chosen: trained with an end-of-turn token after them, they
    would teach the model to stop at once or mid-sentence; a prompt with no other answer has no candidate
    this round."""
    best: dict[int, Candidate] = {}
    for prompt, prompt_answers, prompt_scores in zip(prompts, answers, scores):
        key = prompt_key(prompt.messages)
        for index, (sampled, s) in enumerate(zip(prompt_answers, prompt_scores)):
            if not sampled.text.strip() or sampled.truncated:
                continue
            if key not in best or s.selection_key() > best[key].selection_key():
                best[key] = Candidate(key, list(prompt.messages), sampled.text, s.reward, s.helpful, s.safety,
                                      round_index, index, s.unsafe)
    return best


def pool_targets(previous_pool: dict[int, Candidate], round_best: dict[int, Candidate],
                 pool_rounds: bool) -> dict[int, Candidate]:
    """The training targets after a round. With ``pool_rounds``, each prompt keeps the highest-reward
    answer of any round so far (an earlier round keeps a tie); without, only this round's best answers
    (what Llama 2 did up to RLHF-V3)."""
    if not pool_rounds:
        return dict(round_best)
    pooled = dict(previous_pool)
    for key, candidate in round_best.items():
        if key not in pooled or candidate.selection_key() > pooled[key].selection_key():
            pooled[key] = candidate
    return pooled


def read_pool(version: Version | None) -> dict[int, Candidate]:
    if version is None:
        return {}
    return {row["prompt_key"]: Candidate(**row) for row in read_jsonl(version.path / POOL_FILE)}


def pool_stats(pool: dict[int, Candidate], round_index: int, prompts: int) -> dict[str, Any]:
    rewards = [c.reward for c in pool.values()]
    by_round: dict[str, int] = {}
    for c in pool.values():
        by_round[str(c.round)] = by_round.get(str(c.round), 0) + 1
    return {"targets": len(pool), "prompts": prompts, "from_round": dict(sorted(by_round.items())),
            "from_this_round": by_round.get(str(round_index), 0),
            "unsafe_targets": sum(c.unsafe for c in pool.values()),
            "reward_mean": statistics.fmean(rewards) if rewards else None}


def sample_rows(prompts: list[Conversation], answers: list[list[Answer]], scores: list[list[Scores]],
                round_best: dict[int, Candidate], round_index: int, temperature: float) -> list[dict[str, Any]]:
    """samples.jsonl: one row per prompt with all K answers, their scores and which one was chosen."""
    rows = []
    for index, (prompt, prompt_answers, prompt_scores) in enumerate(zip(prompts, answers, scores)):
        key = prompt_key(prompt.messages)
        chosen = round_best[key].sample if key in round_best else None
        rows.append({
            "round": round_index, "temperature": temperature, "prompt_index": index, "prompt_key": key,
            "prompt_id": prompt.meta.get("id"), "messages": prompt.messages,
            "is_safety": bool(prompt.meta.get("is_safety", False)), "chosen": chosen,
            "samples": [{"index": i, "text": a.text, "finish_reason": a.finish_reason, **asdict(s),
                         "chosen": i == chosen} for i, (a, s) in enumerate(zip(prompt_answers, prompt_scores))]})
    return rows


def rewards_of(rows: list[dict[str, Any]]) -> list[list[float]]:
    return [[s["reward"] for s in row["samples"]] for row in rows]


# ---------------------------------------------------------------------------------------------
# One round
# ---------------------------------------------------------------------------------------------

@dataclass
class RoundInputs:
    recipe: Recipe
    registry: Registry
    index: int
    temperature: float
    sampler: Version            # the model sampled this round (and compared against on held-out prompts)
    init: Version               # the model fine-tuned this round
    previous: Version | None    # the previous round, whose pool this round extends
    helpful_rm: Version
    safety_rm: Version
    prompts: list[Conversation]
    heldout: list[Conversation]


def sample_and_score(run: StageRun, inputs: RoundInputs, reward_fn: Any) -> list[dict[str, Any]]:
    """This round's scored samples; a resumed round reads them back from its workdir instead."""
    path = run.workdir / SAMPLES_FILE
    if run.resume and path.exists():
        log.info("%s round %d: reusing the scored samples in %s", STAGE, inputs.index, path.parent.name)
        return read_jsonl(path)
    section, recipe = inputs.recipe.rejection_sampling, inputs.recipe
    start = time.time()
    answers = sample_answers(inputs.sampler.path, inputs.registry, inputs.prompts, recipe.model.template,
                             section.samples_per_prompt, inputs.temperature, section.top_p,
                             section.max_new_tokens, section.batch_size, recipe.seed,
                             stream=f"round-{inputs.index}", backend=section.backend)
    sampled = time.time()
    scores = score_answers(inputs.prompts, [[a.text for a in group] for group in answers], reward_fn)
    log.info("%s round %d: %d prompts x %d samples at T=%s: sampled in %.1fs, scored in %.1fs", STAGE,
             inputs.index, len(inputs.prompts), section.samples_per_prompt, inputs.temperature, sampled - start,
             time.time() - sampled)
    rows = sample_rows(inputs.prompts, answers, scores, best_of_round(inputs.prompts, answers, scores, inputs.index),
                       inputs.index, inputs.temperature)
    write_jsonl(path, rows)
    return rows


def wait_for(path: Path, poll_s: float = 2.0) -> None:
    """Other processes wait here while the main process samples (a barrier could time out on long sampling)."""
    while not path.exists():
        time.sleep(poll_s)


def targets_from_rows(rows: list[dict[str, Any]], round_index: int) -> dict[int, Candidate]:
    best = {}
    for row in rows:
        if row["chosen"] is None:
            continue
        sample = row["samples"][row["chosen"]]
        best[row["prompt_key"]] = Candidate(row["prompt_key"], row["messages"], sample["text"], sample["reward"],
                                            sample["helpful"], sample["safety"], round_index, row["chosen"],
                                            bool(sample.get("unsafe", False)))
    return best


def round_body(run: StageRun, inputs: RoundInputs) -> None:
    section = inputs.recipe.rejection_sampling
    pool_path = run.workdir / POOL_FILE
    reward_fn = None
    if is_main_process():
        reward_fn = load_reward_fn(inputs.helpful_rm, inputs.safety_rm, section.score_batch_size,
                                   section.safety_threshold)
        rows = sample_and_score(run, inputs, reward_fn)
        round_best = targets_from_rows(rows, inputs.index)
        pool = pool_targets(read_pool(inputs.previous), round_best, section.pool_rounds)
        write_jsonl(pool_path, [c.to_dict() for c in sorted(pool.values(), key=lambda c: c.prompt_key)])
    else:
        wait_for(pool_path)
        rows = read_jsonl(run.workdir / SAMPLES_FILE)
        pool = {row["prompt_key"]: Candidate(**row) for row in read_jsonl(pool_path)}
    if not pool:
        raise RecipeError(f"{SECTION}: round {inputs.index} has no training target: every sampled answer is empty "
                          f"(raise max_new_tokens, or check the policy {inputs.sampler.id} answers at all)")

    # Targets in prompt order, so the data (and with it the training order) does not depend on the pool's.
    order = {prompt_key(p.messages): i for i, p in enumerate(inputs.prompts)}
    targets = sorted(pool.values(), key=lambda c: order.get(c.prompt_key, len(order)))
    train = [Conversation(messages=c.messages + [{"role": "assistant", "content": c.answer}],
                          meta={"round": c.round, "reward": c.reward}) for c in targets]
    heldout_refs = [Conversation(messages=p.messages + [{"role": "assistant", "content": p.meta["reference"]}])
                    for p in inputs.heldout if isinstance(p.meta.get("reference"), str)]
    model, tokenizer, train_metrics = fine_tune(run, section.train, inputs.recipe.model.template, inputs.recipe.seed,
                                                inputs.init, train, heldout_refs, f"{STAGE}-round{inputs.index}",
                                                key=f"{SECTION}.train")
    run.metrics.update(train_metrics)
    stats = pool_stats(pool, inputs.index, len(inputs.prompts))
    round_rewards = rewards_of(rows)
    flat = [r for rewards in round_rewards for r in rewards]
    chosen = [row["samples"][row["chosen"]]["reward"] for row in rows if row["chosen"] is not None]
    samples = [sample for row in rows for sample in row["samples"]]
    summary = {"round": inputs.index, "temperature": inputs.temperature,
               "samples_per_prompt": section.samples_per_prompt, "sampled_from": inputs.sampler.id,
               "fine_tuned_from": inputs.init.id, "pool_rounds": section.pool_rounds, "pool": stats,
               "reward_mean": statistics.fmean(flat) if flat else None, "reward_max": max(flat) if flat else None,
               "chosen_reward_mean": statistics.fmean(chosen) if chosen else None,
               "samples": len(samples), "truncated": sum(x.get("finish_reason") == "length" for x in samples),
               "empty": sum(not x["text"].strip() for x in samples),
               "gated_unsafe": sum(bool(x.get("unsafe")) for x in samples),
               "prompts_without_target": sum(row["chosen"] is None for row in rows)}
    run.extra["rejection_sampling"] = summary
    run.metrics.update({k: summary[k] for k in ("reward_mean", "reward_max", "chosen_reward_mean", "truncated")})
    run.metrics["pool_reward_mean"] = stats["reward_mean"]
    del model
    if is_main_process():
        # The model as saved (a LoRA adapter merged; whole under ZeRO-3), so the evaluation sees what users load.
        policy = load_causal_lm(run.workdir, inputs.registry).to(default_device())
        run.metrics.update(evaluate_round(run, inputs, policy, tokenizer, round_rewards, reward_fn))


# ---------------------------------------------------------------------------------------------
# Evaluation of a round
# ---------------------------------------------------------------------------------------------

def heldout_answers(model: Any, tokenizer: Any, inputs: RoundInputs, reward_fn: Any) -> list[dict]:
    """Answers of ``model`` to the held-out prompts at ``eval_temperature``, with their scores."""
    section = inputs.recipe.rejection_sampling
    texts = answer(model, tokenizer, inputs.heldout, inputs.recipe.model.template, section.max_new_tokens,
                   section.batch_size, temperature=section.eval_temperature, seed=inputs.recipe.seed)
    scores = score_answers(inputs.heldout, [[t] for t in texts], reward_fn)
    return [{"prompt_key": prompt_key(p.messages), "prompt_id": p.meta.get("id"), "messages": p.messages,
             "answer": text, **asdict(s[0])} for p, text, s in zip(inputs.heldout, texts, scores)]


def previous_heldout(inputs: RoundInputs, reward_fn: Any) -> list[dict]:
    """The sampled model's held-out answers: read from the previous round when it wrote them (same prompts,
    settings and RMs, since those are part of every round's inputs), else generated now."""
    recorded = inputs.sampler.path / HELDOUT_FILE
    if inputs.previous is not None and inputs.sampler.id == inputs.previous.id and recorded.exists():
        rows = read_jsonl(recorded)
        if [r["prompt_key"] for r in rows] == [prompt_key(p.messages) for p in inputs.heldout]:
            return rows
    model = load_causal_lm(inputs.sampler.path, inputs.registry).to(default_device())
    return heldout_answers(model, load_tokenizer(inputs.sampler.path), inputs, reward_fn)


@phase("evaluation")
def compare_on_heldout(run: StageRun, inputs: RoundInputs, model: Any, tokenizer: Any,
                       reward_fn: Any) -> dict[str, Any]:
    """The new policy against the one it was sampled from: mean reward, win rate, and oracle scores of both."""
    new_rows = heldout_answers(model, tokenizer, inputs, reward_fn)
    old_rows = previous_heldout(inputs, reward_fn)
    write_jsonl(run.workdir / HELDOUT_FILE, new_rows)
    comparison = win_rate([r["reward"] for r in new_rows], [r["reward"] for r in old_rows])
    heldout = {"against": inputs.sampler.id, "prompts": len(new_rows),
               "reward_mean": statistics.fmean(r["reward"] for r in new_rows),
               "previous_reward_mean": statistics.fmean(r["reward"] for r in old_rows), **comparison}
    metrics: dict[str, Any] = {"heldout": heldout, "heldout_win_rate": comparison["win_rate"],
                               "heldout_reward_mean": heldout["reward_mean"]}
    if all(p.meta.get("source") == "builtin" for p in inputs.heldout):
        for name, rows in (("oracle", new_rows), ("previous_oracle", old_rows)):
            scored = oracle_scores(inputs.heldout, [r["answer"] for r in rows])
            metrics[name] = {k: v for k, v in scored.items() if v is None or isinstance(v, (int, float))}
        metrics.update({f"oracle_{k}": v for k, v in metrics["oracle"].items() if v is not None})
    return metrics


@phase("evaluation")
def evaluate_round(run: StageRun, inputs: RoundInputs, model: Any, tokenizer: Any, round_rewards: list[list[float]],
                   reward_fn: Any) -> dict[str, Any]:
    """Best-of-N curves (this round's samples, plus the temperature sweep and the earlier rounds' curves),
    and the new policy against the one it was sampled from on held-out prompts: RM reward, win rate, oracle."""
    section = inputs.recipe.rejection_sampling
    curves = {}
    if inputs.previous is not None:
        curves.update(inputs.previous.manifest.get("metrics", {}).get("best_of_n", {}))
    curves[f"round {inputs.index}, T={inputs.temperature:g}"] = best_of_n_curve(round_rewards)
    if section.sweep_temperatures:
        sweep_prompts = inputs.heldout[:section.sweep_prompts]
        for temperature in section.sweep_temperatures:
            answers = sample_answers(inputs.sampler.path, inputs.registry, sweep_prompts, inputs.recipe.model.template,
                                     section.samples_per_prompt, temperature, section.top_p, section.max_new_tokens,
                                     section.batch_size, inputs.recipe.seed, stream=f"sweep-{inputs.index}",
                                     backend=section.backend)
            scores = score_answers(sweep_prompts, [[a.text for a in group] for group in answers], reward_fn)
            curves[f"round {inputs.index} sweep, held-out, T={temperature:g}"] = best_of_n_curve(
                [[s.reward for s in prompt_scores] for prompt_scores in scores])
    plot_best_of_n(curves, run.workdir / BEST_OF_N_PNG,
                   title=f"rejection sampling round {inputs.index}: reward of the best of N samples")

    metrics: dict[str, Any] = {"best_of_n": curves}
    if inputs.heldout:
        metrics.update(compare_on_heldout(run, inputs, model, tokenizer, reward_fn))
    (run.workdir / EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def run(recipe: Recipe, registry: Registry, *, force: bool = False, resume: bool = False) -> list[Version]:
    """All rounds, each committed as rs/v<N>; finished rounds are reused, so a rerun continues the chain."""
    section = recipe.rejection_sampling
    policy = registry.resolve(section.policy)
    helpful_rm, safety_rm = registry.resolve(section.helpful_rm), registry.resolve(section.safety_rm)
    prompts = load_prompts(section.prompts, recipe.seed, f"{SECTION}.prompts")
    heldout = load_prompts(section.heldout_prompts, recipe.seed, f"{SECTION}.heldout_prompts") \
        if section.heldout_prompts else []
    fingerprints = {"prompts": fingerprint(prompts), "heldout": fingerprint(heldout)}
    versions: list[Version] = []
    previous: Version | None = None
    for index in range(1, section.rounds + 1):
        sampler = previous or policy
        init = sampler if section.start_from == "previous" else policy
        parents = []
        for version in (sampler, init, previous, helpful_rm, safety_rm):
            if version is not None and all(version.id != p.id for p in parents):
                parents.append(version)
        inputs = RoundInputs(recipe, registry, index, round_temperature(section, index), sampler, init, previous,
                             helpful_rm, safety_rm, prompts, heldout)
        log.info("%s round %d/%d: sampling %s at T=%s, fine-tuning %s", STAGE, index, section.rounds, sampler.id,
                 inputs.temperature, init.id)
        previous = run_stage(recipe, registry, STAGE, lambda run, inputs=inputs: round_body(run, inputs),
                             section=round_section(section, index), parents=parents, data_fingerprints=fingerprints,
                             force=force, resume=resume)
        versions.append(previous)
    return versions
