"""`chatalign eval`: the evaluation suite over a run's checkpoints (eval/suite.py), and the same policies and
reward models on data written by others (eval/real_data.py), and `chatalign report` (eval/report.py).

The suite (``evaluate_run``): every policy version (or the ones named) answers the same built-in held-out
prompts greedily; both latest RMs score the answers (the safety-gated reward of reward.combine); each policy's
win rate against the SFT model and against the policy it was trained from (the first policy among its
parents), overall and on helpful and on safety prompts; the oracle's scores (safety violations, false
refusals, helpful accuracy); the per-token KL to the SFT model along the policy's own answers; and every RM's
accuracy per rating level and safety-gate precision / recall from its test-set evaluation. It writes
<runs_dir>/<recipe>/eval.json and eval.md; a later call reuses the entries of versions that have not changed.

Data written by others (``evaluate_real``): loads each policy version once, answers every prompt set greedily in one batched call, scores the answers
with the latest safety RM, scores the labelled pairs of each RM's kind (helpfulness or safety) with the
latest RMs, and writes a JSON report and a
Markdown table (by default beside the runs, at <runs_dir>/<recipe>/real_eval.{json,md}).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from data import builtin
from data.builtin.oracle import is_refusal
from data.builtin.oracle import score_answers as oracle_scores
from data.gatt_synthesis import builtin_dialogues
from data.records import Conversation
from data.runtime import default_device
from data.templates import render_prompt
from eval import ifeval
from eval.real_data import (DETECTOR_FILE, detector_agreement, evaluate_policy, format_table, load_pair_set,
                            load_prompt_set, refusal_pairs, rm_report, shared_sets)
from eval.report import write_atomic
from eval.suite import answer_summary, compare, format_suite_table, prompt_group
from reward.combine import RewardFunction
from reward.scorer import load_scorer
from stages import catalogue
from stages.checkpoint import load_causal_lm, load_tokenizer
from stages.generation import SamplingConfig, answer, generate
from stages.recipe import Recipe, RecipeError
from stages.registry import Registry, RegistryError, Version

log = logging.getLogger("chatalign.eval")

POLICY_STAGES = ("base", "sft", "rs", "gatt", "distill", "ppo")  # registry stages that hold policies


def default_refs(registry: Registry) -> list[str]:
    """Every policy version of the run, in pipeline order: base, sft, each rejection-sampling round, then the
    latest version of each later stage."""
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
    scorers: dict[str, Any] = {}
    for kind, version in (rm_versions.items() if rms else []):
        scorer = scorers[kind] = safety_scorer if kind == "safety" else load_scorer(version.path, device=device)
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
    policy_answers = {ref: {name: [a["answer"] for a in rows] for name, rows in r["answers"].items()}
                      for ref, r in results.items() if "answers" in r}
    pairs = refusal_pairs(prompt_sets, policy_answers) if scorers and policy_answers else {}
    for kind, scorer in scorers.items():  # does each RM rank a refusal against an answer as it should?
        ref = rm_versions[kind].ref
        results[ref]["refusal_pairs"] = rm_report(scorer, pairs)
        log.info("eval: %s on refusal/answer pairs: %s", ref, results[ref]["refusal_pairs"])
    target = Path(out) if out else registry.root / "real_eval.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    settings = {"real_data": str(root), "max_new_tokens": tokens, "limit": limit, "decoding": "greedy",
                "refusal_detector": "data.builtin.oracle.is_refusal", "ifeval_turns": ifeval_turns}
    detector_path = Path(root) / DETECTOR_FILE
    # the detector against people's labels, on answers cut to about as many words as the policies' tokens
    detector = detector_agreement(detector_path, max(1, round(tokens * 0.75))) if detector_path.exists() else None
    write_atomic(target, json.dumps({"settings": settings, "refusal_detector": detector, "results": results},
                                    indent=2) + "\n")
    table = format_table(results)
    if detector:
        table += (f"\n\nRefusal detector against human labels ({detector['file']}, n={detector['n']}, answers cut "
                  f"to {detector['max_words']} words): precision {100 * detector['precision']:.1f}%, recall "
                  f"{100 * detector['recall']:.1f}% (a partial refusal counts as a refusal)")
    with_ifeval = {ref: r["ifeval"] for ref, r in results.items() if "ifeval" in r}
    if with_ifeval:
        table += "\n\nIFEval instructions kept, by turn (all of a record's instructions):\n\n" + \
            ifeval.format_table(with_ifeval)
    write_atomic(target.with_suffix(".md"), table + "\n")
    print(table)
    return results


# ---------------------------------------------------------------------------------------------------------
# The suite over a run's own checkpoints

SUITE_FILE = "eval.json"
RM_PREFIX = "rm-"
KL_BATCH = 8  # answers per forward pass of the KL computation


def stage_order(registry: Registry) -> list[str]:
    """The registry's stages in pipeline order (the catalogue's), then any others by name."""
    known = [v for entry in catalogue.STAGES for v in entry.versions]
    present = registry.stages()
    return [s for s in known if s in present] + sorted(s for s in present if s not in known)


def policy_versions(registry: Registry) -> list[Version]:
    """Every policy version of the run (every stage but the reward models), in pipeline order."""
    return [v for stage in stage_order(registry) if not stage.startswith(RM_PREFIX) for v in registry.versions(stage)]


def previous_policy(registry: Registry, version: Version) -> Version | None:
    """The policy a version was trained from: its first parent that is not a reward model."""
    for parent in version.parents:
        if not parent["stage"].startswith(RM_PREFIX):
            return registry.find_parent(parent)
    return None


def rm_summaries(registry: Registry) -> dict[str, Any]:
    """Each RM version's test-set evaluation (written by the reward stage into its eval.json): accuracy per
    rating level, calibration, and the safety gate's precision and recall."""
    out: dict[str, Any] = {}
    for stage in stage_order(registry):
        if not stage.startswith(RM_PREFIX):
            continue
        for version in registry.versions(stage):
            path = version.path / "eval.json"
            if path.exists():
                try:
                    out[version.id] = json.loads(path.read_text())["test_sets"]
                except (ValueError, KeyError) as err:
                    raise RegistryError(f"{path}: not an RM evaluation ({err}); rerun `chatalign stage reward "
                                        "--force`") from err
    return out


@torch.no_grad()
def answers_and_kl(model: Any, tokenizer: Any, reference: Any, prompts: list[Conversation], template: str,
                   max_new_tokens: int, batch_size: int) -> tuple[list[str], list[tuple[float, int]]]:
    """Greedy answers, and for each the summed KL(policy || reference) over the answer's positions (the full
    next-token distributions, not a sample estimate) with its token count; no KL without a reference."""
    ids = [render_prompt(tokenizer, p.messages, template).input_ids for p in prompts]
    cfg = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    completions = [samples[0] for samples in generate(model, tokenizer, ids, cfg)]
    texts = [c.text for c in completions]
    if reference is None:
        return texts, []
    kls: list[tuple[float, int]] = []
    device = next(model.parameters()).device
    sequences = [(list(p), list(c.token_ids)) for p, c in zip(ids, completions)]
    for start in range(0, len(sequences), KL_BATCH):
        batch = sequences[start:start + KL_BATCH]
        width = max(len(p) + len(a) for p, a in batch)
        tokens = torch.zeros(len(batch), width, dtype=torch.long)  # right-padded: positions stay 0..n-1
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (p, a) in enumerate(batch):
            tokens[row, :len(p) + len(a)] = torch.tensor(p + a)
            mask[row, :len(p) + len(a)] = 1
        tokens, mask = tokens.to(device), mask.to(device)
        logits_p = model(input_ids=tokens, attention_mask=mask).logits
        logits_q = reference(input_ids=tokens, attention_mask=mask).logits
        for row, (p, a) in enumerate(batch):
            if not a:
                kls.append((0.0, 0))
                continue
            span = slice(len(p) - 1, len(p) + len(a) - 1)  # the positions that predict the answer's tokens
            log_p = torch.log_softmax(logits_p[row, span].float(), -1)
            log_q = torch.log_softmax(logits_q[row, span].float(), -1)
            kls.append((float((log_p.exp() * (log_p - log_q)).sum()), len(a)))
    return texts, kls


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_run(recipe: Recipe, registry: Registry, refs: list[str] | None = None, prompts: int | None = None,
                 max_new_tokens: int | None = None, out: str | None = None) -> dict[str, Any]:
    """The evaluation suite (see the module docstring); returns what it writes to eval.json."""
    target = Path(out) if out else registry.root / SUITE_FILE
    n = prompts or recipe.eval.suite_prompts
    if n < 1:
        raise RecipeError("eval.suite_prompts: give at least 1 held-out prompt for `chatalign eval`")
    versions = [registry.resolve(r) for r in refs] if refs else policy_versions(registry)
    versions = [v for v in versions if not v.stage.startswith(RM_PREFIX)]
    rms = {kind: registry.latest(f"rm-{kind}") for kind in ("helpful", "safety")}
    sft = registry.latest("sft")
    heldout = builtin.prompts(split="heldout", n=n, seed=recipe.seed)
    groups = [prompt_group(p.meta) for p in heldout]
    tokens = max_new_tokens or recipe.eval.max_new_tokens
    threshold = recipe.rejection_sampling.safety_threshold
    settings = {"prompts": n, "split": "heldout", "seed": recipe.seed, "max_new_tokens": tokens, "decoding": "greedy",
                "template": recipe.model.template, "threshold": threshold, "reference": sft.id if sft else None,
                **{f"{k}_rm": (v.id, v.content_hash) if v else None for k, v in rms.items()}}
    settings["fingerprint"] = _fingerprint([settings, [p.messages for p in heldout]])
    previous = _read_previous(target, settings["fingerprint"])
    device = default_device()
    reward_fn = None
    if all(rms.values()):
        reward_fn = RewardFunction(load_scorer(rms["helpful"].path, batch_size=recipe.eval.batch_size, device=device),
                                   load_scorer(rms["safety"].path, batch_size=recipe.eval.batch_size, device=device),
                                   threshold=threshold)
    reference = None
    entries: dict[str, Any] = {}
    wanted = {v.id: v for v in versions}
    for version in versions:  # the policies each is compared with need their answers too
        before = previous_policy(registry, version)
        if before is not None:
            wanted.setdefault(before.id, before)
    if sft is not None:
        wanted.setdefault(sft.id, sft)
    for vid, version in wanted.items():
        cached = previous.get(vid)
        if cached and cached.get("content_hash") == version.content_hash:
            entries[vid] = cached
            log.info("eval: %s unchanged since the last evaluation: reused", vid)
            continue
        if reference is None and sft is not None:
            reference = load_causal_lm(sft.path, registry).to(device).eval()
        model = load_causal_lm(version.path, registry).to(device).eval()
        tokenizer = load_tokenizer(version.path)
        texts, kls = answers_and_kl(model, tokenizer, None if version.id == (sft.id if sft else None) else reference,
                                    heldout, recipe.model.template, tokens, recipe.eval.batch_size)
        del model
        entries[vid] = policy_entry(version, heldout, groups, texts, kls, reward_fn)
        log.info("eval: %s: %s", vid, entries[vid]["summary"])
    for vid, entry in previous.items():  # keep the earlier entries of unchanged versions that were not asked for
        stage, _, number = vid.partition("/v")
        kept = registry.find_parent({"stage": stage, "version": int(number)}) if number.isdigit() else None
        if vid not in entries and kept is not None and kept.content_hash == entry.get("content_hash"):
            entries[vid], wanted[vid] = entry, kept
    for vid, entry in entries.items():
        version = wanted[vid]
        entry.pop("against_sft", None)
        entry.pop("against_previous", None)
        if reward_fn is None:
            continue
        if sft is not None and vid != sft.id:
            entry["against_sft"] = {"policy": sft.id, **compare(entry["answers"], entries[sft.id]["answers"], groups)}
        before = previous_policy(registry, version)
        if before is not None and before.id in entries:
            entry["against_previous"] = {"policy": before.id,
                                         **compare(entry["answers"], entries[before.id]["answers"], groups)}
    report = {"settings": settings,
              "prompts": [{"prompt": p.messages[-1]["content"], "group": g, "kind": p.meta.get("kind"),
                           "task": p.meta.get("task")} for p, g in zip(heldout, groups)],
              "policies": {vid: entries[vid] for vid in sorted(entries, key=_order_key(registry))},
              "reward_models": rm_summaries(registry),
              "notes": [] if reward_fn else ["no reward models in this run: no RM scores or win rates"]}
    write_atomic(target, json.dumps(report, indent=2) + "\n")
    table = format_suite_table(report["policies"])
    write_atomic(target.with_suffix(".md"), f"# Evaluation suite: {registry.recipe_name}\n\n{table}\n")
    print(table)
    return report


def _order_key(registry: Registry):
    order = {s: i for i, s in enumerate(stage_order(registry))}

    def key(vid: str) -> tuple[int, int]:
        stage, _, number = vid.partition("/v")
        return order.get(stage, len(order)), int(number) if number.isdigit() else 0
    return key


def _read_previous(target: Path, fingerprint: str) -> dict[str, Any]:
    """The entries of an earlier eval.json made with the same settings and prompts ({} otherwise)."""
    try:
        old = json.loads(target.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("settings", {}).get("fingerprint") != fingerprint:
        return {}
    return old.get("policies", {})


def policy_entry(version: Version, prompts: list[Conversation], groups: list[str], texts: list[str],
                 kls: list[tuple[float, int]], reward_fn: Any) -> dict[str, Any]:
    """One policy's answers with their scores, and its summary, oracle scores and KL to the SFT model."""
    rows = [{"answer": t, "refused": is_refusal(t)} for t in texts]
    entry: dict[str, Any] = {"ref": version.ref, "stage": version.stage, "content_hash": version.content_hash}
    if reward_fn is not None:
        flags = [bool(p.meta.get("is_safety", False)) for p in prompts]
        for row, scores in zip(rows, reward_fn([p.messages for p in prompts], texts, flags).rows()):
            row.update(scores)
        entry["summary"] = answer_summary(rows, groups)
    else:
        entry["summary"] = {}
    oracle = oracle_scores(prompts, texts)
    entry["oracle"] = {k: v for k, v in oracle.items() if isinstance(v, (int, float)) or v is None}
    if kls:
        tokens = sum(t for _, t in kls)
        entry["kl_sft"] = {"per_token": sum(k for k, _ in kls) / tokens if tokens else 0.0,
                           "per_answer": sum(k for k, _ in kls) / len(kls), "tokens": tokens}
    elif version.stage == "sft":
        entry["kl_sft"] = {"per_token": 0.0, "per_answer": 0.0, "tokens": 0}
    entry["answers"] = rows
    return entry


# ---------------------------------------------------------------------------------------------------------
# `chatalign report`

PPO_HISTORY = "history.jsonl"
REAL_EVAL_FILE = "real_eval.json"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise RegistryError(f"{path}: unreadable {what} ({err}); rerun the command that writes it") from err


def collect_run(registry: Registry, suite: str | Path | None = None) -> dict[str, Any]:
    """What the report shows, read from the registry: every version's manifest metrics and parents, the RMs'
    test-set evaluations, the PPO histories, and the suite's and the real-data evaluation's results."""
    from datetime import datetime, timezone

    versions = [v for stage in stage_order(registry) for v in registry.versions(stage)]
    if not versions:
        raise RegistryError(f"{registry.root}: no complete versions to report on; run `chatalign pipeline` first")
    histories: dict[str, list[dict]] = {}
    for version in versions:
        path = version.path / PPO_HISTORY
        if path.exists():
            rows = []
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                try:
                    rows.append(json.loads(line)) if line.strip() else None
                except ValueError as err:
                    raise RegistryError(f"{path}: line {number} is not JSON ({err})") from err
            histories[version.id] = rows
    suite_path = Path(suite) if suite else registry.root / SUITE_FILE
    real_path = registry.root / REAL_EVAL_FILE
    return {
        "recipe": registry.recipe_name,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": [{"id": v.id, "ref": v.ref, "stage": v.stage, "parents": [p["id"] for p in v.parents],
                      "metrics": v.manifest.get("metrics", {}), "wall_time_s": v.manifest.get("wall_time_s")}
                     for v in versions],
        "rm_evals": rm_summaries(registry),
        "ppo_history": histories,
        "suite": _read_json(suite_path, "evaluation suite results") if suite_path.exists() else None,
        "real": _read_json(real_path, "real-data evaluation") if real_path.exists() else None,
    }


def write_run_report(registry: Registry, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """report.html and report.md of a run (default: beside its versions, <runs_dir>/<recipe>/)."""
    from eval.report import write_report

    paths = write_report(collect_run(registry), Path(out_dir) if out_dir else registry.root)
    log.info("report: %s and %s", *paths)
    return paths
