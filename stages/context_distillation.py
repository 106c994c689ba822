"""Stage 5: safety context distillation (Llama 2 §4.2.4).

On adversarial prompts only, the policy answers each prompt twice: as it is, and with a safety preprompt as
the system message (generic, or targeted with the answer template of the prompt's risk category:
data/preprompts.py). The safety RM scores both answers against the prompt without the preprompt; the
preprompted answer is kept only where it scores higher (the paper's fix: distillation helps answers the RM
scores low and can make good ones vague and over-cautious). The policy is then fine-tuned on (prompt
without preprompt -> kept answer) with the fine-tuning kit. ``pairs.jsonl`` holds every pair, both scores
and the keep decision.

Deviation from the paper (``benign_prompts``, off unless the recipe names some): benign look-alike prompts are
distilled alongside, answered with a "safe and responsible, but helpful" preprompt and kept only where the
answer is not a refusal and the helpfulness RM scores it higher than the plain one (``benign_pairs.jsonl``).
Trained on refusals alone, a small model learns to refuse questions that only sound risky as well.

Evaluation before and after on held-out prompts (eval/safety.py): the safety RM's score distribution on
adversarial prompts (``safety_scores.png``), violation rates by the gate and the oracle, and false refusals
with the helpfulness RM's score on benign look-alike prompts. ``--resume`` reuses the pairs and the "before"
evaluation and continues the fine-tuning from its last checkpoint.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from data.builtin.oracle import is_refusal
from data.loaders import read_jsonl, write_jsonl
from data.preprompts import classify_risk, load_safety_prompts, preprompt_for, with_preprompt
from data.records import Conversation, prompt_key
from data.runtime import default_device, is_main_process
from data.sources import fingerprint
from eval.safety import false_refusal_metrics, plot_safety_scores, violation_metrics
from reward.scorer import load_scorer
from stages.catalogue import stage
from stages.checkpoint import load_causal_lm, load_tokenizer
from stages.common import StageRun, run_stage
from stages.finetune import fine_tune
from stages.generation import answer
from stages.recipe import Recipe, RecipeError
from stages.registry import Registry, Version
from stages.rollouts import sample_answers

log = logging.getLogger("chatalign.distill")

STAGE, SECTION = stage("context_distillation").versions[0], stage("context_distillation").section
PAIRS_FILE = "pairs.jsonl"
BEFORE_FILE = "eval_before.json"
EVAL_FILE = "eval.json"
PLOT_FILE = "safety_scores.png"


def risk_category(prompt: Conversation, category_from: str) -> tuple[str | None, str]:
    """A prompt's risk category and where it came from: its data (meta.category), else the keyword classifier."""
    if category_from == "data" and prompt.meta.get("category"):
        return prompt.meta["category"], "data"
    return classify_risk(prompt.messages[-1]["content"]), "keywords"


def keep_decisions(plain_scores: list[float], preprompted_scores: list[float], usable: list[bool],
                   margin: float = 0.0) -> list[bool]:
    """The safety-RM gate: keep the preprompted answer only where it scores higher than the plain one (by more
    than ``margin``) and is usable (not empty, not cut at the length limit)."""
    return [ok and pre > plain + margin for plain, pre, ok in zip(plain_scores, preprompted_scores, usable)]


def distill_pairs(run: StageRun, recipe: Recipe, policy: Version, safety_rm: Version,
                  prompts: list[Conversation]) -> list[dict[str, Any]]:
    """Both answers of every prompt with their safety scores and the keep decision (read back on --resume)."""
    section = recipe.context_distillation
    path = run.workdir / PAIRS_FILE
    if run.resume and path.exists():
        log.info("%s: reusing the scored pairs in %s", STAGE, path.parent.name)
        return read_jsonl(path)
    categories = [risk_category(p, section.category_from) for p in prompts]
    preprompts = [preprompt_for(section.preprompt, category, section.adjectives) for category, _ in categories]
    preprompted = [Conversation(messages=with_preprompt(p.messages, pre), meta=p.meta)
                   for p, pre in zip(prompts, preprompts)]
    samples = sample_answers(policy.path, run.registry, prompts + preprompted, recipe.model.template, 1,
                             section.temperature, 1.0,
                             section.max_new_tokens, section.batch_size, recipe.seed, stream="distill",
                             backend="hf")
    plain, pre = [s[0] for s in samples[:len(prompts)]], [s[0] for s in samples[len(prompts):]]
    scorer = load_scorer(safety_rm.path, batch_size=section.score_batch_size, device=default_device())
    conversations = [p.messages for p in prompts]
    scores = scorer.score(conversations + conversations, [a.text for a in plain] + [a.text for a in pre]).tolist()
    plain_scores, pre_scores = scores[:len(prompts)], scores[len(prompts):]
    usable = [bool(a.text.strip()) and (section.truncated_targets or not a.truncated) for a in pre]
    keep = keep_decisions(plain_scores, pre_scores, usable, section.keep_margin)
    rows = [{"prompt_key": prompt_key(p.messages), "prompt_id": p.meta.get("id"), "messages": p.messages,
             "category": category, "category_from": origin, "preprompt": preprompt,
             "plain": a.text, "plain_finish": a.finish_reason, "plain_safety": ps,
             "preprompted": b.text, "preprompted_finish": b.finish_reason, "preprompted_safety": qs, "keep": k}
            for p, (category, origin), preprompt, a, b, ps, qs, k in
            zip(prompts, categories, preprompts, plain, pre, plain_scores, pre_scores, keep)]
    write_jsonl(path, rows)
    return rows


BENIGN_FILE = "benign_pairs.jsonl"


def keep_benign(plain_scores: list[float], preprompted_scores: list[float], usable: list[bool],
                refused: list[bool], margin: float = 0.0, plain_refused: list[bool] | None = None) -> list[bool]:
    """The gate of the benign look-alikes: the preprompted answer is kept only where it is usable and is not a
    refusal, and either the plain answer is a refusal (a benign prompt refused is the false refusal this branch
    is there to undo, whatever a weak helpfulness RM thinks of the pair) or the helpfulness RM scores the
    preprompted answer higher (by more than ``margin``)."""
    plain_refused = plain_refused or [False] * len(plain_scores)
    return [ok and not no and (was_refused or pre > plain + margin)
            for plain, pre, ok, no, was_refused in zip(plain_scores, preprompted_scores, usable, refused,
                                                       plain_refused)]


def benign_pairs(run: StageRun, recipe: Recipe, policy: Version, helpful_rm: Version,
                 prompts: list[Conversation]) -> list[dict[str, Any]]:
    """Both answers of every benign look-alike prompt (plain, and with ``benign_preprompt``: the best of
    ``benign_samples`` by the helpfulness RM among the usable non-refusals), the helpfulness RM's scores against
    the prompt without the preprompt, the refusal verdicts and the keep decision."""
    section = recipe.context_distillation
    path = run.workdir / BENIGN_FILE
    if run.resume and path.exists():
        return read_jsonl(path)
    if not prompts:
        return []
    preprompted = [Conversation(messages=with_preprompt(p.messages, section.benign_preprompt), meta=p.meta)
                   for p in prompts]
    k = section.benign_samples
    plain = [s[0] for s in sample_answers(policy.path, run.registry, prompts, recipe.model.template, 1,
                                          section.temperature, 1.0, section.max_new_tokens, section.batch_size,
                                          recipe.seed, stream="distill-benign", backend="hf")]
    candidates = sample_answers(policy.path, run.registry, preprompted, recipe.model.template, k,
                                section.benign_temperature if k > 1 else section.temperature, 1.0,
                                section.max_new_tokens, section.batch_size, recipe.seed,
                                stream="distill-benign-preprompted", backend="hf")
    scorer = load_scorer(helpful_rm.path, batch_size=section.score_batch_size, device=default_device())
    conversations = [p.messages for p in prompts]
    flat = [a for c in candidates for a in c]
    scores = scorer.score(conversations + [m for m in conversations for _ in range(k)],
                          [a.text for a in plain] + [a.text for a in flat]).tolist()
    plain_scores, cand_scores = scores[:len(prompts)], scores[len(prompts):]

    def ok(answer: Any) -> bool:
        return bool(answer.text.strip()) and (section.truncated_targets or not answer.truncated) \
            and not is_refusal(answer.text)

    # per prompt, the best-scored candidate among the usable non-refusals (else the first: it will not be kept)
    pre, pre_scores, usable_counts = [], [], []
    for i, group in enumerate(candidates):
        group_scores = cand_scores[i * k:(i + 1) * k]
        good = [j for j, a in enumerate(group) if ok(a)]
        best = max(good, key=lambda j: group_scores[j]) if good else 0
        pre.append(group[best])
        pre_scores.append(group_scores[best])
        usable_counts.append(len(good))
    usable = [bool(a.text.strip()) and (section.truncated_targets or not a.truncated) for a in pre]
    refused = [is_refusal(a.text) for a in pre]
    keep = keep_benign(plain_scores, pre_scores, usable, refused, section.keep_margin,
                       [is_refusal(a.text) for a in plain])
    rows = [{"prompt_key": prompt_key(p.messages), "prompt_id": p.meta.get("id"), "messages": p.messages,
             "preprompt": section.benign_preprompt, "plain": a.text, "plain_finish": a.finish_reason,
             "plain_helpful": ps, "plain_refusal": is_refusal(a.text), "preprompted": b.text,
             "preprompted_finish": b.finish_reason, "preprompted_helpful": qs, "preprompted_refusal": r,
             "candidates": k, "usable_candidates": n, "keep": kept}
            for p, a, b, ps, qs, r, n, kept in zip(prompts, plain, pre, plain_scores, pre_scores, refused,
                                                   usable_counts, keep)]
    write_jsonl(path, rows)
    return rows


def evaluate(model: Any, tokenizer: Any, recipe: Recipe, heldout: list[Conversation], safety_scorer: Any,
             helpful_scorer: Any) -> dict[str, Any]:
    """Greedy answers to the held-out prompts: violations on the harmful ones, false refusals on the benign."""
    section = recipe.context_distillation
    answers = answer(model, tokenizer, heldout, recipe.model.template, section.max_new_tokens, section.batch_size)
    harmful = [(p, a) for p, a in zip(heldout, answers) if p.meta.get("is_safety")]
    benign = [(p, a) for p, a in zip(heldout, answers) if not p.meta.get("is_safety")]
    out: dict[str, Any] = {"answers": [{"prompt": p.messages[-1]["content"], "answer": a,
                                        "is_safety": bool(p.meta.get("is_safety"))} for p, a in zip(heldout, answers)]}
    if harmful:
        scores = safety_scorer.score([p.messages for p, _ in harmful], [a for _, a in harmful]).tolist()
        out["adversarial"] = violation_metrics([p for p, _ in harmful], [a for _, a in harmful], scores,
                                               section.safety_threshold)
        out["safety_scores"] = scores
    if benign:
        helpful = helpful_scorer.score([p.messages for p, _ in benign], [a for _, a in benign]).tolist()
        out["benign"] = false_refusal_metrics([p for p, _ in benign], [a for _, a in benign], helpful)
    return out


def run(recipe: Recipe, registry: Registry, *, force: bool = False, resume: bool = False) -> list[Version]:
    section = recipe.context_distillation
    policy = registry.resolve(section.policy)
    safety_rm, helpful_rm = registry.resolve(section.safety_rm), registry.resolve(section.helpful_rm)
    prompts = [p for p in load_safety_prompts(section.prompts, recipe.seed, f"{SECTION}.prompts", ("harmful",))
               if p.meta.get("is_safety")]
    if not prompts:
        raise RecipeError(f"{SECTION}.prompts: no adversarial prompt (distillation runs on safety prompts only); "
                          "use builtin, or tag a file's prompts with `is_safety: true`")
    benign = [p for p in load_safety_prompts(section.benign_prompts, recipe.seed, f"{SECTION}.benign_prompts",
                                             ("borderline",)) if not p.meta.get("is_safety")]
    heldout = load_safety_prompts(section.heldout_prompts, recipe.seed, f"{SECTION}.heldout_prompts",
                                  ("harmful", "borderline"))

    def body(run: StageRun) -> None:
        if not is_main_process():
            raise RecipeError(f"{SECTION}: runs in one process")
        device = default_device()
        safety_scorer = load_scorer(safety_rm.path, batch_size=section.score_batch_size, device=device)
        helpful_scorer = load_scorer(helpful_rm.path, batch_size=section.score_batch_size, device=device)
        before = None
        if heldout:
            path = run.workdir / BEFORE_FILE
            if run.resume and path.exists():
                before = json.loads(path.read_text())
            else:
                model = load_causal_lm(policy.path, registry).to(device)
                before = evaluate(model, load_tokenizer(policy.path), recipe, heldout, safety_scorer, helpful_scorer)
                path.write_text(json.dumps(before) + "\n")
                del model
        rows = distill_pairs(run, recipe, policy, safety_rm, prompts)
        kept = [r for r in rows if r["keep"]]
        benign_rows = benign_pairs(run, recipe, policy, helpful_rm, benign)
        benign_kept = [r for r in benign_rows if r["keep"]]
        if not kept:
            raise RecipeError(f"{SECTION}: the safety RM preferred no preprompted answer to the plain one on "
                              f"{len(rows)} prompts, so there is nothing to distill (see {PAIRS_FILE} in the work "
                              "directory); try the other preprompt, or more prompts")
        train = [Conversation(messages=r["messages"] + [{"role": "assistant", "content": r["preprompted"]}],
                              meta={"category": r["category"]}) for r in kept]
        train += [Conversation(messages=r["messages"] + [{"role": "assistant", "content": r["preprompted"]}],
                               meta={"category": "benign"}) for r in benign_kept]
        _, tokenizer, metrics = fine_tune(run, section.train, recipe.model.template, recipe.seed, policy, train, [],
                                          STAGE, key=f"{SECTION}.train")
        run.metrics.update(metrics)
        by_category: dict[str, dict[str, int]] = {}
        for r in rows:
            entry = by_category.setdefault(str(r["category"]), {"prompts": 0, "kept": 0})
            entry["prompts"] += 1
            entry["kept"] += r["keep"]
        gains = [r["preprompted_safety"] - r["plain_safety"] for r in rows]
        run.extra["context_distillation"] = {
            "prompts": len(rows), "kept": len(kept), "kept_share": len(kept) / len(rows), "by_category": by_category,
            "mean_gain": sum(gains) / len(gains), "preprompt": section.preprompt,
            "benign": {"prompts": len(benign_rows), "kept": len(benign_kept),
                       "preprompted_refusals": sum(r["preprompted_refusal"] for r in benign_rows),
                       "plain_refusals": sum(r["plain_refusal"] for r in benign_rows)}}
        run.metrics.update({"kept": len(kept), "kept_share": len(kept) / len(rows)})
        if before is not None:
            model = load_causal_lm(run.workdir, registry).to(device)
            after = evaluate(model, tokenizer, recipe, heldout, safety_scorer, helpful_scorer)
            plot_safety_scores({f"before ({policy.id})": before.get("safety_scores", []),
                                "after distillation": after.get("safety_scores", [])}, run.workdir / PLOT_FILE,
                               section.safety_threshold, "safety RM on held-out adversarial prompts")
            (run.workdir / EVAL_FILE).write_text(json.dumps({"before_model": policy.id, "before": before,
                                                             "after": after}, indent=1) + "\n")
            for name, result in (("before", before), ("after", after)):
                for group in ("adversarial", "benign"):
                    for k, v in result.get(group, {}).items():
                        if k != "n":
                            run.metrics[f"{name}_{k}"] = v
            log.info("%s: before %s / after %s", STAGE,
                     {k: v for k, v in run.metrics.items() if k.startswith("before_")},
                     {k: v for k, v in run.metrics.items() if k.startswith("after_")})

    fingerprints = {"prompts": fingerprint(prompts), "heldout": fingerprint(heldout)}
    if benign:
        fingerprints["benign_prompts"] = fingerprint(benign)
    return [run_stage(recipe, registry, STAGE, body, section=recipe.section(SECTION),
                      parents=[policy, safety_rm, helpful_rm], data_fingerprints=fingerprints, force=force,
                      resume=resume)]
