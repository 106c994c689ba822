"""Stage 4: Ghost Attention (Llama 2 §3.3, A.3.5).

1. Instructions: constraints drawn at random from the hobby, language and public-figure lists (the recipe's,
   the built-in ones, or lists the policy generates) and the checkable answer styles, combined, terse half of
   the time (data/gatt_synthesis.py).
2. Synthesis: for each multi-turn dialogue, the instruction is added to every user turn and each turn's K
   answers are sampled from the latest policy (stages/rollouts.py), after the answers chosen for the earlier
   turns. A turn's target is the best-reward sample (both RMs, safety-gated: reward/combine.py) among those
   that keep every checkable constraint; where none does, the best sample rewritten by the program that
   enforces the checkable style (``targets: best_of_k_then_enforce``), and a language no program can enforce
   ends the dialogue there. ``dialogues.jsonl`` keeps every sample, its reward and how each target was made;
   the manifest keeps the yield per constraint.
3. Training: the instruction only in the first turn, as the system message; one conversation per turn, each
   trained on its last answer only (``train_on: last_assistant``), with the fine-tuning kit.
4. Evaluation (eval/gatt.py): share of dialogues keeping a constraint given once, at turns 1..N, before and
   after, in the layout of Table 30 (``table30.md``, ``eval.json``).

Resumable: ``--resume`` reuses the synthesized dialogues and the "before" evaluation in the work directory
and continues the fine-tuning from its last checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

from data.builtin.gatt import check_constraint
from data.gatt_synthesis import (DEFAULT_LISTS, builtin_dialogues, choose_target, load_dialogues, sample_instruction,
                                 sampling_messages, training_messages)
from data.loaders import read_jsonl, write_jsonl
from data.records import Conversation
from data.runtime import default_device, is_main_process
from data.sources import fingerprint
from eval import gatt as eval_gatt
from eval.gatt import adherence, eval_instructions, format_table30, per_constraint
from stages.catalogue import stage
from stages.checkpoint import load_causal_lm, load_tokenizer
from stages.common import StageRun, run_stage
from stages.finetune import fine_tune
from stages.generation import answer
from stages.recipe import Recipe, RecipeError
from stages.registry import Registry, Version
from stages.rollouts import load_reward_fn, sample_answers, score_answers

log = logging.getLogger("chatalign.gatt")

STAGE, SECTION = stage("gatt").versions[0], stage("gatt").section
DIALOGUES_FILE = "dialogues.jsonl"
BEFORE_FILE = "eval_before.json"
EVAL_FILE = "eval.json"
TABLE_FILE = "table30.md"

_LIST_PROMPTS = {"hobby": "Name one hobby that people enjoy. Answer with the name of the hobby only.",
                 "figure": "Name one famous person from history. Answer with their name only."}


# ---------------------------------------------------------------------------------------------
# Constraint lists
# ---------------------------------------------------------------------------------------------

def _parse_entry(text: str) -> str | None:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"^[\s\-*\d.)]+", "", line).strip().strip(".!\"'")
    return line if line and len(line.split()) <= 4 and re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", line) else None


def generated_list(family: str, policy: Version, registry: Registry, recipe: Recipe) -> list[str]:
    """A hobby or figure list the policy writes (the paper's way): ``generated_per_list`` samples of a one-line
    question, parsed and deduplicated."""
    section = recipe.gatt
    question = Conversation(messages=[{"role": "user", "content": _LIST_PROMPTS[family]}])
    samples = sample_answers(policy.path, registry, [question], recipe.model.template, section.generated_per_list,
                             1.0, 1.0, 16, section.batch_size, recipe.seed, stream=f"gatt-list-{family}",
                             backend=section.backend)[0]
    entries = []
    for sample in samples:
        entry = _parse_entry(sample.text)
        if entry and entry.lower() not in {e.lower() for e in entries}:
            entries.append(entry)
    return entries


def constraint_lists(recipe: Recipe, policy: Version, registry: Registry) -> tuple[dict[str, list[str]], dict]:
    """The lists constraints are drawn from: the recipe's, else the built-in ones; with generate_lists, the
    policy's own hobby and figure lists where it gives at least 3 entries. Returns (lists, how each was made)."""
    section = recipe.gatt
    given = {"hobby": section.hobbies, "language": section.languages, "figure": section.figures,
             "style": section.styles}
    lists, origin = {}, {}
    for family, values in given.items():
        if family != "style" and family not in section.families:
            continue
        lists[family] = list(values) if values is not None else list(DEFAULT_LISTS[family])
        origin[family] = "recipe" if values is not None else "builtin"
        if section.generate_lists and family in _LIST_PROMPTS:
            generated = generated_list(family, policy, registry, recipe)
            if len(generated) >= 3:
                lists[family], origin[family] = generated, "generated"
            else:
                log.warning("%s: the policy named only %d %s entries; keeping the %s list", STAGE, len(generated),
                            family, origin[family])
    return lists, origin


# ---------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------

def _usable(text: str, finish_reason: str, truncated_targets: bool = False) -> bool:
    """A sample cut at the length limit is usable only if a finished sentence is left after trimming."""
    return bool(text.strip()) and (finish_reason == "stop" or truncated_targets or bool(re.search(r"[.!?]\s", text)))


def synthesize(run: StageRun, recipe: Recipe, policy: Version, reward_fn: Any, dialogues: list[list[str]],
               lists: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per dialogue: its instruction, user turns and, per turn, every sample with its reward and the
    chosen target. Turn t of every live dialogue is sampled in one batch after the targets of turn t-1."""
    section = recipe.gatt
    path = run.workdir / DIALOGUES_FILE
    if run.resume and path.exists():
        log.info("%s: reusing the synthesized dialogues in %s", STAGE, path.parent.name)
        return read_jsonl(path)
    families = [f for f in section.families if f in lists]
    instructions = [sample_instruction(random.Random(f"gatt:{recipe.seed}:{i}"), lists, families,
                                       section.max_constraints, section.style_share, section.terse_share)
                    for i in range(len(dialogues))]
    rows = [{"index": i, "instruction": inst.to_dict(), "users": users, "turns": [], "ended_at": None}
            for i, (inst, users) in enumerate(zip(instructions, dialogues))]
    start = time.time()
    for t in range(max(len(d) for d in dialogues)):
        live = [r for r in rows if r["ended_at"] is None and len(r["users"]) > t]
        if not live:
            break
        prompts = [Conversation(messages=sampling_messages(r["instruction"]["text"], r["users"][:t + 1],
                                                           [turn["answer"] for turn in r["turns"]]),
                                meta={"is_safety": False}) for r in live]
        samples = sample_answers(policy.path, run.registry, prompts, recipe.model.template, section.samples_per_turn,
                                 section.temperature, section.top_p, section.max_new_tokens, section.batch_size,
                                 recipe.seed, stream=f"gatt-turn-{t + 1}", backend=section.backend)
        if reward_fn is not None:
            scores = score_answers(prompts, [[s.text for s in group] for group in samples], reward_fn)
            rewards = [[(-1e9 if s.unsafe else 0.0) + s.reward for s in group] for group in scores]
        else:
            rewards = [[0.0] * len(group) for group in samples]
        for row, group, group_rewards in zip(live, samples, rewards):
            constraints = row["instruction"]["constraints"]
            usable = [_usable(s.text, s.finish_reason, section.truncated_targets) for s in group]
            target = choose_target(constraints, [s.text for s in group], group_rewards, usable,
                                   section.target_sentences, section.targets)
            if target.text is None:
                row["ended_at"] = t + 1
                continue
            row["turns"].append({
                "turn": t + 1, "user": row["users"][t], "answer": target.text, "how": target.how,
                "sample": target.sample,
                "samples": [{"text": s.text, "finish_reason": s.finish_reason, "reward": r,
                             "keeps": [check_constraint(c, s.text) for c in constraints]}
                            for s, r in zip(group, group_rewards)]})
        log.info("%s: turn %d: %d dialogues sampled (K=%d), %.0fs so far", STAGE, t + 1, len(live),
                 section.samples_per_turn, time.time() - start)
    write_jsonl(path, rows)
    return rows


def yield_stats(rows: list[dict[str, Any]], turns: int) -> dict[str, Any]:
    """Per constraint (type:value for styles, the type otherwise): turns asked; turns where at least one of the
    K samples kept it (the best-of-K yield); targets a program rewrote to keep it; turns left without a target
    (the dialogue ended); and for constraints no program checks, the turns answered at all."""
    stats: dict[str, dict[str, Any]] = {}
    for row in rows:
        asked = min(turns, len(row["users"]))
        for index, c in enumerate(row["instruction"]["constraints"]):
            key = f"style:{c['value']}" if c["type"] == "style" else c["type"]
            entry = stats.setdefault(key, {"turns": 0, "sampled_turns": 0, "some_sample_kept": 0, "enforced": 0,
                                           "missing": 0})
            entry["turns"] += asked
            entry["missing"] += asked - len(row["turns"])
            for turn in row["turns"]:
                entry["sampled_turns"] += 1
                entry["some_sample_kept"] += any(s["keeps"][index] is not False for s in turn["samples"])
                native = turn["samples"][turn["sample"]]["keeps"][index] is not False
                entry["enforced"] += turn["how"] == "enforced" and not native
            if row["ended_at"] is not None:
                entry["sampled_turns"] += 1  # the turn whose samples all failed
    for entry in stats.values():
        sampled = entry["sampled_turns"]
        entry["best_of_k_yield"] = entry["some_sample_kept"] / sampled if sampled else None
        entry["target_yield"] = (entry["turns"] - entry["missing"]) / entry["turns"] if entry["turns"] else None
    return dict(sorted(stats.items()))


def training_conversations(rows: list[dict[str, Any]], train_turns: str) -> list[Conversation]:
    """The instruction once, as the system message; one conversation per turn (or per dialogue), whose last
    answer alone is trained."""
    out = []
    for row in rows:
        users = [turn["user"] for turn in row["turns"]]
        answers = [turn["answer"] for turn in row["turns"]]
        ends = range(1, len(users) + 1) if train_turns == "all" else ([len(users)] if users else [])
        for k in ends:
            out.append(Conversation(messages=training_messages(row["instruction"]["text"], users[:k], answers[:k]),
                                    meta={"dialogue": row["index"], "turn": k}))
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def evaluate(model: Any, tokenizer: Any, recipe: Recipe, lists: dict[str, list[str]]) -> dict[str, Any]:
    """Table 30 for one model: adherence per turn on held-out dialogues, one constraint each."""
    section = recipe.gatt
    families = [f for f in ("style", *section.families) if lists.get(f)]
    instructions = eval_instructions(lists, section.eval_dialogues, recipe.seed, section.terse_share, families,
                                     section.style_share)
    dialogues = builtin_dialogues("heldout", section.eval_dialogues, recipe.seed, section.eval_turns)

    def respond(conversations: list[list[dict[str, str]]]) -> list[str]:
        return answer(model, tokenizer, [Conversation(messages=m) for m in conversations], recipe.model.template,
                      section.eval_max_new_tokens, section.batch_size)

    result = adherence(respond, instructions, dialogues, section.eval_turns)
    result["per_constraint"] = per_constraint(result["dialogues"])
    return result


def before_cache_path(registry: Registry, recipe: Recipe, policy: Version, lists: dict[str, list[str]]) -> Path:
    """Where the input policy's evaluation is cached: keyed by the policy's content hash and everything the
    evaluation depends on (its settings, the lists, the seed, the template, the evaluation code)."""
    section = recipe.gatt
    key = {"policy": policy.content_hash, "lists": lists, "seed": recipe.seed, "template": recipe.model.template,
           "eval": [section.eval_dialogues, section.eval_turns, section.eval_max_new_tokens, section.terse_share,
                    section.style_share, list(section.families), section.batch_size],
           "code": hashlib.sha256(Path(eval_gatt.__file__).read_bytes()).hexdigest()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return registry.root / ".cache" / "gatt-before" / f"{digest}.json"


def before_eval(run: StageRun, recipe: Recipe, policy: Version, lists: dict[str, list[str]]) -> dict[str, Any]:
    path = run.workdir / BEFORE_FILE
    if run.resume and path.exists():
        return json.loads(path.read_text())
    cache = before_cache_path(run.registry, recipe, policy, lists) if recipe.gatt.cache_before else None
    if cache is not None and cache.exists():
        log.info("%s: the 'before' evaluation of %s is cached (%s)", STAGE, policy.id, cache.name)
        result = json.loads(cache.read_text())
        result["cached"] = True
    else:
        model = load_causal_lm(policy.path, run.registry).to(default_device())
        result = evaluate(model, load_tokenizer(policy.path), recipe, lists)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(result) + "\n")
            tmp.replace(cache)
    path.write_text(json.dumps(result) + "\n")
    return result


def _summary(result: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for group, shares in result["kept"].items():
        for t in sorted({1, 2, 4, 6, 8, len(shares)}):
            if t <= len(shares):
                out[f"{prefix}_{group}_turn{t}"] = shares[t - 1]
    return out


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def run(recipe: Recipe, registry: Registry, *, force: bool = False, resume: bool = False) -> list[Version]:
    section = recipe.gatt
    policy = registry.resolve(section.policy)
    helpful_rm, safety_rm = registry.resolve(section.helpful_rm), registry.resolve(section.safety_rm)
    dialogues = load_dialogues(section.dialogues, recipe.seed, f"{SECTION}.dialogues", section.turns)
    if not dialogues:
        raise RecipeError(f"{SECTION}.dialogues: no dialogue; give at least one source of multi-turn chat data")

    def body(run: StageRun) -> None:
        if not is_main_process():
            raise RecipeError(f"{SECTION}: runs in one process (synthesis and evaluation are sequential)")
        lists, origin = constraint_lists(recipe, policy, registry)
        clock = time.time()
        before = before_eval(run, recipe, policy, lists) if section.eval_dialogues else None
        run.metrics["time_before_eval_s"] = round(time.time() - clock, 1)
        clock = time.time()
        reward_fn = None
        if section.samples_per_turn > 1:
            reward_fn = load_reward_fn(helpful_rm, safety_rm, section.score_batch_size, section.safety_threshold)
        rows = synthesize(run, recipe, policy, reward_fn, dialogues, lists)
        del reward_fn
        run.metrics["time_synthesis_s"] = round(time.time() - clock, 1)
        train = training_conversations(rows, section.train_turns)
        if not train:
            raise RecipeError(f"{SECTION}: no dialogue has a single usable target (every sample failed the checkers); "
                              "use targets: best_of_k_then_enforce, more samples_per_turn, or checkable styles")
        _, tokenizer, metrics = fine_tune(run, section.train, recipe.model.template, recipe.seed, policy, train, [],
                                          STAGE, key=f"{SECTION}.train")
        run.metrics.update(metrics)
        stats = yield_stats(rows, section.turns)
        hows: dict[str, int] = {}
        for row in rows:
            for turn in row["turns"]:
                hows[turn["how"]] = hows.get(turn["how"], 0) + 1
        run.extra["gatt"] = {"lists": lists, "list_origin": origin, "dialogues": len(rows),
                             "training_conversations": len(train), "targets": hows, "yield": stats,
                             "terse_instructions": sum(r["instruction"]["terse"] for r in rows)}
        if section.eval_dialogues:
            clock = time.time()
            model = load_causal_lm(run.workdir, registry).to(default_device())
            after = evaluate(model, tokenizer, recipe, lists)
            run.metrics["time_after_eval_s"] = round(time.time() - clock, 1)
            table = format_table30(before, after, (policy.id, "after GAtt"))
            (run.workdir / TABLE_FILE).write_text(table + "\n")
            (run.workdir / EVAL_FILE).write_text(json.dumps({"before": before, "after": after,
                                                             "before_model": policy.id}, indent=1) + "\n")
            run.metrics.update(_summary(before, "before"))
            run.metrics.update(_summary(after, "after"))
            log.info("%s: adherence per turn (Table 30 layout)\n%s", STAGE, table)

    fingerprints = {"dialogues": fingerprint([{"users": d} for d in dialogues])}
    return [run_stage(recipe, registry, STAGE, body, section=recipe.section(SECTION),
                      parents=[policy, helpful_rm, safety_rm], data_fingerprints=fingerprints, force=force,
                      resume=resume)]
