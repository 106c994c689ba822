"""`chatalign eval`: the registry's policies and reward models on data written by others (eval/real_data.py).

Loads each policy version once, answers every prompt set greedily in one batched call, scores the answers
with the latest safety RM, scores the labelled pairs of each RM's kind (helpfulness or safety) with the
latest RMs, and writes a JSON report and a
Markdown table (by default beside the runs, at <runs_dir>/<recipe>/real_eval.{json,md}).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from data.builtin.oracle import is_refusal
from data.gatt_synthesis import builtin_dialogues
from data.records import Conversation
from data.runtime import default_device
from eval import ifeval
from eval.real_data import evaluate_policy, format_table, load_pair_set, load_prompt_set, rm_report, shared_sets
from reward.scorer import load_scorer
from stages.checkpoint import load_causal_lm, load_tokenizer
from stages.generation import answer
from stages.recipe import Recipe, RecipeError
from stages.registry import Registry, RegistryError

log = logging.getLogger("chatalign.eval")

POLICY_STAGES = ("base", "sft", "rs", "gatt", "distill")  # registry stages that hold policies


def default_refs(registry: Registry) -> list[str]:
    """Every policy version of the run, in pipeline order (base, sft, each rejection-sampling round)."""
    refs = []
    for stage in POLICY_STAGES:
        versions = registry.versions(stage) if stage in registry.stages() else []
        refs += [v.ref for v in (versions if stage == "rs" else versions[-1:])]
    return refs


def evaluate_real(recipe: Recipe, registry: Registry, root: str, refs: list[str] | None = None,
                  limit: int | None = None, max_new_tokens: int | None = None, batch_size: int | None = None,
                  out: str | None = None, rms: bool = True, ifeval_turns: int = 0) -> dict[str, Any]:
    prompt_specs, pair_specs = shared_sets(root)
    ifeval_path = Path(root) / "ifeval" / "input_data.jsonl"
    if ifeval_turns and not ifeval_path.exists():
        raise RecipeError(f"eval --ifeval-turns: {ifeval_path} is missing (IFEval's input_data.jsonl)")
    ifeval_records = ifeval.load_records(ifeval_path, limit) if ifeval_turns else []
    # turns after the first: built-in held-out questions, as in the GAtt evaluation
    followups = builtin_dialogues("heldout", len(ifeval_records), recipe.seed, max(ifeval_turns - 1, 1))
    if not prompt_specs and not pair_specs:
        raise RecipeError(f"eval --real-data {root}: none of the known sets is there (advbench/, xstest/, llmbar/, "
                          "pandalm-testset/, hh-rlhf-harmless/ in their published layouts)")
    for spec in prompt_specs + pair_specs:
        spec.limit = limit
    device = default_device()
    prompt_sets = {s.name: (s, load_prompt_set(s, recipe.seed)) for s in prompt_specs}
    pair_sets = {s.name: (s, load_pair_set(s, recipe.seed)) for s in pair_specs}
    rm_versions: dict[str, Any] = {}
    for kind in ("helpful", "safety"):
        try:
            rm_versions[kind] = registry.resolve(f"rm-{kind}@latest")
        except RegistryError:
            pass
    safety_scorer = load_scorer(rm_versions["safety"].path, device=device) if "safety" in rm_versions else None
    results: dict[str, Any] = {}
    for kind, version in (rm_versions.items() if rms else []):
        scorer = safety_scorer if kind == "safety" else load_scorer(version.path, device=device)
        sets = {name: pairs for name, (spec, pairs) in pair_sets.items() if spec.rm == kind}  # each RM on its kind
        results[version.ref] = {"rm": rm_report(scorer, sets), "kind": kind}
        log.info("eval: %s on pairs: %s", version.ref, results[version.ref]["rm"])
    tokens = max_new_tokens or recipe.eval.max_new_tokens
    batch = batch_size or recipe.eval.batch_size
    for ref in refs or default_refs(registry):
        version = registry.resolve(ref)
        model = load_causal_lm(version.path, registry).to(device).eval()
        tokenizer = load_tokenizer(version.path)

        def answer_fn(prompts: list, model: Any = model, tokenizer: Any = tokenizer) -> list[str]:
            return answer(model, tokenizer, prompts, recipe.model.template, tokens, batch)

        report, answers = evaluate_policy(answer_fn, prompt_sets, safety_scorer)
        results[version.ref] = {"prompts": report, "answers": {  # every answer, to read what a rate counts
            name: [{"prompt": c.messages[-1]["content"], "answer": a, "refused": is_refusal(a)}
                   for c, a in zip(prompt_sets[name][1], answers[name])] for name in answers}}
        log.info("eval: %s: %s", version.ref, {k: v["refusal_rate"] for k, v in report.items()})
        if ifeval_records:
            def respond(conversations: list[list[dict[str, str]]], answer_fn: Any = answer_fn) -> list[str]:
                return answer_fn([Conversation(messages=m) for m in conversations])

            results[version.ref]["ifeval"] = ifeval.multi_turn(respond, ifeval_records, followups, ifeval_turns)
            log.info("eval: %s: IFEval instructions kept per turn %s", version.ref,
                     [round(k, 2) for k in results[version.ref]["ifeval"]["kept"]])
        del model
    target = Path(out) if out else registry.root / "real_eval.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    settings = {"real_data": str(root), "max_new_tokens": tokens, "limit": limit, "decoding": "greedy",
                "refusal_detector": "data.builtin.oracle.is_refusal", "ifeval_turns": ifeval_turns}
    target.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    table = format_table(results)
    with_ifeval = {ref: r["ifeval"] for ref, r in results.items() if "ifeval" in r}
    if with_ifeval:
        table += "\n\nIFEval instructions kept, by turn (all of a record's instructions):\n\n" + \
            ifeval.format_table(with_ifeval)
    target.with_suffix(".md").write_text(table + "\n")
    print(table)
    return results
